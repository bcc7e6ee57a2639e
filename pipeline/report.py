"""Compare finished students: one table (Markdown + CSV) and one accuracy plot.

Runs that differ only in their seed form a group, reported as mean ± std.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any, Sequence

COLUMNS = ("name", "teacher", "teacher_top1", "arch", "loss", "options", "seed", "epochs", "final_top1",
           "final_top5", "best_top1", "best_epoch", "teacher_agreement", "images_per_s")


def load_run(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{folder}: no summary.json (the student has not finished)")
    summary = json.loads(summary_path.read_text())
    summary["history"] = json.loads((folder / "metrics.json").read_text())
    summary["folder"] = str(folder)
    return summary


def row(run: dict[str, Any]) -> dict[str, Any]:
    """The table row of one run."""
    teacher = run["signal"].get("teacher") or {}
    defaults_only = {k: v for k, v in run["loss_options"].items() if k != "logit_stand" or v}
    return {
        "name": run["name"],
        "teacher": teacher.get("arch", "-"),
        "teacher_top1": run.get("teacher_test", {}).get("top1"),
        "arch": run["arch"],
        "loss": run["loss"],
        "options": " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in defaults_only.items()),
        "seed": run["seed"],
        "epochs": run["epochs"],
        "final_top1": run["final"]["top1"],
        "final_top5": run["final"]["top5"],
        "best_top1": run["best"]["top1"],
        "best_epoch": run["best"]["epoch"],
        "teacher_agreement": run["final"].get("teacher_agreement"),
        "images_per_s": run["images_per_s"],
    }


def group_key(r: dict[str, Any]) -> tuple:
    return tuple(r[c] for c in ("teacher", "arch", "loss", "options", "epochs"))


def groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std of the accuracies over the seeds of otherwise identical runs."""
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        buckets.setdefault(group_key(r), []).append(r)
    out = []
    for members in buckets.values():
        g = {c: members[0][c] for c in ("teacher", "teacher_top1", "arch", "loss", "options", "epochs")}
        g["runs"] = len(members)
        g["seeds"] = ",".join(str(m["seed"]) for m in members)
        for metric in ("final_top1", "final_top5", "best_top1", "teacher_agreement"):
            values = [m[metric] for m in members if m[metric] is not None]
            g[metric] = statistics.fmean(values) if values else None
            g[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(g)
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: Sequence[dict[str, Any]], grouped: Sequence[dict[str, Any]]) -> str:
    lines = ["# Students", "", "Test accuracy (%) on the un-augmented test split; agreement = % of test images where "
             "the student's top-1 equals the teacher's.", ""]
    lines.append("| student | teacher (top-1) | arch | loss | options | seed | epochs | final top-1 | final top-5 | best top-1 (epoch) | agreement | img/s |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['teacher']} ({_fmt(r['teacher_top1'])}) | {r['arch']} | {r['loss']} | {r['options']} | "
            f"{r['seed']} | {r['epochs']} | {_fmt(r['final_top1'])} | {_fmt(r['final_top5'])} | "
            f"{_fmt(r['best_top1'])} ({r['best_epoch']}) | {_fmt(r['teacher_agreement'])} | {_fmt(r['images_per_s'], 0)} |"
        )
    if any(g["runs"] > 1 for g in grouped):
        lines += ["", "## Mean ± std over seeds", "",
                  "| teacher | arch | loss | options | runs (seeds) | final top-1 | best top-1 | agreement |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in grouped:
            lines.append(
                f"| {g['teacher']} | {g['arch']} | {g['loss']} | {g['options']} | {g['runs']} ({g['seeds']}) | "
                f"{_fmt(g['final_top1'])} ± {_fmt(g['final_top1_std'])} | {_fmt(g['best_top1'])} ± {_fmt(g['best_top1_std'])} | "
                f"{_fmt(g['teacher_agreement'])} ± {_fmt(g['teacher_agreement_std'])} |"
            )
    return "\n".join(lines) + "\n"


def write_report(student_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """reports/summary.md, summary.csv (one row per student) and accuracy.png."""
    from pipeline.plots import plot_student_comparison

    runs = [load_run(d) for d in student_dirs]
    if not runs:
        raise ValueError("no students to report")
    rows = sorted((row(r) for r in runs), key=lambda r: (r["teacher"], r["arch"], r["loss"], r["seed"], r["name"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "summary.md", "csv": out / "summary.csv", "plot": out / "accuracy.png"}
    paths["markdown"].write_text(markdown(rows, groups(rows)))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_student_comparison(runs, paths["plot"])
    return paths
