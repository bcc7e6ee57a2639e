"""The baselines figure of docs/results.md: each student's test top-1 minus the CE student's of
its seed, against its rank correlation with the teacher over the non-target classes.

    python tools/rank_corr_figure.py students/fashion-mnist-10k docs/fashion-mnist-baselines-rank-corr.png \
        --ce 1=90.53 --ce 2=90.43

Students are the workflow's folders named ARCH-LOSS[-8k][-OPTIONVALUE]-sSEED (the grid names
of config/fashion-mnist-baselines.yaml); `-8k` marks the weaker teacher's. The CE student of
a seed is read from its folder, or given with --ce SEED=TOP1 where it is not there. Students
more than --floor points below CE (runs that stalled) would squash the others into a corner:
they are listed in their panel with their values instead of plotted.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAME = re.compile(r"^[^-]+-([a-z]+)(-8k)?(?:-([a-z_]+?)([\d.]+))?-s(\d+)$")
LABELS = {"kd": "KD", "dkd": "DKD", "rld": "RLD", "mg": "RLD M_g", "la": "LA", "rc": "RC", "lr": "LR", "mlkd": "MLKD"}
PANELS = ((True, "weaker teacher (resnet20-8k)"), (False, "demo's teacher (resnet20)"))


def read_students(folder: Path) -> dict[str, tuple[re.Match, dict]]:
    """The finished students of a folder, by name: the match of NAME and the summary's final metrics."""
    finals = {}
    for student in sorted(folder.iterdir()):
        match = NAME.match(student.name)
        if match and (student / "summary.json").exists():
            finals[student.name] = (match, json.loads((student / "summary.json").read_text())["final"])
    return finals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("students", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--ce", action="append", default=[], metavar="SEED=TOP1")
    parser.add_argument("--floor", type=float, default=-10.0,
                        help="points below CE under which a student is listed, not plotted")
    args = parser.parse_args()
    finals = read_students(args.students)
    ce = {int(m[5]): f["top1"] for m, f in finals.values() if m[1] == "ce"}
    ce.update({int(k): float(v) for k, v in (item.split("=") for item in args.ce)})

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (weak, title) in zip(axes, PANELS):
        off_chart = []
        for match, final in finals.values():
            loss, seed = match[1], int(match[5])
            if loss == "ce" or bool(match[2]) != weak or seed not in ce:
                continue
            x, y = final["teacher_rank_corr"], final["top1"] - ce[seed]
            label = f"{LABELS[loss]}{' ' + match[4] if match[3] else ''} s{seed}"
            if y < args.floor:
                off_chart.append(f"{label}: {y:+.2f}, rank corr {x:.3f}")
                print(f"below the chart, {title}: {off_chart[-1]}")
                continue
            ax.scatter(x, y, color=f"C{list(LABELS).index(loss)}")
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if off_chart:
            # bottom left: the corner students rarely reach (losing much while keeping little of the ranking)
            ax.text(0.02, 0.02, "below the chart:\n" + "\n".join(sorted(off_chart)), transform=ax.transAxes,
                    fontsize=7, va="bottom")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("rank correlation with the teacher over non-target classes")
    axes[0].set_ylabel("test top-1 minus CE of the same seed (points)")
    fig.suptitle("One point per student; the labels give the method, its grid value and the seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
