"""CIFAR VGGs with batch norm (vgg8, vgg11, vgg13, vgg16, vgg19), as in mdistiller.

mdistiller registers its `vggN_bn` constructors under the plain names `vggN`; so do
we. Five conv blocks `block0`..`block4` (Sequentials of conv/BN/ReLU whose final
ReLU is dropped and applied in `forward`, which is why keys skip every third
index), max-pools after the first three, a global average pool and `classifier`.

mdistiller pools after `block3` only when the input is 64 pixels high (its
Tiny-ImageNet path); we keep that rule, so 32x32 inputs see 4x4 maps in the last
two blocks exactly as there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import init_he_normal_
from ._registry import register

_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [
        [64, 64],
        [128, 128],
        [256, 256, 256, 256],
        [512, 512, 512, 512],
        [512, 512, 512, 512],
    ],
}


def _block(widths: list[int], in_planes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_planes, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_planes = w
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, cfg: list[list[int]], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        ins = [in_channels] + [stage[-1] for stage in cfg[:-1]]
        self.block0 = _block(cfg[0], ins[0])
        self.block1 = _block(cfg[1], ins[1])
        self.block2 = _block(cfg[2], ins[2])
        self.block3 = _block(cfg[3], ins[3])
        self.block4 = _block(cfg[4], ins[4])
        self.classifier = nn.Linear(512, num_classes)
        init_he_normal_(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if height == 64:  # mdistiller's Tiny-ImageNet rule, see module docstring
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(x.flatten(1))


def _define(name: str) -> None:
    @register(name, family="cifar")
    def build(num_classes: int, in_channels: int = 3) -> VGG:
        return VGG(_CONFIGS[name], num_classes, in_channels)

    build.__name__ = build.__qualname__ = name


for _name in _CONFIGS:
    _define(_name)
