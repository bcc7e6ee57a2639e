"""Stage 1: run the teacher once over every cached view and fill a logit store.

The work is the store's write units (see `pipeline.store`): a shard process takes its
share, skips finished units, and streams the rest through one DataLoader; a unit is
written (whole chunks only) as soon as its last batch is out of the teacher.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data import ImageSet
from pipeline.inference import Numerics, forward_batches
from pipeline.runtime import code_version, resolve_workers
from pipeline.store import Layout, LogitStore, Unit, UnitWriter, create_or_open, plan_layout, store_id
from pipeline.teacher import Teacher
from pipeline.views import ViewRequest, ViewSpec, batch_indices, view_loader


class NonFiniteLogits(RuntimeError):
    """The teacher produced NaN or inf: stop before the store holds it."""


def build_provenance(
    teacher: Teacher, train: ImageSet, test: ImageSet, spec: ViewSpec, *, dtype: str, numerics: Numerics
) -> dict[str, Any]:
    """What a store records about where its logits came from (docs/store-format.md lists the fields).

    `inference` holds the teacher's numerics (identity: they change the logits) and, as a
    record only, the torch version, device name and CPU thread count of the process that
    created the store.
    """
    provenance = {
        "teacher": teacher.describe(),
        "dataset": train.describe(class_names=True),
        "eval_dataset": test.describe(),
        "normalization": train.normalization,
        "data_root": train.root,  # a record: where the images were read from, for its students
        "views": spec.to_dict(),
        "dtype": dtype,
        "inference": {**numerics.to_dict(), "torch": torch.__version__, "device_name": _device_name(numerics.device),
                      "threads": torch.get_num_threads()},
        "code_version": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    provenance["store_id"] = store_id(provenance)
    return provenance


def _device_name(device_type: str) -> str:
    """The GPU or CPU model: kernels, and so float rounding, can differ between models."""
    if device_type == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


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
    batch_size: int | None = None,
    device: torch.device = torch.device("cpu"),
    amp: str = "auto",
    channels_last: bool | None = None,
    num_workers: int | None = None,
    chunk_samples: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    after_unit: Callable[[Unit], None] | None = None,
) -> DumpResult:
    """Fill shard `shard` = (I, N) of the store at `path`, creating it if needed.

    `batch_size` None: 512 on CUDA, 64 on CPU (bigger CPU batches are slower). `amp` "auto"
    and `channels_last` None take the defaults of `device` (see `Numerics.resolve`).
    """
    check_compatible(teacher, train)
    if threads is not None:
        torch.set_num_threads(threads)
    batch_size = batch_size or (512 if device.type == "cuda" else 64)
    num_workers = resolve_workers(num_workers, device)
    layout = layout_for(train, test, spec, dtype, chunk_samples)
    numerics = Numerics.resolve(device, amp, channels_last)
    provenance = build_provenance(teacher, train, test, spec, dtype=dtype, numerics=numerics)
    store = create_or_open(path, provenance, layout, train.labels, test.labels)
    layout = store.layout  # a store made earlier keeps its own chunking
    requests, owners = _plan_batches(store.pending(shard), layout, train, test, spec, batch_size)

    total_views = sum(len(r.indices) for r in requests)
    bar = tqdm(total=total_views, unit="view", unit_scale=True, disable=not progress, desc=f"dump {store.path.name}", smoothing=0.05)
    loader = view_loader(spec.family, requests, num_workers=num_workers, pin_memory=device.type == "cuda")
    batches = forward_batches(teacher.model, loader, train.mean, train.std, device=device, numerics=numerics)
    units_written = _write_units(store, batches, requests, owners, bar, after_unit)
    bar.close()
    complete = store.mark_complete_if_done()
    return DumpResult(store, units_written, total_views, complete)


def _plan_batches(
    pending: list[Unit], layout: Layout, train: ImageSet, test: ImageSet, spec: ViewSpec, batch_size: int,
) -> tuple[list[ViewRequest], list[Unit]]:
    """One stream of batches over all pending units, and the unit each batch belongs to.

    A batch never straddles two units, so a unit is whole once its last batch is out.
    """
    requests, owners = [], []
    for unit in pending:
        a, b = layout.eval_range(unit.chunk) if unit.is_eval else layout.chunk_range(unit.chunk)
        for idx in batch_indices(b - a, batch_size):
            idx = idx + a
            requests.append(ViewRequest(test, idx, None) if unit.is_eval else ViewRequest(train, idx, spec.params(idx, unit.slot)))
            owners.append(unit)
    return requests, owners


_BatchPart = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # logits, input crc, view params (None: test split)


def _write_units(
    store: LogitStore,
    batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    requests: list[ViewRequest],
    owners: list[Unit],
    bar: tqdm,
    after_unit: Callable[[Unit], None] | None,
) -> int:
    """Check each batch of logits, and hand a unit to the writer with its last batch; returns units written."""
    parts: list[_BatchPart] = []
    with UnitWriter(store, after_unit) as writer:
        for pos, (logits, indices, crc) in enumerate(batches):
            unit = owners[pos]
            _check_finite(logits, indices, unit)
            parts.append((logits, crc, requests[pos].params))
            bar.update(len(indices))
            if pos + 1 == len(owners) or owners[pos + 1] != unit:  # the unit's last batch
                _submit_unit(writer, unit, parts)
                parts = []
    return writer.written


def _submit_unit(writer: UnitWriter, unit: Unit, parts: list[_BatchPart]) -> None:
    """Queue one unit's batches as one write; the test split stores logits only."""
    block = np.concatenate([p[0] for p in parts])
    if unit.is_eval:
        writer.submit(unit, block)
    else:
        writer.submit(unit, block, views=np.concatenate([p[2] for p in parts]),
                      input_crc=np.concatenate([p[1] for p in parts]))


def _check_finite(logits: np.ndarray, indices: np.ndarray, unit: Unit) -> None:
    finite = np.isfinite(logits).all(1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        where = f"test sample {int(indices[row])}" if unit.is_eval else f"sample {int(indices[row])}, view slot {unit.slot}"
        raise NonFiniteLogits(f"the teacher produced non-finite logits for {where}; nothing of that unit was written")
