"""Ensemble teachers from logit stores: arithmetic on aligned stores, no teacher pass.

Stores of one dataset split with the same view spec hold the same views (a store's views
depend on its view seed, not its teacher), so their logits line up view for view and an
ensemble teacher is a combination of the members' logits:

- `logits` (default): the weighted mean of the members' logits;
- `probs`: the log of the weighted mean of their probabilities at temperature 1, MEAL V2's
  averaging. Its softmax is the members' mixture; at another temperature a loss sees
  softmax(log mixture / T), not the mixture of the members' tempered distributions.

The result is an ordinary logit store (same layout, views and checks), so every student,
`rld inspect` and the workflow read it like any other. Its provenance names each member's
store id and teacher sha256; its teacher's "weights" hash covers exactly those, the
combination and the weights, so two ensembles of the same members made the same way are the
same store. It is written one write unit at a time (memory: a unit of every member), resumes
after a kill like a dump, and refuses members that are incomplete or hold other views, data
or classes, before anything is written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from pipeline.store import (DTYPES, IDENTITY_FIELDS, Layout, LogitStore, StoreError, Unit, UnitWriter, create_or_open,
                            plan_layout, store_id)

SPACES = ("logits", "probs")
# What members must share: every identity field but the teacher's, its numerics and the dtype.
SHARED_FIELDS = tuple(f for f in IDENTITY_FIELDS if not f.startswith(("teacher.", "inference.")) and f != "dtype")
SHARED_LAYOUT = ("slots", "samples", "classes", "param_count", "param_dtype", "eval_samples")


class EnsembleError(StoreError, ValueError):
    """Members that cannot be combined, or an ensemble request that makes no sense."""


@dataclass
class EnsembleResult:
    store: LogitStore
    units_written: int
    complete: bool


# -- combining ------------------------------------------------------------------------


def combine(blocks: Sequence[np.ndarray], weights: np.ndarray, space: str = "logits") -> np.ndarray:
    """The members' logits of the same views [K x (n, C)] combined into float32 (n, C).

    `weights` sum to 1. "logits": sum_k w_k z_k. "probs": log sum_k w_k softmax(z_k), computed
    in log space (a member's tiny probabilities do not underflow to log 0). Torch does the
    arithmetic: its float16 conversion and reductions are vectorised and threaded, 8x numpy's
    here, which keeps a build near the speed of reading the members.
    """
    import torch

    if space not in SPACES:
        raise EnsembleError(f"space must be one of {SPACES}, got {space!r}")
    z = [torch.from_numpy(np.ascontiguousarray(b)).float() for b in blocks]
    if space == "logits":
        out = z[0].mul(float(weights[0]))
        for zk, wk in zip(z[1:], weights[1:]):
            out.add_(zk, alpha=float(wk))
        return out.numpy()
    log_mixture = torch.stack([torch.log_softmax(zk, -1) + math.log(wk) for zk, wk in zip(z, weights)])
    return torch.logsumexp(log_mixture, 0).numpy()


def normalised_weights(weights: Sequence[float] | None, members: int) -> np.ndarray:
    """Weights as given, scaled to sum 1 (None: equal)."""
    if weights is None:
        return np.full(members, 1.0 / members)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (members,):
        raise EnsembleError(f"{len(w)} weights for {members} members: give one weight per member")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise EnsembleError(f"weights must be positive numbers, got {list(weights)}")
    return w / w.sum()


# -- the members ----------------------------------------------------------------------


def open_members(paths: Sequence[str | os.PathLike]) -> list[LogitStore]:
    """Open and check the members: complete, distinct, and holding the same views of the same data."""
    if len(paths) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 member stores, got {len(paths)}")
    members = [LogitStore.open(p) for p in paths]
    for store in members:
        store.require_complete()
    seen: dict[str, Path] = {}
    for store in members:
        if store.id in seen:
            raise EnsembleError(f"{seen[store.id]} and {store.path} are the same store (id {store.id}): list each member once")
        seen[store.id] = store.path
    differences = [line for store in members[1:] for line in _differences(members[0], store)]
    if differences:
        raise EnsembleError("the members hold different views or data, so their logits do not line up: "
                            + "; ".join(differences))
    return members


def _differences(first: LogitStore, other: LogitStore) -> list[str]:
    """'field: A has x, B has y' for every shared field and layout size that differs."""
    a, b = first.provenance, other.provenance
    lines = [f"{field}: {first.path} has {_shown(_field(a, field))}, {other.path} has {_shown(_field(b, field))}"
             for field in SHARED_FIELDS if _shown(_field(a, field)) != _shown(_field(b, field))]
    la, lb = first.layout.to_dict(), other.layout.to_dict()
    lines += [f"layout.{key}: {first.path} has {la[key]}, {other.path} has {lb[key]}"
              for key in SHARED_LAYOUT if la[key] != lb[key]]
    return lines


def _field(provenance: dict[str, Any], dotted: str) -> Any:
    """provenance["dataset"]["val_split"] for "dataset.val_split", whole (a dict stays a dict)."""
    value: Any = provenance
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# -- provenance -----------------------------------------------------------------------


def ensemble_provenance(
    members: Sequence[LogitStore], out: Path, *, space: str, weights: np.ndarray, dtype: str,
    accuracy: dict[str, float],
) -> dict[str, Any]:
    """The ensemble store's record: the first member's data and views, and a teacher that
    lists every member (store id, path relative to the ensemble, teacher)."""
    first = members[0].provenance
    described = [_member_record(m, out) for m in members]
    weights_list = [float(w) for w in weights]
    identity = json.dumps({"space": space, "weights": weights_list, "members": [m["store_id"] for m in described]},
                          sort_keys=True)
    teacher = {
        "arch": "ensemble",
        "name": out.stem,
        "num_classes": first["teacher"]["num_classes"],
        "in_channels": first["teacher"]["in_channels"],
        # Not a checkpoint's hash: what decides the ensemble's logits, so the store id follows it.
        "weights_sha256": hashlib.sha256(identity.encode()).hexdigest(),
        "accuracy": accuracy,
        "source": "ensemble",
        "file": None,
        "ensemble": {"space": space, "weights": weights_list, "members": described},
    }
    provenance = {
        "teacher": teacher,
        **{key: first[key] for key in ("dataset", "eval_dataset", "normalization", "data_root", "views") if key in first},
        "dtype": dtype,
        # Each member's teacher ran with its own numerics; none of them can be re-run as this teacher.
        "inference": {"device": None, "amp": None, "channels_last": None,
                      "members": [m.attrs.get("inference") for m in members]},
        "code_version": _code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    provenance["store_id"] = store_id(provenance)
    return provenance


def _member_record(store: LogitStore, out: Path) -> dict[str, Any]:
    teacher = store.attrs.get("teacher") or {}
    return {
        "store": os.path.relpath(store.path.resolve(), out.resolve().parent),
        "store_id": store.id,
        "teacher": {k: teacher.get(k) for k in ("arch", "weights_sha256", "file", "accuracy")},
    }


def _test_accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The ensemble's top-1/top-5 on the test split, as a teacher's is recorded (none without one)."""
    from pipeline.inference import topk_accuracy

    return topk_accuracy(logits, labels) if len(labels) else {}


def _code_version() -> str:
    from pipeline.runtime import code_version

    return code_version()


def is_ensemble(store: LogitStore) -> bool:
    return bool((store.attrs.get("teacher") or {}).get("ensemble"))


def member_paths(store: LogitStore) -> list[Path]:
    """Where an ensemble's members are, as recorded (relative to the ensemble store's folder)."""
    members = store.attrs["teacher"]["ensemble"]["members"]
    return [store.path.parent / m["store"] for m in members]


# -- building -------------------------------------------------------------------------


def build_ensemble(
    paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, space: str = "logits",
    weights: Sequence[float] | None = None, dtype: str | None = None, progress: bool = True,
) -> EnsembleResult:
    """Create (or resume) the ensemble store `out` of the member stores `paths`.

    `dtype` None: the members' dtype when they share one, else float32.
    """
    out = Path(out)
    if space not in SPACES:
        raise EnsembleError(f"space must be one of {SPACES}, got {space!r}")
    members = open_members(paths)
    if any(out.resolve() == m.path.resolve() for m in members):
        raise EnsembleError(f"{out} is one of the members: write the ensemble to a store of its own")
    w = normalised_weights(weights, len(members))
    dtypes = {m.layout.dtype for m in members}
    dtype = dtype or (dtypes.pop() if len(dtypes) == 1 else "float32")
    if dtype not in DTYPES:
        raise EnsembleError(f"dtype must be one of {DTYPES}, got {dtype!r}")

    eval_logits, eval_labels = _combined_test_split(members, w, space)
    first = members[0].layout
    layout = plan_layout(slots=first.slots, samples=first.samples, classes=first.classes,
                         param_count=first.param_count, param_dtype=first.param_dtype, dtype=dtype,
                         eval_samples=first.eval_samples, chunk_samples=first.chunk_samples)
    provenance = ensemble_provenance(members, out, space=space, weights=w, dtype=dtype,
                                     accuracy=_test_accuracy(eval_logits, eval_labels))
    store = create_or_open(out, provenance, layout, members[0].labels(), eval_labels)
    written = _write_pending(store, members, w, space, eval_logits, progress)
    return EnsembleResult(store, written, store.mark_complete_if_done())


def _combined_test_split(members: Sequence[LogitStore], w: np.ndarray, space: str) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's test logits (float32) and the test labels, which the members must share."""
    logits, labels = zip(*(m.eval_logits() for m in members))
    for m, lab in zip(members[1:], labels[1:]):
        if not np.array_equal(lab, labels[0]):
            raise EnsembleError(f"eval/labels of {m.path} differ from those of {members[0].path}")
    return combine(logits, w, space), labels[0]


def _write_pending(store: LogitStore, members: Sequence[LogitStore], w: np.ndarray, space: str,
                   eval_logits: np.ndarray, progress: bool) -> int:
    """Combine and write every unit not yet done. The members' next unit is read (one thread
    per member) while this one is combined, and written in the background."""
    pending = store.pending()
    bar = tqdm(total=len(pending), unit="unit", disable=not progress, desc=f"ensemble {store.path.name}")
    with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix="member-reader") as readers, \
            UnitWriter(store, lambda unit: bar.update(1)) as writer:
        for unit in (u for u in pending if u.is_eval):
            a, b = store.layout.eval_range(unit.chunk)
            writer.submit(unit, eval_logits[a:b])
        for unit, blocks in _read_ahead(readers, members, [u for u in pending if not u.is_eval], store.layout):
            _check_aligned(members, blocks, unit)
            logits = combine([blk[0] for blk in blocks], w, space)
            writer.submit(unit, logits, views=blocks[0][1], input_crc=blocks[0][2])
    bar.close()
    return writer.written


