"""Running a model over views: the teacher's dump, evaluation and verification share this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.data import ImageSet, to_model_input
from pipeline.runtime import autocast, resolve_amp, resolve_channels_last
from pipeline.views import CropFlip, ResizedCropFlip, ViewFamily, ViewRequest, batch_indices, view_loader


def default_family(images: ImageSet) -> ViewFamily:
    """CIFAR's crop+flip for small fixed-size images (28 px is padded to 32), else ImageNet's."""
    if images.fixed_size:
        side = max(images.image(0).shape[-2:])
        return CropFlip(32, 4) if side <= 32 else CropFlip(side, side // 8)
    return ResizedCropFlip()


@dataclass(frozen=True)
class Numerics:
    """How a teacher's forward pass is computed: the choices that change its logits.

    A store records them (`inference` attribute, part of its identity, so a resumed dump
    cannot mix them) and an online teacher adopts a store's, so that both compute the same
    logits. `device` is the device type: float32 convolutions on CUDA use TF32 by default
    and round differently from a CPU.
    """

    device: str = "cpu"
    amp: str = "off"
    channels_last: bool = False

    @classmethod
    def resolve(cls, device: torch.device, amp: str = "auto", channels_last: bool | None = None) -> "Numerics":
        """The numerics a dump on `device` uses for these options ("auto" / None: the defaults)."""
        return cls(device.type, resolve_amp(amp, device), resolve_channels_last(channels_last, device))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Numerics":
        """From a store's `inference` record; a record without a field predates it (None)."""
        return cls(d.get("device"), d.get("amp", "off"), d.get("channels_last"))

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "amp": self.amp, "channels_last": self.channels_last}

    def on(self, device: torch.device) -> "Numerics":
        """These numerics as closely as `device` allows: same autocast and memory format
        (fp16 autocast, which CPUs lack, becomes float32 there)."""
        amp = "off" if device.type == "cpu" and self.amp == "fp16" else self.amp
        return Numerics(device.type, amp, bool(self.channels_last))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model on `device` in eval mode, weights in this memory format (in place, as
        nn.Module.to moves a model)."""
        return model.to(device, memory_format=self.memory_format).eval()

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """float32 logits of a prepared model, computed the same way whatever the batch.

        Input and weights share one memory format (a mixed pair picks yet another kernel),
        and a batch of one runs next to a copy of itself: CPU kernels take another path for
        N=1 and round differently (~1e-7) from the same image inside a batch.
        """
        lone = x.shape[0] == 1
        if lone:
            x = torch.cat([x, x])
        with autocast(x.device, self.amp):
            logits = model(x.contiguous(memory_format=self.memory_format)).float()
        return logits[:1] if lone else logits


def forward_batches(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device,
    numerics: Numerics = Numerics(),
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (float32 logits, sample indices, crc32 of each view) per batch, in eval mode.

    Batch k's logits are fetched only after batch k+1 is queued, so an accelerator never
    waits for the host between batches. Inference mode is on only while a batch is computed,
    never across a `yield`: a caller that stops iterating (an error, a full disk) must not be
    left with autograd switched off until the generator is collected.
    """
    model = numerics.prepare(model, device)
    pending = None
    for views, _labels, indices, crc in loader:
        with torch.inference_mode():
            logits = numerics.forward(model, to_model_input(views, mean, std, device=device))
            ready = None if pending is None else (pending[0].cpu().numpy(), pending[1], pending[2])
        pending = (logits, indices, crc)
        if ready is not None:
            yield ready
    if pending is not None:
        with torch.inference_mode():
            ready = (pending[0].cpu().numpy(), pending[1], pending[2])
        yield ready


def predict_test(
    model: nn.Module,
    images: ImageSet,
    family: ViewFamily,
    *,
    device: torch.device,
    batch_size: int = 256,
    numerics: Numerics = Numerics(),
    num_workers: int = 0,
) -> np.ndarray:
    """Logits [M, C] float32 of the un-augmented test views."""
    requests = [ViewRequest(images, idx, None) for idx in batch_indices(len(images), batch_size)]
    loader = view_loader(family, requests, num_workers=num_workers)
    batches = forward_batches(model, loader, images.mean, images.std, device=device, numerics=numerics)
    parts = [logits for logits, _, _ in batches]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def topk_accuracy(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{'top1': %, 'top5': %}; k is capped at the number of classes."""
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels)
    if len(labels) == 0:
        return {f"top{k}": float("nan") for k in ks}
    out = {}
    for k in ks:
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        out[f"top{k}"] = 100.0 * (top == labels[:, None]).any(1).float().mean().item()
    return out


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along each row (from 0), tied values sharing their average rank (Spearman's)."""
    n = x.shape[1]
    order = np.argsort(x, axis=1, kind="stable")
    ordered = np.take_along_axis(x, order, axis=1)
    position = np.broadcast_to(np.arange(n), x.shape)
    starts_run = np.ones(x.shape, dtype=bool)
    starts_run[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends_run = np.ones(x.shape, dtype=bool)
    ends_run[:, :-1] = starts_run[:, 1:]
    first = np.maximum.accumulate(np.where(starts_run, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends_run, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(x.shape)
    np.put_along_axis(ranks, order, (first + last) / 2.0, axis=1)
    return ranks


def rank_correlation(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, rows_per_block: int = 4096) -> float:
    """Mean over images of the Spearman correlation between the student's and the teacher's
    logits over the classes other than the label: how much of the teacher's ranking of the
    wrong classes (its "dark knowledge") the student carries. Images where either ranking is
    constant are left out; NaN if none is left."""
    student, teacher, labels = np.asarray(student), np.asarray(teacher), np.asarray(labels)
    rows, classes = student.shape
    if classes < 3:
        return float("nan")  # one non-target class has no ranking
    values = []
    for start in range(0, rows, rows_per_block):
        block = slice(start, start + rows_per_block)
        others = np.arange(classes)[None, :] != labels[block, None]
        shape = (len(others), classes - 1)
        a = _average_ranks(student[block][others].reshape(shape).astype(np.float64))
        b = _average_ranks(teacher[block][others].reshape(shape).astype(np.float64))
        a -= a.mean(1, keepdims=True)
        b -= b.mean(1, keepdims=True)
        norm = np.sqrt((a * a).sum(1) * (b * b).sum(1))
        kept = norm > 0
        values.append((a * b).sum(1)[kept] / norm[kept])
    joined = np.concatenate(values)
    return float(joined.mean()) if len(joined) else float("nan")
