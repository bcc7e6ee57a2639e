"""Architectures from other libraries, by prefixed name: `torchvision:NAME` and `timm:NAME`.

Any torchvision classification model (`torchvision:convnext_tiny`, `torchvision:mobilenet_v3_small`,
...) and, where timm is installed (the `timm` extra), any timm model (`timm:efficientnet_b0`)
can be a teacher or a student. They pool adaptively, so they take the input size of the
view family the run uses (crop 32, resized-crop 224, ...). Built without weights; published
weights load through `--init pretrained` (downloaded by those libraries, so only where the
network is reachable) and any weights file through `--init FILE`.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from ._registry import ModelSpec

PREFIXES = ("torchvision:", "timm:")


def spec_for(name: str) -> ModelSpec | None:
    """The spec of a prefixed name, or None when `name` has no prefix of ours."""
    if name.startswith("torchvision:"):
        arch = name.split(":", 1)[1]
        _check(arch, torchvision_names(), "torchvision classification model")
        return ModelSpec(name, "imagenet", 224, lambda classes, channels=3, **kw: _torchvision(arch, classes, channels))
    if name.startswith("timm:"):
        arch = name.split(":", 1)[1]
        _check(arch, timm_names(), "timm model")
        return ModelSpec(name, "imagenet", 224, lambda classes, channels=3, **kw: _timm(arch, classes, channels))
    return None


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        raise ValueError("timm is not installed: pip install 'rld-offline[timm]' (or pip install timm)") from None
    return timm.list_models()


def _check(arch: str, names: list[str], what: str) -> None:
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"no {what} {arch!r}{hint} (`rld models` lists them)")


def _torchvision(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if in_channels != 3:
        set_input_channels(model, in_channels)
    return model


def _timm(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def published_state(name: str) -> dict[str, torch.Tensor]:
    """The weights torchvision or timm publish for `name` (downloaded: needs the network)."""
    kind, _, arch = name.partition(":") if ":" in name else ("torchvision", "", name)
    try:
        if kind == "timm":
            import timm

            return timm.create_model(arch, pretrained=True).state_dict()
        import torchvision

        return torchvision.models.get_model(arch, weights="DEFAULT").state_dict()
    except Exception as err:  # no network, no such weights, a broken download
        raise ValueError(f"no published weights for {name!r} could be fetched ({type(err).__name__}: {err}); "
                         "give a weights file instead") from None


def set_input_channels(model: nn.Module, in_channels: int) -> None:
    """Replace the model's first convolution by one taking `in_channels` (freshly initialised)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                conv = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups if child.groups == 1 else in_channels,
                                 child.bias is not None, child.padding_mode)
                setattr(parent, child_name, conv)
                return
    raise ValueError(f"{type(model).__name__} has no convolution to take {in_channels} input channels")
