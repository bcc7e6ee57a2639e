"""Per-chunk partial statistics of cached logits: the one place where logits are looked at."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ECE_BINS = 15
WORST_CLASSES = 10
_SCALARS = ("views", "nonfinite", "top1", "top5", "argmax_mismatch", "confidence")


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
