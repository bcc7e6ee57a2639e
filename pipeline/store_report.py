"""`rld inspect`: what a logit store holds, whether it is whole, and how good its teacher is.

One pass over the store with dask (threaded scheduler), chunk by chunk: every statistic is
a sum of small per-chunk partial vectors (`block_stats`), so memory stays at a few chunks
whatever the store's size (100 slots x 1.28M ImageNet samples x 1000 fp16 classes is 62.6k
chunks of 4 MB; each becomes a 24 KB vector, summed per slot in a tree by dask).

Only write units whose done marker is set count, and only their chunks are read: an
incomplete store (or one a dump is still filling) is reported, not refused. Every chunk
that is read passes zarr's crc32c check, so a successful inspect also proves those chunks
intact; a failure is reported as a `StoreError` naming the array and the chunk.

Conventions (the same as RLD's code, see shared/reference/RLD.md):
- the teacher is right on a view when argmax_c t_c == y, first index on ties, and y is in
  the top-5 when fewer than 5 classes rank before it in that order;
- the MCD mask of a view is {c : t_c >= t_y}: its size is 1 exactly when t_y is the strict
  maximum, and ties with t_y count in the mask;
- confidence is the softmax maximum at T = 1; ECE uses 15 equal-width bins over (0, 1]
  (a confidence c falls in bin b when b/15 < c <= (b+1)/15) and is
  sum_b |acc_b - conf_b| * n_b / n.
Shares are reported in percent (`*_pct`), confidences as fractions.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.store import Layout, LogitStore, StoreError
from pipeline.units import format_bytes

ECE_BINS = 15
WORST_CLASSES = 10
_SCALARS = ("views", "nonfinite", "top1", "top5", "argmax_mismatch", "confidence")


# ---------------------------------------------------------------------------------------
# Per-chunk partial statistics: the one place where logits are looked at


def stat_slices(classes: int) -> dict[str, slice]:
    """Where each statistic lives in a partial vector: all of them are sums over views."""
    sizes = {name: 1 for name in _SCALARS}
    sizes.update(bin_views=ECE_BINS, bin_confidence=ECE_BINS, bin_correct=ECE_BINS,
                 mask_size=classes, class_views=classes, class_errors=classes)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = slice(start, start + size)
        start += size
    return out


def stat_length(classes: int) -> int:
    """Length of a partial vector: about 3 x classes + 50 numbers."""
    return stat_slices(classes)["class_errors"].stop


def block_stats(logits: np.ndarray, labels: np.ndarray, argmax: np.ndarray | None = None) -> np.ndarray:
    """Partial sums [stat_length(C)] over the views of one block of logits [..., C].

    `labels` (and the stored `argmax`, when given) hold one entry per view of the block; a
    label of -1 marks a view that does not count (its write unit is not done). Rows with a
    NaN or inf logit are counted as `nonfinite` and left out of everything else.
    """
    classes = logits.shape[-1]
    where = stat_slices(classes)
    out = np.zeros(stat_length(classes))
    x, y, am = _counted_views(logits, labels, argmax)
    if len(y) == 0:
        return out
    x, y, am, nonfinite = _finite_views(x.astype(np.float32, copy=False), y, am)
    out[where["nonfinite"]] = nonfinite
    n = len(y)
    out[where["views"]] = n
    if n == 0:
        return out
    rows = np.arange(n)
    rank, mask_size = _label_rank_and_mask_size(x, y, rows)
    correct = rank == 0
    out[where["top1"]] = np.count_nonzero(correct)
    out[where["top5"]] = np.count_nonzero(rank < 5)
    top, confidence = _top_and_confidence(x)
    out[where["confidence"]] = confidence.sum(dtype=np.float64)
    for name, counts in _histograms(confidence, correct, mask_size, y, classes).items():
        out[where[name]] = counts
    if am is not None:
        out[where["argmax_mismatch"]] = _argmax_mismatches(x, am, rows, top)
    return out


def _counted_views(
    logits: np.ndarray, labels: np.ndarray, argmax: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows [V, C], labels [V] and stored argmax [V] (or None) of the views whose label is not -1."""
    classes = logits.shape[-1]
    x = logits.reshape(-1, classes)
    y = labels.reshape(-1).astype(np.intp, copy=False)
    am = None if argmax is None else argmax.reshape(-1)
    return _keep(y >= 0, x, y, am)


