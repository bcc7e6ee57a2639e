"""An ensemble store's members beside it: each one's top-1 on the cached views and the test
split, and how often the members agree.

It reads the stored argmax of every cached view (4 bytes a view) and the test logits of the
ensemble and of each member it finds at the recorded path, one slot at a time. A member that
moved, changed (another store id) or is incomplete is reported as such and left out.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.ensemble import member_paths
from pipeline.store import LogitStore, StoreError


def ensemble_summary(store: LogitStore) -> dict[str, Any]:
    """The "ensemble" section of `inspect_store`'s report (only done units of `store` count)."""
    record = store.attrs["teacher"]["ensemble"]
    members = [_member(entry, path) for entry, path in zip(record["members"], member_paths(store))]
    found = [m for m in members if m["problem"] is None]
    sources = [store] + [m.pop("_store") for m in found]
    names = ["ensemble"] + [m["name"] for m in found]
    cached, test = _cached_counts(store, sources), _test_counts(sources)
    for m in members:
        m.pop("_store", None)
    for i, m in enumerate(found, start=1):
        m["cached_views"], m["test_split"] = _shares(cached, i), _shares(test, i)
    return {
        "space": record["space"], "weights": record["weights"], "members": members,
        "cached_views": _shares(cached, 0), "test_split": _shares(test, 0),
        "agreement": _agreement(names, cached, test),
    }


def _member(entry: dict[str, Any], path: Path) -> dict[str, Any]:
    teacher = entry.get("teacher") or {}
    name = Path(teacher["file"]).stem if teacher.get("file") else teacher.get("arch", "?")
    out = {"name": name, "store": entry["store"], "store_id": entry["store_id"], "teacher": teacher, "problem": None}
    try:
        member = LogitStore.open(path)
    except StoreError:
        out["problem"] = f"not found at {path}"
        return out
    if member.id != entry["store_id"]:
        out["problem"] = f"{path} is now another store (id {member.id})"
    elif not member.complete:
        out["problem"] = f"{path} is incomplete"
    else:
        out["_store"] = member
    return out


def _cached_counts(store: LogitStore, sources: list[LogitStore]) -> dict[str, Any]:
    """Views counted, right per source, and per pair of sources the views where they agree."""
    done, _ = store.done_mask()
    labels = store.labels()
    lay = store.layout
    counts = _tally(np.zeros((len(sources), 0), np.int64), labels[:0])
    for slot in range(lay.slots):
        rows = np.zeros(lay.samples, bool)
        for chunk in np.flatnonzero(done[slot]):
            rows[slice(*lay.chunk_range(int(chunk)))] = True
        if rows.any():
            top = np.stack([s.read_slot("argmax", slot)[rows] for s in sources])
            counts = {key: counts[key] + value for key, value in _tally(top, labels[rows]).items()}
    return counts


def _test_counts(sources: list[LogitStore]) -> dict[str, Any]:
    logits, labels = zip(*(s.eval_logits() for s in sources))
    return _tally(np.stack([lg.argmax(1) for lg in logits]), labels[0])


def _tally(top: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Counts over views of the sources' top-1 [sources, views] (the ensemble first, then its
    members): views, right per source, agreeing views per pair, views where all members agree."""
    return {"views": top.shape[1], "right": (top == labels).sum(1), "agree": (top[:, None] == top[None]).sum(-1),
            "all_members": int((top[1:] == top[1:2]).all(0).sum()) if len(top) > 1 else 0}


def _pct(count: float, total: int) -> float | None:
    return 100.0 * float(count) / total if total else None


def _shares(counts: dict[str, Any], i: int) -> dict[str, Any]:
    top1 = _pct(counts["right"][i], counts["views"])
    return {"views": counts["views"], "top1_pct": top1, "wrong_pct": None if top1 is None else 100.0 - top1}


def _agreement(names: list[str], cached: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    """Top-1 agreement of every pair (members, and the ensemble with each), and of all members at once."""
    pairs = [{"a": names[i], "b": names[j],
              "cached_views_pct": _pct(cached["agree"][i, j], cached["views"]),
              "test_split_pct": _pct(test["agree"][i, j], test["views"])}
             for i, j in combinations(range(len(names)), 2)]
    return {"pairs": pairs, "members_found": len(names) - 1,
            "all_members_cached_views_pct": _pct(cached["all_members"], cached["views"]),
            "all_members_test_split_pct": _pct(test["all_members"], test["views"])}
