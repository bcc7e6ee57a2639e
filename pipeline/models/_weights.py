"""Loading weights from the checkpoint layouts we meet in practice.

Accepted, as a path or an in-memory mapping:

* mdistiller / CRD (RepDistiller) checkpoints: `{"model": state_dict, ...}` with
  `epoch`, `optimizer`, `best_acc` or `accuracy` beside it (mdistiller's
  `cifar_teachers.tar` holds CRD's `ckpt_epoch_240.pth` files).
* mdistiller distiller checkpoints (`latest`, `best`, `epoch_N`), whose "model" is
  the DataParallel-wrapped distiller: keys `module.student.*` / `module.teacher.*`.
  The student is taken, since that is what such a run trains.
* bare state dicts, including torchvision's weight files.
* keys wrapped by DataParallel/DDP (`module.`) or torch.compile (`_orig_mod.`).
* this project's teacher files: `{"model": state_dict, "arch": ..., "format": ...}`.

Files are read with `weights_only=True`. That suffices for all of the above:
mdistiller's `save_checkpoint` and CRD's `train_teacher.py` store only ints,
tensors (their accuracies are tensors), and state dicts. We also allow
`argparse.Namespace`, which CRD puts under "opt" in its `*_last.pth` files. Any
other pickled object needs `trusted=True`, the only path to `weights_only=False`,
because unpickling arbitrary objects runs code from the file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_STATE_KEYS = ("model", "state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 5  # keys listed per category in a mismatch error

StateDict = Mapping[str, torch.Tensor]


@contextlib.contextmanager
def _allow_namespace() -> Iterator[None]:
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: only the process-wide list exists
        torch.serialization.add_safe_globals([argparse.Namespace])
        yield
    else:
        with safe_globals([argparse.Namespace]):
            yield


def _reason(exc: Exception) -> str:
    """The informative line of torch's long weights-only error."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not an allowed global|\n\n|$)", text, re.S)
    if found:
        return found.group(1).strip()
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _read(source: str | os.PathLike[str], trusted: bool) -> Any:
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with _allow_namespace():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        if "Unsupported global" not in str(exc):
            raise ValueError(f"{path} is not a readable PyTorch checkpoint ({_reason(exc)})") from exc
        if not trusted:
            raise ValueError(
                f"{path} pickles Python objects that weights-only loading refuses ({_reason(exc)}); "
                "pass trusted=True only if you trust the file: unpickling them can run its code"
            ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({exc})") from exc


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _split(obj: object, where: str) -> tuple[StateDict, dict[str, Any]]:
    """Separate the state dict from whatever metadata travels with it."""
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if _is_state_dict(obj.get(key)):
                return obj[key], {k: v for k, v in obj.items() if k != key}
        if obj and _is_state_dict(obj):
            return obj, {}
        keys = ", ".join(map(str, list(obj)[:10]))
        raise ValueError(f"{where} holds no state dict (top-level keys: {keys})")
    raise ValueError(f"{where} holds a {type(obj).__name__}, not a state dict or checkpoint")


def _unwrap(state: StateDict, expected: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes; pick the student out of a distiller checkpoint."""
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
        if not expected.keys() & state.keys() and any(k.startswith("student.") for k in state):
            state = {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
            changed = True
    return state


def _listing(label: str, items: list[str]) -> str:
    if not items:
        return f"  {label}: none"
    more = f", ... (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"  {label} ({len(items)}): " + ", ".join(items[:_SHOWN]) + more


def load_weights(
    model: nn.Module,
    path_or_state: str | os.PathLike[str] | Mapping[str, Any],
    *,
    arch: str | None = None,
    strict: bool = True,
    trusted: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint into `model` in place; return the checkpoint's other entries.

    Mis-shaped tensors always fail; missing/unexpected keys fail when `strict`.
    Errors are `ValueError`s naming the file and the architecture, because a
    mismatch almost always means the wrong file or the wrong `--arch`.
    """
    arch = arch or getattr(model, "arch", None)
    if isinstance(path_or_state, Mapping):
        where, obj = "the given state", path_or_state
    else:
        where, obj = str(path_or_state), _read(path_or_state, trusted)
    state, meta = _split(obj, where)

    saved_arch = meta.get("arch")
    if arch and isinstance(saved_arch, str) and saved_arch != arch:
        raise ValueError(f"{where} holds weights for {saved_arch!r}, not {arch!r}")
    arch = arch or type(model).__name__

    expected = model.state_dict()
    state = _unwrap(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if misshaped or (strict and (missing or unexpected)):
        raise ValueError(
            f"{where} does not fit architecture {arch!r}:\n"
            + "\n".join(
                [
                    _listing("missing", missing),
                    _listing("unexpected", unexpected),
                    _listing("mis-shaped", misshaped),
                ]
            )
        )
    if missing or unexpected:
        log.warning(
            "loading %s into %s non-strictly: %d missing, %d unexpected keys ignored",
            where, arch, len(missing), len(unexpected),
        )
        state = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict(state, strict=strict)
    return meta


def _module_names(model: nn.Module) -> tuple[str | None, str | None]:
    """(the first convolution, the classifier): the modules a new task may change."""
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    head = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            head = name  # the last one the model registers
    return first_conv, head


def load_pretrained(model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any], *,
                    arch: str | None = None, trusted: bool = False) -> dict[str, list[str]]:
    """Start `model` from weights made for another task, in place; return what was changed:
    {"reinitialised": [...], "adapted": [...]} (parameter names).

    Every tensor that fits is loaded. The classifier (the last linear or convolution layer)
    keeps its fresh initialisation where the class count differs; the first convolution is
    adapted where the input channels differ (RGB weights summed for grey input, grey weights
    spread over RGB). Anything else that does not fit is an error naming it, as loading
    another architecture's weights would be. `source` "pretrained" means the weights
    torchvision or timm publish for `arch` (downloaded).
    """
    arch = arch or getattr(model, "arch", None) or type(model).__name__
    if isinstance(source, str) and source == "pretrained":
        from .external import published_state

        where, obj = f"published weights of {arch}", published_state(arch)
    elif isinstance(source, Mapping):
        where, obj = "the given state", source
    else:
        where, obj = str(source), _read(source, trusted)
    state, _meta = _split(obj, where)
    expected = model.state_dict()
    state = _unwrap(state, expected)
    first_conv, head = _module_names(model)
    if not any(key in state for key in expected):
        raise ValueError(f"{where} holds none of the tensors of architecture {arch!r}")
    changed: dict[str, list[str]] = {"reinitialised": [], "adapted": []}
    loaded, missing, misshaped = {}, [], []
    for key, target in expected.items():
        module = key.rsplit(".", 1)[0]
        value = state.get(key)
        if value is not None and value.shape == target.shape:
            loaded[key] = value
        elif module == head:
            changed["reinitialised"].append(key)
        elif module == first_conv and value is not None and value.dim() == 4 and value.shape[0] == target.shape[0]:
            loaded[key] = _adapt_channels(value, target.shape[1])
            changed["adapted"].append(key)
        elif value is None:
            if target.is_floating_point():  # not a counter (BatchNorm's num_batches_tracked) left unsaved
                missing.append(key)
        else:
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
    if missing or misshaped:
        raise ValueError(f"{where} does not fit architecture {arch!r} beyond its classifier and first "
                         "convolution:\n" + "\n".join(_listing(label, items) for label, items in
                                                (("missing", missing), ("misshaped", misshaped)) if items))
    model.load_state_dict(loaded, strict=False)
    return changed


def _adapt_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """First-convolution weights for another number of input channels: their sum for one
    channel (grey images in the range the RGB filters saw), spread evenly otherwise."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1) * (weight.shape[1] / channels)