def _read_ahead(readers: ThreadPoolExecutor, members: Sequence[LogitStore], units: list[Unit],
                layout: Layout) -> Iterator[tuple[Unit, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]]:
    """(unit, each member's (logits, views, input_crc)), with the next unit's reads already under way."""
    def submit(unit: Unit) -> list[Future]:
        rows = layout.chunk_range(unit.chunk)
        return [readers.submit(m.read_unit, unit, *rows) for m in members]

    upcoming = submit(units[0]) if units else []
    for i, unit in enumerate(units):
        current, upcoming = upcoming, (submit(units[i + 1]) if i + 1 < len(units) else [])
        yield unit, [f.result() for f in current]


def _check_aligned(members: Sequence[LogitStore], blocks: list[tuple[np.ndarray, ...]], unit: Unit) -> None:
    """The members' view parameters and input checksums must agree: the same views, the same pixels."""
    for m, (_, views, crc) in zip(members[1:], blocks[1:]):
        for name, mine, theirs in (("views", views, blocks[0][1]), ("input_crc", crc, blocks[0][2])):
            if not np.array_equal(mine, theirs):
                row = int(np.flatnonzero((np.asarray(mine) != np.asarray(theirs)).reshape(len(mine), -1).any(1))[0])
                raise EnsembleError(
                    f"{name} of {unit} differ between {members[0].path} and {m.path} (first at sample row {row} of the "
                    "unit): the stores do not hold the same views, although their provenance agrees")
