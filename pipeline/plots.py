"""Every figure the pipeline draws, in one place (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> None:
    """Loss terms, accuracies and learning rate per epoch of one run."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    for key in history[0] if history else []:
        if key.startswith("loss_"):
            ax_loss.plot(epochs, [row[key] for row in history], label=key[5:])
    ax_loss.set(xlabel="epoch", ylabel="loss (train mean)", yscale="log")
    ax_loss.legend()
    for key, label in (("train_top1", "train top-1"), ("val_top1", "val top-1"), ("test_top1", "test top-1"),
                       ("test_top5", "test top-5"), ("teacher_agreement", "agreement with teacher")):
        points = [(row["epoch"], row[key]) for row in history if key in row]
        if len(points) > 1:  # with a validation split the test split is only measured at the end
            ax_acc.plot(*zip(*points), label=label)
        elif points:
            ax_acc.plot(*points[0], "o", label=label)
    ax_acc.set(xlabel="epoch", ylabel="%")
    ax_acc.legend()
    ax_lr.plot(epochs, [row["lr"] for row in history])
    ax_lr.set(xlabel="epoch", ylabel="learning rate", yscale="log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_store_report(report: dict[str, Any], path: Path) -> None:
    """One PNG of a logit store's teacher (from `pipeline.store_report.inspect_store`): confidence
    histogram, reliability diagram and MCD mask-size histogram on the cached views."""
    cached = report["cached_views"]
    bins = cached["reliability"]
    width = bins[0]["high"] - bins[0]["low"]
    lows = [b["low"] for b in bins]
    fig, (ax_conf, ax_rel, ax_mask) = plt.subplots(1, 3, figsize=(15, 4.2))

    ax_conf.bar(lows, [b["views"] for b in bins], width=width, align="edge", edgecolor="black")
    mean = cached["mean_confidence"]
    if mean is not None:
        ax_conf.axvline(mean, color="tab:red", linestyle="--", label=f"mean {mean:.3f}")
        ax_conf.legend()
    ax_conf.set(xlabel="confidence (max softmax, T=1)", ylabel="views", xlim=(0, 1), title="confidence")

    shown = [b for b in bins if b["views"]]
    ax_rel.bar([b["low"] for b in shown], [b["accuracy"] for b in shown], width=width, align="edge",
               edgecolor="black", label="accuracy")
    ax_rel.plot([b["low"] + width / 2 for b in shown], [b["confidence"] for b in shown], "o", color="tab:red",
                label="mean confidence")
    ax_rel.plot([0, 1], [0, 1], color="gray", linestyle=":")
    ece = cached["ece_pct"]
    ax_rel.set(xlabel="confidence bin", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
               title="reliability" + ("" if ece is None else f" (ECE {ece:.2f}%)"))
    ax_rel.legend(loc="upper left")

    counts = cached["mask_size"]["counts"]
    last = max((i for i, c in enumerate(counts) if c), default=0) + 1
    ax_mask.bar(range(1, last + 1), counts[:last], width=1.0 if last > 50 else 0.8,
                edgecolor="black" if last <= 50 else None)
    ax_mask.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_mask.set(xlabel="MCD mask size |{c : t_c >= t_y}|", ylabel="views", title="mask size (1 = teacher right)")
    if last > 20:
        ax_mask.set_yscale("log")

    fig.suptitle(f"{report['path']}  ({cached['views']} cached views"
                 + ("" if report["completeness"]["complete"] else ", INCOMPLETE") + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_student_comparison(runs: Sequence[dict[str, Any]], groups: Sequence[dict[str, Any]], path: Path) -> None:
    """Top-1 per epoch on the split the students were monitored on (validation when they have
    one, else test): one line per group of seeds, their mean, with a band from the lowest to
    the highest seed; loss options not chosen on validation drawn faint; each teacher's test
    accuracy dashed. 36 runs make 12 readable lines rather than 36 tangled ones."""
    by_folder = {r["folder"]: r for r in runs}
    several_archs = len({g["arch"] for g in groups}) > 1  # the labels name the teacher where several distil
    fig, ax = plt.subplots(figsize=(8, 5))
    teachers: dict[str, float] = {}
    splits = set()
    for g in groups:
        members = [by_folder[folder] for folder in g["members"]]
        key = "val_top1" if "val_top1" in members[0]["history"][0] else "test_top1"
        splits.add(key[:-5])
        curves = [[(r["epoch"], r[key]) for r in m["history"] if key in r] for m in members]
        length = min(len(c) for c in curves)
        epochs = [e for e, _ in curves[0][:length]]
        values = np.array([[v for _, v in c[:length]] for c in curves])
        label = (f"{g['arch']}: " if several_archs else "") + g["label"]
        faint = g["passed_over"]
        (line,) = ax.plot(epochs, values.mean(0), alpha=0.35 if faint else 1.0, linewidth=1 if faint else 1.8,
                          label=label + (f" ({len(members)} seeds)" if len(members) > 1 else ""))
        if len(members) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.06 if faint else 0.15)
        top1 = members[0].get("teacher_test", {}).get("top1")
        if top1 is not None:
            teachers[g["teacher"]] = top1
    for name, top1 in teachers.items():
        ax.axhline(top1, linestyle="--", color="gray")
        ax.annotate(f"teacher {name} (test): {top1:.2f}", (0, top1), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(4, 4), color="gray")
    ax.set(xlabel="epoch", ylabel=" / ".join(sorted(splits)) + " top-1 (%)",
           title="Students (faint: options not chosen on validation)" if any(g["passed_over"] for g in groups) else "Students")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small" if len(groups) <= 12 else "xx-small", ncol=1 if len(groups) <= 12 else 2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_paired_differences(groups: Sequence[dict[str, Any]], path: Path) -> None:
    """Test top-1 minus the same-seed CE student's, per seed (dots) and mean ± std (bar), per group."""
    shown = [g for g in groups if g["pairs"]]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(shown) + 2), 4.5))
    for i, g in enumerate(shown):
        ax.bar(i, g["delta_vs_ce"], yerr=g["delta_vs_ce_std"], capsize=4, alpha=0.35 if g["passed_over"] else 0.7,
               color="tab:blue")
        ax.plot([i] * len(g["deltas"]), g["deltas"], "o", color="black", markersize=4)
    ax.axhline(0, color="gray", linewidth=1)
    ax.set_xticks(range(len(shown)), [g["label"].replace(" ", "\n").replace("<-\n", "<- ") for g in shown],
                  fontsize="small")
    passed_over = any(g["passed_over"] for g in shown)
    ax.set(ylabel="test top-1 minus CE of the same seed (points)",
           title=(f"Paired difference to CE (dots: seeds{'; faint: options not chosen on validation' if passed_over else ''})"
                  if shown else "no CE pairs"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
