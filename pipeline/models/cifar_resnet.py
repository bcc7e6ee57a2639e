"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4), as in mdistiller.

Three stages of basic blocks on a 32x32 input (32 -> 16 -> 8), then a fixed 8x8
average pool, so the input must be 32x32. The `x4` variants widen the stem and the
stages to [32, 64, 128, 256]. Parameter names match mdistiller's `resnet.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import conv3x3, init_kaiming_
from ._registry import register


class BasicBlock(nn.Module):
    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"basic-block CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self._planes = widths[0]
        self.layer1 = self._stage(widths[1], blocks, stride=1)
        self.layer2 = self._stage(widths[2], blocks, stride=2)
        self.layer3 = self._stage(widths[3], blocks, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_kaiming_(self)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._planes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self._planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self._planes, planes, stride, downsample)]
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        self._planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.avg_pool2d(x, 8)  # mdistiller's fixed AvgPool2d(8): 8x8 maps for 32x32 input
        return self.fc(x.flatten(1))


_SLIM = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _define(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    @register(name, family="cifar")
    def build(num_classes: int, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes, in_channels)

    build.__name__ = build.__qualname__ = name


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _define(f"resnet{_depth}", _depth, _SLIM)
_define("resnet8x4", 8, _X4)
_define("resnet32x4", 32, _X4)
