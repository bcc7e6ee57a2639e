"""Teacher signals: per epoch, which view each sample uses and what the teacher said about it.

Read from a logit store (`StoreSignal`, the point of this project), run live on the same
views (`OnlineSignal`, the way mdistiller works, kept for parity), or absent (`ViewsOnly`,
plain cross-entropy training). A signal's `plan(epoch, seed, n)` is a pure function of its
arguments, so the training loop prepares the next epoch's in a background thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.data import ImageSet
from pipeline.inference import Numerics, predict_test
from pipeline.store import LogitStore, StoreError
from pipeline.teacher import Teacher
from pipeline.views import ViewSpec



@dataclass
class EpochPlan:
    params: np.ndarray  # [N, k] view parameters of each sample this epoch
    logits: torch.Tensor | None = None  # [N, C] cached teacher logits (stored dtype)
    crc: np.ndarray | None = None  # [N] crc32 of the input the teacher saw


class ViewsOnly:
    """No teacher: views drawn from the spec, as a CE baseline or a teacher's own training."""

    kind = "none"

    def __init__(self, spec: ViewSpec):
        self.spec = spec

    def plan(self, epoch: int, seed: int, num_samples: int) -> EpochPlan:
        slots = self.spec.slots_for_epoch(epoch, num_samples, seed)
        params = np.empty((num_samples, len(self.spec.family.param_names)), dtype=self.spec.family.param_dtype)
        for slot in np.unique(slots):
            rows = np.flatnonzero(slots == slot)
            params[rows] = self.spec.params(rows, int(slot))
        return EpochPlan(params)

    def batch_logits(self, plan: EpochPlan, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        return None

    def test_logits(self, test: ImageSet, device: torch.device) -> np.ndarray | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "views": self.spec.to_dict()}


class StoreSignal(ViewsOnly):
    """Teacher logits and view parameters replayed from a complete logit store."""

    kind = "store"

    def __init__(self, store: LogitStore):
        store.require_complete()
        self.store = store
        super().__init__(ViewSpec.from_dict(store.attrs["views"]))

    def plan(self, epoch: int, seed: int, num_samples: int) -> EpochPlan:
        views, logits, crc = self.store.gather(self.spec.slots_for_epoch(epoch, num_samples, seed))
        finite = np.isfinite(logits).all(1)
        if not finite.all():
            raise StoreError(f"{self.store.path}: non-finite teacher logits for sample {int(np.flatnonzero(~finite)[0])} at epoch {epoch + 1}")
        return EpochPlan(views, torch.from_numpy(logits), crc)

    def batch_logits(self, plan: EpochPlan, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        return plan.logits[indices].float()

    def test_logits(self, test: ImageSet, device: torch.device) -> np.ndarray | None:
        return self.store.eval_logits()[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "store": str(self.store.path), "store_id": self.store.id,
                "teacher": self.store.attrs["teacher"], "views": self.spec.to_dict()}


class OnlineSignal(ViewsOnly):
    """The teacher runs every step on the very batch the student sees (mdistiller's way).

    It computes with `numerics` (autocast, memory format; its device is the student's) and
    rounds its logits to `dtype`: given a store's, it produces the logits the store holds,
    bit for bit on a CPU.
    """

    kind = "online"

    def __init__(self, teacher: Teacher, spec: ViewSpec, numerics: Numerics, dtype: str = "float32"):
        super().__init__(spec)
        self.teacher, self.numerics, self.dtype = teacher, numerics, dtype

    def batch_logits(self, plan: EpochPlan, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        model = self.numerics.prepare(self.teacher.model, x.device)
        with torch.inference_mode():
            logits = self.numerics.forward(model, x)
            return logits.to(getattr(torch, self.dtype)).float()

    def test_logits(self, test: ImageSet, device: torch.device) -> np.ndarray | None:
        return predict_test(self.teacher.model, test, self.spec.family, device=device, numerics=self.numerics)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "teacher": self.teacher.describe(), "views": self.spec.to_dict(),
                "numerics": self.numerics.to_dict(), "dtype": self.dtype}


def check_inputs(plan: EpochPlan, indices: np.ndarray, crc: np.ndarray, epoch: int) -> None:
    """Every batch's views must be the ones the teacher saw (a few us a batch: always on)."""
    if plan.crc is None:
        return
    bad = np.flatnonzero(crc != plan.crc[indices].astype(np.int64))
    if len(bad):
        raise StoreError(
            f"epoch {epoch + 1}: the view of sample {int(indices[bad[0]])} differs from the one the teacher saw "
            f"(input crc32 mismatch, {len(bad)} of {len(indices)} in this batch): the dataset or view code "
            "changed since the store was written, or the store is damaged"
        )
