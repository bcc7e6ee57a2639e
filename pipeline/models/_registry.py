"""Name -> constructor table shared by every model family.

Family modules register their constructors with `@register(...)` at import time;
`pipeline.models` imports them all, so the table is complete once the package is
imported. Names are mdistiller's, case included (`ResNet18` is the CIFAR ResNet,
`resnet18` torchvision's ImageNet one).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

Family = Literal["cifar", "imagenet"]
Constructor = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """What callers need to know about an architecture before building it."""

    name: str
    family: Family
    input_size: int  # the resolution the architecture's fixed pooling assumes
    constructor: Constructor


_MODELS: dict[str, ModelSpec] = {}


def register(name: str, *, family: Family) -> Callable[[Constructor], Constructor]:
    """Add a constructor `fn(num_classes, in_channels=3, **kw)` under `name`."""
    input_size = {"cifar": 32, "imagenet": 224}[family]

    def decorate(fn: Constructor) -> Constructor:
        if name in _MODELS:
            raise RuntimeError(f"model name {name!r} registered twice")
        _MODELS[name] = ModelSpec(name, family, input_size, fn)
        return fn

    return decorate


def available(family: Family | None = None) -> list[str]:
    """Registered names, optionally of one family, in registration order."""
    return [n for n, s in _MODELS.items() if family is None or s.family == family]


def get_spec(name: str) -> ModelSpec:
    """The spec for `name` (or a `torchvision:NAME` / `timm:NAME`); a typo gets the nearest
    valid names in the error."""
    from .external import spec_for

    external = spec_for(name)
    if external is not None:
        return external
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(_MODELS)}, torchvision:NAME, timm:NAME "
            "(`rld models` lists them)"
        ) from None
