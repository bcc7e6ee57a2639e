"""ImageNet models: torchvision's resnet18/34/50 and mdistiller's MobileNetV1.

The ResNets are torchvision's own (`weights=None`), so torchvision weight files
load as they are. mdistiller's ImageNet ResNet is a copy with the same keys; it
moves each block's final ReLU to the start of the next block, which computes the
same function. MobileNetV1 keeps mdistiller's `model.<i>.<j>` Sequential layout and
its fixed 7x7 average pool (224x224 input); unlike mdistiller, whose head is
hard-wired to 1000 classes, it honours `num_classes`.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from ._layers import conv_bn_relu
from .external import set_input_channels
from ._registry import register


def _torchvision_resnet(arch: str, num_classes: int, in_channels: int, **kw: object) -> nn.Module:
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, **kw)
    if in_channels != 3:
        set_input_channels(model, in_channels)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits it
    return model


@register("resnet18", family="imagenet")
def resnet18(num_classes: int, in_channels: int = 3, **kw: object) -> nn.Module:
    return _torchvision_resnet("resnet18", num_classes, in_channels, **kw)


@register("resnet34", family="imagenet")
def resnet34(num_classes: int, in_channels: int = 3, **kw: object) -> nn.Module:
    return _torchvision_resnet("resnet34", num_classes, in_channels, **kw)


@register("resnet50", family="imagenet")
def resnet50(num_classes: int, in_channels: int = 3, **kw: object) -> nn.Module:
    return _torchvision_resnet("resnet50", num_classes, in_channels, **kw)


def _depthwise_separable(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        *conv_bn_relu(in_planes, in_planes, 3, stride, groups=in_planes),
        *conv_bn_relu(in_planes, out_planes, 1),
    )


# (output channels, stride) of the 13 depthwise-separable blocks after the stem
_MOBILENET_V1 = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]  # fmt: skip


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, 32, 3, stride=2)]
        planes = 32
        for out_planes, stride in _MOBILENET_V1:
            layers.append(_depthwise_separable(planes, out_planes, stride))
            planes = out_planes
        layers.append(nn.AvgPool2d(7))  # mdistiller's fixed pool: 7x7 maps for 224x224 input
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.model(x).flatten(1))


@register("MobileNetV1", family="imagenet")
def mobilenet_v1(num_classes: int, in_channels: int = 3) -> MobileNetV1:
    return MobileNetV1(num_classes, in_channels)
