"""Small building blocks and initialisers shared by the model families.

Each family keeps mdistiller's initialisation *formula* (they differ in the last
bits, e.g. `kaiming_normal_` vs `normal_(0, sqrt(2/n))`), so that a model built
after `torch.manual_seed(s)` starts from the same weights as mdistiller's would.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv_bn_relu(
    in_planes: int, out_planes: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv -> BN -> ReLU as a Sequential, so its keys are `0.*` and `1.*`."""
    return nn.Sequential(
        nn.Conv2d(
            in_planes, out_planes, kernel, stride, kernel // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    )


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel interleave; `reshape` keeps it valid under channels_last."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def init_kaiming_(model: nn.Module) -> None:
    """The CIFAR ResNets' init: He-normal (fan_out) convs, unit/zero norms."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


@torch.no_grad()
def init_he_normal_(model: nn.Module, *, linear_std: float | None) -> None:
    """The WRN/VGG/MobileNetV2 init: N(0, 2/(k*k*out)) convs, zero biases.

    `linear_std=None` leaves Linear weights at PyTorch's default (WRN).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.normal_(0, math.sqrt(2.0 / n))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1)
            m.bias.zero_()
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                m.weight.normal_(0, linear_std)
            m.bias.zero_()
