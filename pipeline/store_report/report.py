"""The report of a store: completeness, storage, provenance and the teacher on its views."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.ensemble import is_ensemble
from pipeline.store import Layout, LogitStore, StoreError
from pipeline.store_report.ensemble import ensemble_summary
from pipeline.store_report.reading import CheckedArray, ViewLabels, as_dask, block_chunks, per_slot_partials, read_small
from pipeline.store_report.stats import WORST_CLASSES, stat_slices, stat_length, summarize

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
    report = _assemble_report(store, results, done, eval_done, worst)
    if is_ensemble(store):
        report["ensemble"] = ensemble_summary(store)
    return report


def _open_store(path: str | os.PathLike) -> LogitStore:
    try:
        return LogitStore.open(path)
    except (KeyError, TypeError) as err:  # our format attribute, but no usable layout
        raise StoreError(f"{path}: store attributes lack a valid layout ({type(err).__name__} {err})") from None


def _read_done_and_labels(store: LogitStore) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Done markers (train, test) and labels (train, test), the labels checked against the class count."""
    lay = store.layout
    done = read_small(store, "done").astype(bool)
    eval_done = read_small(store, "eval/done").astype(bool)
    labels = read_small(store, "labels")
    eval_labels = read_small(store, "eval/labels")
    for name, lab in (("labels", labels), ("eval/labels", eval_labels)):
        if lab.size and (lab.min() < 0 or lab.max() >= lay.classes):
            raise StoreError(f"{store.path}: {name} outside 0..{lay.classes - 1}")
    return done, eval_done, labels, eval_labels


def _checked(store: LogitStore, name: str, grid_done: np.ndarray) -> tuple[zarr.Array, CheckedArray]:
    """The zarr array `name` and its checksum-checked reader; a missing array is a one-line StoreError."""
    try:
        array = store.group[name]
    except KeyError:
        raise StoreError(f"{store.path}: no array {name!r}; not a complete rld logit store layout") from None
    return array, CheckedArray(store.path, array, grid_done)


def _train_partials(store: LogitStore, done: np.ndarray, labels: np.ndarray) -> Any:
    """Dask array [slots, K + k] of the cached views' partials per slot (see `per_slot_partials`)."""
    lay = store.layout
    z_logits, logits = _checked(store, "logits", done)
    if z_logits.chunks != (1, lay.chunk_samples, lay.classes):
        raise StoreError(f"{store.path}: logits chunks {z_logits.chunks} do not match the layout's write units")
    blocks = block_chunks(z_logits)  # (1, whole chunks, C): every per-view array uses these blocks
    per_view = {name: as_dask(_checked(store, name, done)[1], blocks[:2]) for name in ("argmax", "input_crc")}
    per_view["views"] = as_dask(_checked(store, "views", done)[1], (*blocks[:2], lay.param_count))
    return per_slot_partials(
        as_dask(logits, blocks), as_dask(ViewLabels(labels, done, lay.chunk_samples), blocks[:2]), lay.chunk_samples,
        **per_view)


def _test_partials(store: LogitStore, eval_done: np.ndarray, eval_labels: np.ndarray) -> Any:
    """Dask array [1, K] of the test split's partials, as one slot."""
    lay = store.layout
    z_eval, eval_logits = _checked(store, "eval/logits", eval_done)
    eval_blocks = block_chunks(z_eval)
    return per_slot_partials(
        as_dask(eval_logits, eval_blocks)[None],
        as_dask(ViewLabels(eval_labels, eval_done[None], lay.eval_chunk_samples), (1, eval_blocks[0])),
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