def _finite_views(
    x: np.ndarray, y: np.ndarray, am: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """The views without a NaN or inf logit, and how many were left out."""
    finite = np.isfinite(x).all(1)
    return (*_keep(finite, x, y, am), np.count_nonzero(~finite))


def _keep(
    rows: np.ndarray, x: np.ndarray, y: np.ndarray, am: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The views where `rows` is True (no copy when all are)."""
    if rows.all():
        return x, y, am
    return x[rows], y[rows], None if am is None else am[rows]


def _label_rank_and_mask_size(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per view: how many classes argmax order puts before y, and the MCD mask size |{c : t_c >= t_y}|."""
    classes = x.shape[1]
    t_y = x[rows, y][:, None]
    above = np.count_nonzero(x > t_y, axis=1)
    ties = x == t_y
    tied = np.count_nonzero(ties, axis=1)  # includes y itself
    mask_size = above + tied
    rank = above.copy()
    if (tied > 1).any():  # ties before y rank above it (argmax takes the first index); rare
        rows_tied = np.flatnonzero(tied > 1)
        rank[rows_tied] += np.count_nonzero(ties[rows_tied] & (np.arange(classes) < y[rows_tied, None]), axis=1)
    return rank, mask_size


def _top_and_confidence(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per view: the top logit and the confidence, the float32 softmax maximum at T = 1."""
    top = x.max(1)
    confidence = 1.0 / np.exp(x - top[:, None]).sum(1, dtype=np.float32)
    return top, confidence


def _histograms(
    confidence: np.ndarray, correct: np.ndarray, mask_size: np.ndarray, y: np.ndarray, classes: int,
) -> dict[str, np.ndarray]:
    """The per-bin (ECE), per-mask-size and per-class counts, by their names in `stat_slices`."""
    # bin b holds the confidences in (b/15, (b+1)/15], as the module docstring defines
    bins = np.clip(np.ceil(confidence.astype(np.float64) * ECE_BINS).astype(np.intp) - 1, 0, ECE_BINS - 1)
    return {
        "bin_views": np.bincount(bins, minlength=ECE_BINS),
        "bin_confidence": np.bincount(bins, weights=confidence, minlength=ECE_BINS),
        "bin_correct": np.bincount(bins, weights=correct, minlength=ECE_BINS),
        "mask_size": np.bincount(mask_size - 1, minlength=classes),
        "class_views": np.bincount(y, minlength=classes),
        "class_errors": np.bincount(y, weights=~correct, minlength=classes),
    }


def _argmax_mismatches(x: np.ndarray, am: np.ndarray, rows: np.ndarray, top: np.ndarray) -> int:
    """Views whose stored argmax is out of range or not a maximum of the stored row."""
    # The stored argmax came from the teacher's output before any fp16 cast: it is
    # consistent when its logit is a maximum of the stored row (rounding may tie).
    classes = x.shape[1]
    am = am.astype(np.intp)
    valid = (am >= 0) & (am < classes)
    picked = x[rows, np.where(valid, am, 0)]
    return np.count_nonzero(~valid | (picked < top))


def summarize(partial: np.ndarray, classes: int) -> dict[str, Any]:
    """Turn summed partials into the report's numbers (JSON-ready; None where no view counted)."""
    p = {name: partial[s] for name, s in stat_slices(classes).items()}
    n = int(p["views"][0])

    def pct(count: float) -> float | None:
        return 100.0 * float(count) / n if n else None

    bins_n = p["bin_views"]
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_acc = p["bin_correct"] / bins_n
        bin_conf = p["bin_confidence"] / bins_n
    ece = float(np.nansum(np.abs(bin_acc - bin_conf) * bins_n) / n) if n else None
    sizes = p["mask_size"]
    mask_mean = float((sizes * np.arange(1, classes + 1)).sum() / n) if n else None
    return {
        "views": n,
        "nonfinite_views": int(p["nonfinite"][0]),
        "top1_pct": pct(p["top1"][0]),
        "top5_pct": pct(p["top5"][0]),
        "wrong_pct": pct(n - p["top1"][0]),
        "mean_confidence": float(p["confidence"][0]) / n if n else None,
        "ece_pct": None if ece is None else 100.0 * ece,
        "reliability": [
            {"bin": b, "low": b / ECE_BINS, "high": (b + 1) / ECE_BINS, "views": int(bins_n[b]),
             "accuracy": _num(bin_acc[b]), "confidence": _num(bin_conf[b])}
            for b in range(ECE_BINS)
        ],
        "mask_size": {
            "counts": [int(c) for c in sizes],  # counts[k] = views whose mask has k + 1 classes
            "mean": mask_mean,
            "size1_pct": pct(sizes[0]),
            "max": int(np.flatnonzero(sizes).max()) + 1 if n else None,
        },
        "argmax_mismatches": int(p["argmax_mismatch"][0]),
    }


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# ---------------------------------------------------------------------------------------
# Reading chunks with dask
#
# A dask block is a run of whole stored chunks along the samples axis, about BLOCK_BYTES of
# stored logits: chunk-aligned (no chunk is read twice or by two tasks), and few enough
# blocks that dask's per-block cost (graph memory, scheduling: a few ms per block here)
# stays small next to reading and reducing 16 MiB (62.6k ImageNet chunks -> 15.7k blocks).
# `block_stats` runs on one stored chunk's rows at a time, so its float32 temporaries stay
# at a few times one chunk per thread.

BLOCK_BYTES = 16 << 20


def _chunk_keys(selection: tuple[slice, ...], chunks: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Keys of the stored chunks a chunk-aligned selection covers."""
    ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(selection, chunks)]
    return list(itertools.product(*ranges))


def _shape(selection: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in selection)


class _CheckedArray:
    """A zarr array as dask reads it: a chunk that fails its checksum raises a StoreError
    naming the array and the chunk; chunks of write units that are not done are never read
    (they may be mid-write) and stand in as the fill value. Otherwise it is what
    `dask.array.from_zarr` wraps: zarr's own reads of whole stored chunks.
    """

    def __init__(self, store_path: Path, array: zarr.Array, done: np.ndarray):
        self.store_path, self.array = store_path, array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.done = done.reshape(done.shape + (1,) * (array.ndim - done.ndim))  # over the chunk grid

    def __getitem__(self, selection: tuple[slice, ...]) -> np.ndarray:
        keys = _chunk_keys(selection, self.array.chunks)
        done = [bool(self.done[k]) for k in keys]
        if not any(done):
            return np.broadcast_to(np.asarray(self.array.fill_value, dtype=self.dtype), _shape(selection))
        if all(done):
            try:
                return self.array[selection]
            except ValueError:
                pass  # find and name the bad chunk below
        out = np.full(_shape(selection), self.array.fill_value, dtype=self.dtype)
        for key, finished in zip(keys, done):
            if finished:
                part = tuple(slice(k * c, min((k + 1) * c, n))
                             for k, c, n in zip(key, self.array.chunks, self.shape))
                local = tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part, selection))
                out[local] = self._read_chunk(key, part)
        return out

    def _read_chunk(self, key: tuple[int, ...], part: tuple[slice, ...]) -> np.ndarray:
        try:
            return self.array[part]
        except ValueError as err:
            name = self.array.path
            raise StoreError(
                f"{self.store_path}: {name} chunk {key} ({name}/{self.array.metadata.encode_chunk_key(key)}) is "
                f"corrupted ({err}); delete the store, or that chunk and its unit's done marker, and dump again"
            ) from None


class _ViewLabels:
    """[slots, samples] int64, lazily: the label of each view whose write unit is done, else -1.

    One dask input carries both the labels (broadcast over slots) and the done markers.
    """

    def __init__(self, labels: np.ndarray, done: np.ndarray, chunk_samples: int):
        self.labels, self.done, self.chunk_samples = labels, done, chunk_samples
        self.shape, self.dtype, self.ndim = (done.shape[0], len(labels)), np.dtype(np.int64), 2

    def __getitem__(self, selection: tuple[slice, ...]) -> np.ndarray:
        slots, samples = selection
        rows = np.arange(samples.start, samples.stop)
        unit_done = self.done[slots][:, rows // self.chunk_samples]
        return np.where(unit_done, self.labels[samples].astype(np.int64), -1)


def _dask(array: _CheckedArray | _ViewLabels, chunks: tuple[int, ...]) -> Any:
    import dask.array as da

    return da.from_array(array, chunks=chunks, name=False, asarray=True,
                         meta=np.empty((0,) * array.ndim, dtype=array.dtype))


def _block_chunks(array: zarr.Array) -> tuple[int, ...]:
    """Dask chunks for `array`: its stored chunks, grouped along axis -2 (samples) to ~BLOCK_BYTES."""
    chunks = list(array.chunks)
    stored = int(np.prod(chunks)) * array.dtype.itemsize
    chunks[-2] *= max(1, BLOCK_BYTES // max(stored, 1))
    return tuple(chunks)


def _read_small(store: LogitStore, name: str) -> np.ndarray:
    """A whole small array (labels, markers), with the store's one-line error on corruption."""
    try:
        return store.group[name][...]
    except KeyError:
        raise StoreError(f"{store.path}: no array {name!r}; not a complete rld logit store layout") from None
    except ValueError as err:
        raise StoreError(f"{store.path}: {name} is corrupted ({err})") from None


def _per_slot_partials(
    logits: Any, labels: Any, rows_per_pass: int, *, argmax: Any = None, views: Any = None, input_crc: Any = None,
) -> Any:
    """Dask array [slots, K (+ k)]: the partial vectors of every block, summed per slot.

    `logits` is [slots, samples, C] and `labels` [slots, samples] (-1 where the view's unit
    is not done), in the same blocks. One task per block reads that block of every per-view
    array (the stored argmax, view parameters and input crc too, so their checksums are
    verified in the same pass) and returns `block_stats` followed, when `views` is given,
    by the sums of the k view parameters over counted views.
    """
    import dask.array as da

    classes = logits.shape[-1]
    n_stats = stat_length(classes)
    length = n_stats + (views.shape[2] if views is not None else 0)
    args = [logits, "sjc", labels, "sj"]
    for extra, index in ((argmax, "sj"), (views, "sjp"), (input_crc, "sj")):
        if extra is not None:
            args += [extra, index]

    def per_block(block: list[np.ndarray], block_labels: np.ndarray, *checks: Any) -> np.ndarray:
        # Contracted axes (classes, view parameters) arrive as lists of their single block:
        # unwrapped rather than concatenated, which would copy every block.
        (block,) = block
        checks = tuple(c[0] if isinstance(c, list) else c for c in checks)
        out = np.zeros((1, 1, length))
        if not (block_labels >= 0).any():  # no unit of this block is done
            return out
        for a in range(0, block.shape[1], rows_per_pass):
            rows = slice(a, a + rows_per_pass)
            argmax_rows = checks[0][:, rows] if checks else None
            out[0, 0, :n_stats] += block_stats(block[:, rows], block_labels[:, rows], argmax_rows)
        if views is not None:
            out[0, 0, n_stats:] = checks[1][block_labels >= 0].sum(0, dtype=np.float64)
        return out

    blocks = da.blockwise(per_block, "sjz", *args, new_axes={"z": length}, adjust_chunks={"j": 1},
                          dtype=np.float64, meta=np.empty((0, 0, 0)))
    return blocks.sum(axis=1)


# ---------------------------------------------------------------------------------------
# The report


def inspect_store(
    path: str | os.PathLike, *, worst: int = WORST_CLASSES, scheduler: str = "threads",
) -> dict[str, Any]:
    """The full report of the store at `path` as a JSON-serialisable dict.

    Raises StoreError (one-line message) for a missing, foreign or corrupted store; an
    incomplete store is reported with `completeness.complete` False.
    """
    import dask

    store = _open_store(path)
    done, eval_done, labels, eval_labels = _read_done_and_labels(store)
    todo: dict[str, Any] = {"train": _train_partials(store, done, labels)}
    if store.layout.eval_samples:
        todo["eval"] = _test_partials(store, eval_done, eval_labels)
    results = dict(zip(todo, dask.compute(*todo.values(), scheduler=scheduler)))
    return _assemble_report(store, results, done, eval_done, worst)


def _open_store(path: str | os.PathLike) -> LogitStore:
    try:
        return LogitStore.open(path)
    except (KeyError, TypeError) as err:  # our format attribute, but no usable layout
        raise StoreError(f"{path}: store attributes lack a valid layout ({type(err).__name__} {err})") from None


def _read_done_and_labels(store: LogitStore) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Done markers (train, test) and labels (train, test), the labels checked against the class count."""
    lay = store.layout
    done = _read_small(store, "done").astype(bool)
    eval_done = _read_small(store, "eval/done").astype(bool)
    labels = _read_small(store, "labels")
    eval_labels = _read_small(store, "eval/labels")
    for name, lab in (("labels", labels), ("eval/labels", eval_labels)):
        if lab.size and (lab.min() < 0 or lab.max() >= lay.classes):
            raise StoreError(f"{store.path}: {name} outside 0..{lay.classes - 1}")
    return done, eval_done, labels, eval_labels


def _checked(store: LogitStore, name: str, grid_done: np.ndarray) -> tuple[zarr.Array, _CheckedArray]:
    """The zarr array `name` and its checksum-checked reader; a missing array is a one-line StoreError."""
    try:
        array = store.group[name]
    except KeyError:
        raise StoreError(f"{store.path}: no array {name!r}; not a complete rld logit store layout") from None
    return array, _CheckedArray(store.path, array, grid_done)


def _train_partials(store: LogitStore, done: np.ndarray, labels: np.ndarray) -> Any:
    """Dask array [slots, K + k] of the cached views' partials per slot (see `_per_slot_partials`)."""
    lay = store.layout
    z_logits, logits = _checked(store, "logits", done)
    if z_logits.chunks != (1, lay.chunk_samples, lay.classes):
        raise StoreError(f"{store.path}: logits chunks {z_logits.chunks} do not match the layout's write units")
    blocks = _block_chunks(z_logits)  # (1, whole chunks, C): every per-view array uses these blocks
    per_view = {name: _dask(_checked(store, name, done)[1], blocks[:2]) for name in ("argmax", "input_crc")}
    per_view["views"] = _dask(_checked(store, "views", done)[1], (*blocks[:2], lay.param_count))
    return _per_slot_partials(
        _dask(logits, blocks), _dask(_ViewLabels(labels, done, lay.chunk_samples), blocks[:2]), lay.chunk_samples,
        **per_view)


def _test_partials(store: LogitStore, eval_done: np.ndarray, eval_labels: np.ndarray) -> Any:
    """Dask array [1, K] of the test split's partials, as one slot."""
    lay = store.layout
    z_eval, eval_logits = _checked(store, "eval/logits", eval_done)
    eval_blocks = _block_chunks(z_eval)
    return _per_slot_partials(
        _dask(eval_logits, eval_blocks)[None],
        _dask(_ViewLabels(eval_labels, eval_done[None], lay.eval_chunk_samples), (1, eval_blocks[0])),
        lay.eval_chunk_samples)


def _assemble_report(
    store: LogitStore, results: dict[str, np.ndarray], done: np.ndarray, eval_done: np.ndarray, worst: int,
) -> dict[str, Any]:
    """The report from the computed partials ("train", and "eval" when the store has a test split)."""
    lay, group = store.layout, store.group
    n_stats = stat_length(lay.classes)
    per_slot, view_sums = results["train"][:, :n_stats], results["train"][:, n_stats:].sum(0)
    totals = per_slot.sum(0)
    where = stat_slices(lay.classes)
    class_views, class_errors = totals[where["class_views"]], totals[where["class_errors"]]
    views_done = _views_done(lay, done)
    params = (view_sums / views_done).tolist() if views_done else None
    prov = store.provenance
    return {
        "path": str(store.path),
        "store_id": store.attrs.get("store_id"),
        "format": store.attrs.get("format"),
        "array": _array_info(group["logits"]),
        "layout": lay.to_dict(),
        "disk": _disk_usage(store.path, views_done, lay.view_bytes),
        "completeness": _completeness(done, eval_done, bool(store.attrs.get("complete")), views_done),
        "provenance_summary": _provenance_summary(store),
        "cached_views": _cached_view_summary(totals, per_slot, lay.classes),
        "test_split": _test_split_summary(results.get("eval"), lay.classes),
        "view_param_means": params,
        "worst_classes": _worst_classes(class_views, class_errors, (prov.get("dataset") or {}).get("classes"), worst),
        "done_chunks_verified": True,  # every chunk read passed crc32c, or we raised
        "provenance": prov,
    }


def _cached_view_summary(totals: np.ndarray, per_slot: np.ndarray, classes: int) -> dict[str, Any]:
    cached = summarize(totals, classes)
    cached["per_slot_top1_pct"] = [summarize(row, classes)["top1_pct"] for row in per_slot]
    return cached


def _test_split_summary(partial: np.ndarray | None, classes: int) -> dict[str, Any] | None:
    if partial is None:
        return None
    test = summarize(partial[0], classes)
    test.pop("argmax_mismatches")  # the test split stores no argmax
    return test


def _views_done(lay: Layout, done: np.ndarray) -> int:
    """Views in the done train units (a slot's last chunk may be short)."""
    chunk_sizes = np.array([b - a for a, b in map(lay.chunk_range, range(lay.chunks))])
    return int((done * chunk_sizes).sum())


def _array_info(array: zarr.Array) -> dict[str, Any]:
    codecs = [c.to_dict()["name"] if hasattr(c, "to_dict") else type(c).__name__ for c in array.metadata.codecs]
    return {
        "shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks),
        "shards": None if array.shards is None else list(array.shards), "codecs": codecs,
        "chunk_bytes": int(np.prod(array.chunks)) * array.dtype.itemsize,
    }


def _disk_usage(path: Path, views_done: int, predicted: int) -> dict[str, Any]:
    """Bytes and files per array (one walk of the directory; no chunk is read)."""
    per_array: dict[str, int] = {}
    total = files = 0
    for root, _, names in os.walk(path):
        parts = Path(root).relative_to(path).parts
        depth = 2 if parts[:1] == ("eval",) else 1  # eval/logits, eval/labels, eval/done
        key = "/".join(parts[:depth]) if len(parts) >= depth else "(metadata)"
        for name in names:
            size = os.stat(os.path.join(root, name)).st_size
            per_array[key] = per_array.get(key, 0) + size
            total += size
            files += 1
    train_bytes = sum(per_array.get(k, 0) for k in ("logits", "views", "argmax", "input_crc"))
    return {
        "total_bytes": total, "files": files, "per_array": dict(sorted(per_array.items())),
        "bytes_per_view": train_bytes / views_done if views_done else None,
        "predicted_bytes_per_view": predicted,
    }


def _completeness(done: np.ndarray, eval_done: np.ndarray, marked: bool, views_done: int) -> dict[str, Any]:
    missing = int((~done).sum() + (~eval_done).sum())
    return {
        "complete": missing == 0,
        "marked_complete": marked,
        "train_units_done": int(done.sum()), "train_units_total": int(done.size),
        "eval_units_done": int(eval_done.sum()), "eval_units_total": int(eval_done.size),
        "missing_units": missing,
        "views_done": views_done,
        "slots": [{"slot": s, "done": int(row.sum()), "total": int(row.size)} for s, row in enumerate(done)],
    }


def _short(value: Any, n: int = 12) -> Any:
    return value[:n] if isinstance(value, str) else value


def _provenance_summary(store: LogitStore) -> dict[str, Any]:
    a = store.attrs
    teacher, data, test, views = (a.get(k) or {} for k in ("teacher", "dataset", "eval_dataset", "views"))
    return {
        "teacher": {"arch": teacher.get("arch"), "weights_sha256": _short(teacher.get("weights_sha256")),
                    "accuracy": teacher.get("accuracy"), "source": teacher.get("source")},
        "dataset": {k: data.get(k) for k in ("name", "split", "size", "num_classes", "subset")}
                   | {"fingerprint": _short(data.get("fingerprint"))},
        "eval_dataset": {k: test.get(k) for k in ("name", "split", "size")}
                        | {"fingerprint": _short(test.get("fingerprint"))},
        "views": views,
        "dtype": a.get("dtype"),
        "store_id": a.get("store_id"),
        "code_version": a.get("code_version"),
        "created": a.get("created"),
        "completed": a.get("completed"),
    }


def _worst_classes(views: np.ndarray, errors: np.ndarray, names: list[str] | None, k: int) -> list[dict[str, Any]]:
    """The k classes with the highest teacher error rate on the cached views (ties: more views first)."""
    seen = np.flatnonzero(views)
    rate = errors[seen] / views[seen]
    order = seen[np.lexsort((seen, -views[seen], -rate))]
    out = []
    for c in order[:k]:
        if errors[c] == 0:
            break
        name = names[c] if names and c < len(names) else str(c)
        out.append({"class": int(c), "name": name, "error_pct": 100.0 * errors[c] / views[c],
                    "errors": int(errors[c]), "views": int(views[c])})
    return out


# ---------------------------------------------------------------------------------------
# Text


def _bytes(n: float | None) -> str:
    return "-" if n is None else format_bytes(n)


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}%"


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _view_spec(views: dict[str, Any]) -> str:
    if not views:
        return "-"
    family = views.get("family") or {}
    fam = family.get("kind", "?") + ":" + ",".join(f"{k}={v}" for k, v in family.items() if k != "kind")
    count = views.get("count")
    return f"{views.get('policy')}{'' if count is None else f' x{count}'} of {fam}, seed {views.get('seed')}"


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text: a screenful or two, the numbers a user checks first."""
    cached = report["cached_views"]
    sections = (
        _identity_lines(report),
        _storage_lines(report),
        _teacher_table_lines(cached, report["test_split"] or {}),
        _mask_size_lines(cached),
        _reliability_lines(cached),
        _worst_class_lines(report["worst_classes"]),
    )
    return "\n".join(line for section in sections for line in section)


def _kv(key: str, value: str) -> str:
    return f"  {key:<16}{value}"


def _identity_lines(report: dict[str, Any]) -> list[str]:
    """Heading: whether the store is whole, and which teacher, data and views made it."""
    ps, comp, fmt = report["provenance_summary"], report["completeness"], report["format"]
    teacher, data, test_data = ps["teacher"], ps["dataset"], ps["eval_dataset"]
    subset = data["subset"] if data["subset"] is not None else "-"
    return [
        f"rld logit store {report['path']}",
        _kv("status", _status(comp, ps["completed"])),
        _kv("store id", f"{ps['store_id']}  (format {fmt.get('name')} v{fmt.get('version')})"),
        _kv("teacher", f"{teacher['arch']}  sha256 {teacher['weights_sha256']}  "
                       f"recorded {_recorded_accuracy(teacher.get('accuracy')) or '-'}"),
        _kv("dataset", f"{data['name']} {data['split']}, {data['size']} samples, {data['num_classes']} classes, "
                       f"subset {subset}, fingerprint {data['fingerprint']}"),
        _kv("test split", f"{test_data['name']} {test_data['split']}, {test_data['size']} samples, "
                          f"fingerprint {test_data['fingerprint']}"),
        _kv("views", _view_spec(ps["views"])),
        _kv("code version", str(ps["code_version"])),
        _kv("created", str(ps["created"])),
    ]


def _status(comp: dict[str, Any], completed: str | None) -> str:
    if comp["complete"]:
        return (f"complete (completed {completed})" if comp["marked_complete"]
                else "complete: every unit done, not yet marked complete by a dump")
    return (f"INCOMPLETE: {comp['missing_units']} of {comp['train_units_total'] + comp['eval_units_total']} "
            "write units missing; statistics cover done units only")


def _recorded_accuracy(accuracy: Any) -> str:
    """The teacher's accuracy as its provenance records it: a dict of percentages, or any value."""
    accuracy = accuracy or {}
    if isinstance(accuracy, dict):
        return ", ".join(f"{k} {v:.2f}%" for k, v in accuracy.items() if isinstance(v, (int, float)))
    return str(accuracy)


def _storage_lines(report: dict[str, Any]) -> list[str]:
    """Array layout, bytes on disk, which write units are done, and the view parameters."""
    arr, disk = report["array"], report["disk"]
    shards = f", shards {arr['shards']}" if arr["shards"] else ""
    largest = sorted(disk["per_array"].items(), key=lambda item: -item[1])
    largest_shown = ", ".join(f"{k} {_bytes(v)}" for k, v in largest[:5]) + (", ..." if len(largest) > 5 else "")
    lines = [
        "",
        "storage",
        _kv("logits", f"{arr['shape']} {arr['dtype']}, chunks {arr['chunks']} ({_bytes(arr['chunk_bytes'])}), "
                      f"codecs {'+'.join(arr['codecs'])}" + shards),
        _kv("on disk", f"{_bytes(disk['total_bytes'])} in {disk['files']} files; "
                       f"{_f(disk['bytes_per_view'], 1)} B per cached view "
                       f"(predicted {disk['predicted_bytes_per_view']})"),
        _kv("largest arrays", largest_shown),
        *_unit_lines(report["completeness"]),
        _kv("checksums", "every done chunk read and passed crc32c"),
    ]
    if report["view_param_means"]:
        lines.append(_kv("view params", "means " + " ".join(f"{v:.3g}" for v in report["view_param_means"])))
    return lines


def _unit_lines(comp: dict[str, Any]) -> list[str]:
    """Done write units, train then test, and the first slots still missing some."""
    slots = comp["slots"]
    partial = [s for s in slots if s["done"] < s["total"]]
    chunks_per_slot = slots[0]["total"] if slots else 0
    lines = [_kv("train units", f"{comp['train_units_done']}/{comp['train_units_total']} done "
                                f"({len(slots)} slots x {chunks_per_slot} chunks, {comp['views_done']} views)")]
    if partial:
        shown = ", ".join(f"{s['slot']} ({s['done']}/{s['total']})" for s in partial[:8])
        lines.append(_kv("unfinished", f"{len(partial)} slots: {shown}{', ...' if len(partial) > 8 else ''}"))
    lines.append(_kv("test units", f"{comp['eval_units_done']}/{comp['eval_units_total']} done"))
    return lines


def _teacher_table_lines(cached: dict[str, Any], test: dict[str, Any]) -> list[str]:
    """The teacher's numbers on the cached views and on the test split, side by side, then the sanity checks."""
    rows = [
        ("views", lambda r: str(r.get("views", "-"))),
        ("top-1", lambda r: _pct(r.get("top1_pct"))),
        ("top-5", lambda r: _pct(r.get("top5_pct"))),
        ("wrong", lambda r: _pct(r.get("wrong_pct"))),
        ("mean confidence", lambda r: _f(r.get("mean_confidence"))),
        ("ECE (15 bins)", lambda r: _pct(r.get("ece_pct"))),
        ("MCD mask mean", lambda r: _f((r.get("mask_size") or {}).get("mean"))),
        ("mask size 1", lambda r: _pct((r.get("mask_size") or {}).get("size1_pct"))),
    ]
    lines = ["", f"  {'teacher':<16}{'cached views':>14}{'test split':>14}"]
    lines += [f"  {name:<16}{get(cached):>14}{get(test) if test else '-':>14}" for name, get in rows]
    per_slot = [v for v in cached["per_slot_top1_pct"] if v is not None]
    if len(per_slot) > 1:
        lines.append(_kv("per-slot top-1", f"min {min(per_slot):.2f}%  max {max(per_slot):.2f}%"))
    if cached["nonfinite_views"] or cached["argmax_mismatches"]:
        lines.append(_kv("WARNING", f"{cached['nonfinite_views']} views with non-finite logits, "
                                    f"{cached['argmax_mismatches']} views whose stored argmax is not their top logit"))
    else:
        lines.append(_kv("checks", "all logits finite; stored argmax agrees with every view"))
    return lines


def _mask_size_lines(cached: dict[str, Any]) -> list[str]:
    """How many views have an MCD mask of each size (grouped rows past 5); nothing when no view counted."""
    if not cached["views"]:
        return []
    lines = ["", "MCD mask size on cached views (classes c with t_c >= t_y)",
             f"  {'size':>8}{'views':>12}{'share':>10}"]
    for label, count in _size_rows(cached["mask_size"]["counts"]):
        lines.append(f"  {label:>8}{count:>12}{_pct(100.0 * count / cached['views']):>10}")
    return lines


def _reliability_lines(cached: dict[str, Any]) -> list[str]:
    """Accuracy against mean confidence per non-empty ECE bin; nothing when no view counted."""
    if not cached["views"]:
        return []
    lines = ["", "reliability on cached views (non-empty bins)",
             f"  {'confidence':>12}{'views':>10}{'accuracy':>10}{'mean conf':>11}"]
    for b in cached["reliability"]:
        if b["views"]:
            lines.append(f"  {b['low']:.3f}-{b['high']:.3f} {b['views']:>9}"
                         f"{_f(b['accuracy']):>10}{_f(b['confidence']):>11}")
    return lines


def _worst_class_lines(worst: list[dict[str, Any]]) -> list[str]:
    """The classes with the highest teacher error rate; nothing when no class has an error."""
    if not worst:
        return []
    width = max(5, *(len(w["name"]) for w in worst))
    lines = ["", "classes the teacher gets wrong most (cached views)",
             f"  {'class':>6}  {'name':<{width}}{'error':>9}{'wrong':>9}{'views':>9}"]
    for w in worst:
        lines.append(f"  {w['class']:>6}  {w['name']:<{width}}{_pct(w['error_pct'], 1):>9}"
                     f"{w['errors']:>9}{w['views']:>9}")
    return lines


def _size_rows(counts: list[int]) -> list[tuple[str, int]]:
    """Sizes 1-5 one by one, then 6-10, 11-20, 21-50, 51-100, ... up to the last non-empty row."""
    rows = [(str(k + 1), counts[k]) for k in range(min(5, len(counts)))]
    lo, step = 6, 0
    while lo <= len(counts):
        hi = min((10, 20, 50)[step % 3] * 10 ** (step // 3), len(counts))
        rows.append((f"{lo}-{hi}" if hi > lo else str(lo), sum(counts[lo - 1:hi])))
        lo, step = hi + 1, step + 1
    last = max((i for i, (_, c) in enumerate(rows) if c), default=0)
    return rows[: max(last + 1, 1)]
