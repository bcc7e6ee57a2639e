"""CIFAR ShuffleNets (ShuffleV1, ShuffleV2), as in mdistiller.

Both use a 1x1 stem to 24 channels without down-sampling, three stride-2 stages
(32 -> 16 -> 8 -> 4) and a fixed 4x4 average pool, so 32x32 input.

* ShuffleV1: groups=3, stages of [4, 8, 4] bottlenecks ending at [240, 480, 960]
  channels. A stage's first block concatenates an average-pooled shortcut, so its
  residual branch only produces `out - in` channels; the very first 1x1 conv (24
  input channels) is ungrouped.
* ShuffleV2: mdistiller's `net_size=1` configuration, stages [116, 232, 464] of
  [3, 7, 3] blocks after a down-sampling block, then a 1x1 conv to 1024.

No custom initialisation: mdistiller leaves PyTorch's defaults here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import channel_shuffle
from ._registry import register


class V1Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        stage_planes: tuple[int, int, int] = (240, 480, 960),
        stage_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self._planes = 24
        self.layer1 = self._stage(stage_planes[0], stage_blocks[0], groups)
        self.layer2 = self._stage(stage_planes[1], stage_blocks[1], groups)
        self.layer3 = self._stage(stage_planes[2], stage_blocks[2], groups)
        self.linear = nn.Linear(stage_planes[2], num_classes)

    def _stage(self, planes: int, n: int, groups: int) -> nn.Sequential:
        # The first block's branch makes `planes - in` channels; the pooled input fills the rest.
        layers = [V1Bottleneck(self._planes, planes - self._planes, 2, groups)]
        layers += [V1Bottleneck(planes, planes, 1, groups) for _ in range(1, n)]
        self._planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.avg_pool2d(x, 4)  # fixed 4x4 pool, as mdistiller
        return self.linear(x.flatten(1))


class V2Block(nn.Module):
    """Split the channels in half, transform one half, concatenate, shuffle."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        half = planes // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        kept, branch = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class V2DownBlock(nn.Module):
    """Two stride-2 branches (depthwise-first and pointwise-first), concatenated."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        mid = out_planes // 2
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, stride=2, padding=1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_planes, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        stage_blocks: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self._planes = 24
        self.layer1 = self._stage(widths[0], stage_blocks[0])
        self.layer2 = self._stage(widths[1], stage_blocks[1])
        self.layer3 = self._stage(widths[2], stage_blocks[2])
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def _stage(self, planes: int, n: int) -> nn.Sequential:
        layers: list[nn.Module] = [V2DownBlock(self._planes, planes)]
        layers += [V2Block(planes) for _ in range(n)]
        self._planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.avg_pool2d(x, 4)  # fixed 4x4 pool, as mdistiller
        return self.linear(x.flatten(1))


@register("ShuffleV1", family="cifar")
def ShuffleV1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, in_channels)


@register("ShuffleV2", family="cifar")
def ShuffleV2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels)
