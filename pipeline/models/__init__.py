"""Model registry: mdistiller's architectures under mdistiller's names.

`build(name, num_classes)` returns a module whose `forward(x)` gives the logits
tensor `(B, num_classes)` (mdistiller's models return `(logits, feats)`; we keep
the computation, not that API). CIFAR models match mdistiller's parameter and
buffer names, shapes and forward computation exactly, so its checkpoints load
with `strict=True` and give the same logits; `tests/fixtures/` pins the keys.

CIFAR models expect 32x32 input: several pool over a fixed window (ResNet and WRN
8x8, ShuffleNets 4x4). Other datasets are padded/resized to 32x32 by the data
layer. For grey-scale data (Fashion-MNIST) pass `in_channels=1`: only the first
conv's input channels change, parameter names stay the same, and with the default
`in_channels=3` the model is exactly mdistiller's. ImageNet models (`resnet18`,
`resnet34`, `resnet50` from torchvision, mdistiller's `MobileNetV1`) expect
224x224.

Any torchvision classification model (`torchvision:NAME`) and, with timm installed, any timm
model (`timm:NAME`) build too (`external.py`); `load_pretrained` starts a model from weights
made for another task (another class count or input channels).

Modules are created and initialised in mdistiller's order with its formulas, so
after the same `torch.manual_seed` a model (in_channels=3) starts from the weights
mdistiller's constructor would give. Every built model carries its registry name
as `model.arch`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import cifar_resnet, cifar_resnetv2, imagenet, mobilenetv2, shufflenet, vgg, wrn  # noqa: F401  (registration)
from ._registry import Family, ModelSpec, available, get_spec, register
from ._weights import load_pretrained, load_weights

__all__ = ["Family", "ModelSpec", "available", "build", "get_spec", "load_pretrained", "load_weights", "register"]


def build(name: str, num_classes: int, *, in_channels: int = 3, **kw: Any) -> nn.Module:
    """A freshly initialised `name`; a typo raises `ValueError` listing the valid names."""
    spec = get_spec(name)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
    model = spec.constructor(num_classes, in_channels, **kw)
    model.arch = name
    return model
