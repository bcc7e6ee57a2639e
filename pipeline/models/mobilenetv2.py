"""MobileNetV2 for CIFAR: mdistiller's `mobile_half` (expansion 6, width 0.5).

Registered as `MobileNetV2`, the name mdistiller's model table uses. A stride-2
stem and three more stride-2 stages bring 32x32 down to 2x2; a 1x1 conv to 1280
channels (not width-scaled below width 1) and mdistiller's
`AvgPool2d(2, ceil_mode=True)` (computed from its `input_size=32`) then pool to
1x1 before `classifier.0`. Block internals keep mdistiller's flat
`conv.0`..`conv.7` Sequential so that keys match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import conv_bn_relu, init_he_normal_
from ._registry import register

# (expands?, output channels before width scaling, repeats, first stride); the
# first stage keeps expansion 1 whatever the model's expansion factor.
_SETTING = [
    (False, 16, 1, 1),
    (True, 24, 2, 1),
    (True, 32, 3, 2),
    (True, 64, 4, 2),
    (True, 96, 3, 1),
    (True, 160, 3, 2),
    (True, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv = nn.Sequential(
            *conv_bn_relu(in_planes, hidden, 1),
            *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(
        self, num_classes: int, in_channels: int = 3, width_mult: float = 0.5, expansion: int = 6
    ) -> None:
        super().__init__()
        planes = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, planes, 3, stride=2)
        self.blocks = nn.ModuleList()
        for expands, c, n, s in _SETTING:
            out_planes = int(c * width_mult)
            stage = []
            for stride in [s] + [1] * (n - 1):
                stage.append(InvertedResidual(planes, out_planes, stride, expansion if expands else 1))
                planes = out_planes
            self.blocks.append(nn.Sequential(*stage))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(planes, last, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_he_normal_(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        x = F.avg_pool2d(x, 2, ceil_mode=True)  # mdistiller: AvgPool2d(32 // 16, ceil_mode=True)
        return self.classifier(x.flatten(1))


@register("MobileNetV2", family="cifar")
def mobile_half(num_classes: int, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, width_mult=0.5, expansion=6)
