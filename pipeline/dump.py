"""Stage 1: run the teacher once over every cached view and fill a logit store.

The work is the store's write units (see `pipeline.store`): a shard process takes its
share, skips finished units, and streams the rest through one DataLoader; a unit is
written (whole chunks only) as soon as its last batch is out of the teacher.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data import ImageSet
from pipeline.inference import forward_batches
from pipeline.runtime import code_version
from pipeline.store import Layout, LogitStore, Unit, create_or_open, plan_layout, store_id
from pipeline.teacher import Teacher
from pipeline.views import ViewSpec, batch_indices, view_loader


class NonFiniteLogits(RuntimeError):
    """The teacher produced NaN or inf: stop before the store holds it."""


def build_provenance(
    teacher: Teacher, train: ImageSet, test: ImageSet, spec: ViewSpec, *, dtype: str, amp: str
) -> dict[str, Any]:
    """What a store records about where its logits came from (see DESIGN.md)."""
    provenance = {
        "teacher": teacher.describe(),
        "dataset": {**train.describe(), "classes": list(train.classes)},
        "eval_dataset": test.describe(),
        "normalization": {"mean": list(train.mean), "std": list(train.std)},
        "views": spec.to_dict(),
        "dtype": dtype,
        "inference": {"amp": amp},
        "code_version": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    provenance["store_id"] = store_id(provenance)
    return provenance


def check_compatible(teacher: Teacher, train: ImageSet) -> None:
    if teacher.num_classes != train.num_classes:
        raise ValueError(f"teacher {teacher.arch} has {teacher.num_classes} classes, dataset {train.name} has {train.num_classes}")
    if teacher.in_channels != train.in_channels:
        raise ValueError(f"teacher {teacher.arch} takes {teacher.in_channels} channels, dataset {train.name} has {train.in_channels}")


def layout_for(train: ImageSet, test: ImageSet, spec: ViewSpec, dtype: str, chunk_samples: int | None = None) -> Layout:
    return plan_layout(
        slots=spec.num_slots, samples=len(train), classes=train.num_classes,
        param_count=len(spec.family.param_names), param_dtype=np.dtype(spec.family.param_dtype).name,
        dtype=dtype, eval_samples=len(test), chunk_samples=chunk_samples,
    )


@dataclass
class DumpResult:
    store: LogitStore
    units_written: int
    views_written: int
    complete: bool


def dump(
    teacher: Teacher,
    train: ImageSet,
    test: ImageSet,
    spec: ViewSpec,
    path: str | os.PathLike,
    *,
    dtype: str = "float16",
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 256,
    device: torch.device = torch.device("cpu"),
    amp: str = "off",
    channels_last: bool = True,
    num_workers: int = 0,
    chunk_samples: int | None = None,
    progress: bool = True,
    after_unit: Callable[[Unit], None] | None = None,
) -> DumpResult:
    """Fill shard `shard` = (I, N) of the store at `path`, creating it if needed."""
    check_compatible(teacher, train)
    layout = layout_for(train, test, spec, dtype, chunk_samples)
    provenance = build_provenance(teacher, train, test, spec, dtype=dtype, amp=amp)
    store = create_or_open(path, provenance, layout, train.labels, test.labels)
    layout = store.layout  # a store made earlier keeps its own chunking
    pending = store.pending(shard)

    # One stream of batches over all pending units; a batch never straddles two units.
    items, owners = [], []
    for unit in pending:
        a, b = layout.eval_range(unit.chunk) if unit.is_eval else layout.chunk_range(unit.chunk)
        for idx in batch_indices(b - a, batch_size):
            idx = idx + a
            items.append((idx, None if unit.is_eval else spec.params(idx, unit.slot)))
            owners.append(unit)

    model = teacher.model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    total_views = sum(len(idx) for idx, _ in items)
    bar = tqdm(total=total_views, unit="view", unit_scale=True, disable=not progress, desc=f"dump {store.path.name}", smoothing=0.05)
    written = 0
    # Train and test views come from different image sets: run each group as its own stream.
    for group_is_eval in (True, False):
        group = [i for i, unit in enumerate(owners) if unit.is_eval == group_is_eval]
        if not group:
            continue
        images = test if group_is_eval else train
        loader = view_loader(images, spec.family, [items[i] for i in group], num_workers=num_workers, pin_memory=device.type == "cuda")
        buffers: dict[Unit, list] = {}
        for pos, (logits, indices, crc) in zip(group, forward_batches(model, loader, images, device=device, amp=amp, channels_last=channels_last)):
            unit = owners[pos]
            _check_finite(logits, indices, unit)
            buffers.setdefault(unit, []).append((logits.numpy(), crc.numpy(), items[pos][1]))
            bar.update(len(indices))
            if pos + 1 == len(owners) or owners[pos + 1] != unit:
                parts = buffers.pop(unit)
                block = np.concatenate([p[0] for p in parts])
                if unit.is_eval:
                    store.write_unit(unit, block)
                else:
                    store.write_unit(unit, block, views=np.concatenate([p[2] for p in parts]),
                                     input_crc=np.concatenate([p[1] for p in parts]))
                written += 1
                if after_unit is not None:
                    after_unit(unit)
    bar.close()
    complete = store.mark_complete_if_done()
    return DumpResult(store, written, total_views, complete)


def _check_finite(logits: torch.Tensor, indices: torch.Tensor, unit: Unit) -> None:
    finite = torch.isfinite(logits).all(1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        where = f"test sample {int(indices[row])}" if unit.is_eval else f"sample {int(indices[row])}, view slot {unit.slot}"
        raise NonFiniteLogits(f"the teacher produced non-finite logits for {where}; nothing of that unit was written")
