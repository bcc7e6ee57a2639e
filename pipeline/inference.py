"""Running a model over views: the teacher's dump, evaluation and verification share this."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.data import ImageSet, to_model_input
from pipeline.runtime import autocast
from pipeline.views import CropFlip, ResizedCropFlip, ViewFamily, ViewRequest, batch_indices, view_loader


def default_family(images: ImageSet) -> ViewFamily:
    """CIFAR's crop+flip for small fixed-size images (28 px is padded to 32), else ImageNet's."""
    if images.fixed_size:
        side = max(images.image(0).shape[-2:])
        return CropFlip(32, 4) if side <= 32 else CropFlip(side, side // 8)
    return ResizedCropFlip()


def forward_batches(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device,
    amp: str = "off",
    channels_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (float32 logits, sample indices, crc32 of each view) per batch, in eval mode.

    Batch k's logits are fetched only after batch k+1 is queued, so an accelerator never
    waits for the host between batches.
    """
    model.eval()
    pending = None
    with torch.inference_mode():
        for views, _labels, indices, crc in loader:
            x = to_model_input(views, mean, std, device=device, channels_last=channels_last)
            with autocast(device, amp):
                logits = model(x).float()
            if pending is not None:
                yield pending[0].cpu().numpy(), pending[1], pending[2]
            pending = (logits, indices, crc)
        if pending is not None:
            yield pending[0].cpu().numpy(), pending[1], pending[2]


def predict_test(
    model: nn.Module,
    images: ImageSet,
    family: ViewFamily,
    *,
    device: torch.device,
    batch_size: int = 256,
    amp: str = "off",
    channels_last: bool = False,
    num_workers: int = 0,
) -> np.ndarray:
    """Logits [M, C] float32 of the un-augmented test views."""
    requests = [ViewRequest(images, idx, None) for idx in batch_indices(len(images), batch_size)]
    loader = view_loader(family, requests, num_workers=num_workers)
    batches = forward_batches(model, loader, images.mean, images.std, device=device, amp=amp, channels_last=channels_last)
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
