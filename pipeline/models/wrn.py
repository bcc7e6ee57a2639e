"""Wide ResNets (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2, ...), as in mdistiller.

Pre-activation blocks (BN -> ReLU -> conv) in three stages, a final BN+ReLU, a
fixed 8x8 average pool (so 32x32 input), and `fc`. Parameter names follow
mdistiller's `wrn.py` (`block1.layer.0.convShortcut` etc.). wrn_16_4, wrn_28_2 and
wrn_28_4 come from the RLD authors' copy of mdistiller.

mdistiller quirk kept on purpose: its forward re-applies three BatchNorms to
stage outputs to build "pre-activation features" (`block2.layer[0].bn1(f1)`,
`block3.layer[0].bn1(f2)`, `bn1(f3)`). The results are thrown away, but in train
mode each of those BNs updates its running statistics twice per step (an effective
momentum of 0.19, `num_batches_tracked` +2). We repeat the calls, without autograd,
so a WRN trained here ends with the same BN statistics as one trained by
mdistiller; `mdistiller_bn_quirk=False` turns it off. Logits are unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import init_he_normal_
from ._registry import register


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut = (
            None
            if in_planes == out_planes
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # A projection shortcut sees the pre-activated input, an identity one the raw input.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class _Stage(nn.Module):
    """Only here so keys read `blockN.layer.i.*` like mdistiller's NetworkBlock."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        mdistiller_bn_quirk: bool = True,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = _Stage(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = _Stage(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = _Stage(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.mdistiller_bn_quirk = mdistiller_bn_quirk
        init_he_normal_(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.block1(self.conv1(x))
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        out = F.relu(self.bn1(f3))
        out = F.avg_pool2d(out, 8)  # fixed 8x8 pool, as mdistiller
        logits = self.fc(out.flatten(1))
        if self.training and self.mdistiller_bn_quirk:
            with torch.no_grad():  # see module docstring
                self.block2.layer[0].bn1(f1)
                self.block3.layer[0].bn1(f2)
                self.bn1(f3)
        return logits


def _define(depth: int, widen_factor: int) -> None:
    name = f"wrn_{depth}_{widen_factor}"

    @register(name, family="cifar")
    def build(num_classes: int, in_channels: int = 3, **kw: object) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, in_channels, **kw)  # type: ignore[arg-type]

    build.__name__ = build.__qualname__ = name


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2), (16, 4), (28, 2), (28, 4)):
    _define(_depth, _k)
