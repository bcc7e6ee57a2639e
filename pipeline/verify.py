"""Audit a store: recompute random cached views from their stored parameters and re-run the teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.data import ImageSet
from pipeline.inference import forward_batches
from pipeline.ensemble import is_ensemble, member_paths
from pipeline.store import LogitStore, StoreError
from pipeline.teacher import Teacher
from pipeline.views import ViewRequest, ViewSpec, batch_indices, view_loader


def default_tolerance(store: LogitStore) -> float:
    """Max |delta logit| a faithful store can show: fp16 rounding, or a bf16 teacher.

    fp16 keeps 11 significant bits: a logit of |z| < 32 rounds by at most 2^-6 = 1.6e-2.
    Under bf16 autocast the logits keep 8 significant bits, so a re-run whose kernels differ
    (another CPU, device or batch shape) lands a step or two away: measured, a resnet20
    Fashion-MNIST store (bf16, logits up to 16) re-run under AVX2 and SSE4.1 kernels instead
    of the AVX-512 ones that wrote it differed by at most 0.0625 over 2,000 views, one bf16
    step at 8-16. 0.25 is two steps at 16-32, where CIFAR-100 teachers' largest logits lie.
    float32 logits re-run on another device type or kernel differ by float32 (or TF32)
    rounding, far below 1e-3.
    """
    if store.numerics.amp != "off":
        return 0.25
    return 2e-2 if store.layout.dtype == "float16" else 1e-3


@dataclass
class VerifyReport:
    views_checked: int
    max_abs_delta: float
    argmax_agreement: float  # percent
    input_mismatches: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.input_mismatches == 0 and self.max_abs_delta <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def verify_store(
    store: LogitStore, teacher: Teacher, train: ImageSet, *, samples: int = 256, seed: int = 0,
    device: torch.device = torch.device("cpu"), batch_size: int = 128, tolerance: float | None = None,
) -> VerifyReport:
    """Re-run `teacher` on `samples` random cached views and compare with the stored logits.

    The teacher runs with the store's numerics (autocast, memory format) on `device`; fp16
    autocast, which CPUs lack, becomes float32 there. Every re-built input's crc32 is
    compared with the stored one: a mismatch means the views or the data changed.
    """
    store.require_complete()
    if is_ensemble(store):
        members = ", ".join(str(p) for p in member_paths(store))
        raise StoreError(f"{store.path} is an ensemble store, made from its members' logits without a teacher pass: "
                         f"verify each member with its own teacher instead ({members})")
    store.check({"teacher": {"weights_sha256": teacher.weights_sha256}, "dataset": {"fingerprint": train.fingerprint}})
    lay = store.layout
    spec = ViewSpec.from_dict(store.attrs["views"])
    rng = np.random.default_rng(seed)
    count = min(samples, lay.slots * lay.samples)
    picks = rng.choice(lay.slots * lay.samples, size=count, replace=False)
    slots, indices = np.divmod(np.sort(picks), lay.samples)

    deltas, agree, mismatches = [], 0, 0
    numerics = store.numerics.on(device)
    model = teacher.model
    for slot in np.unique(slots):
        rows = indices[slots == slot]
        params = store.read_slot("views", int(slot))[rows]
        stored = store.read_logits(int(slot))[rows].astype(np.float32)
        stored_crc = store.read_slot("input_crc", int(slot))[rows]
        loader = view_loader(spec.family, [ViewRequest(train, rows[b], params[b]) for b in batch_indices(len(rows), batch_size)])
        fresh_parts, crc_parts = [], []
        for logits, _, crc in forward_batches(model, loader, train.mean, train.std, device=device, numerics=numerics):
            fresh_parts.append(logits)
            crc_parts.append(crc)
        fresh = np.concatenate(fresh_parts)
        mismatches += int((np.concatenate(crc_parts) != stored_crc.astype(np.int64)).sum())
        deltas.append(np.abs(fresh - stored).max(1))
        agree += int((fresh.argmax(1) == stored.argmax(1)).sum())
    delta = float(np.concatenate(deltas).max()) if deltas else 0.0
    return VerifyReport(count, delta, 100.0 * agree / max(count, 1), mismatches, tolerance if tolerance is not None else default_tolerance(store))

