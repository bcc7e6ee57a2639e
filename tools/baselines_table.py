"""The baselines tables of docs/results.md: per teacher, method and setting, the students' test
top-1, their paired differences to CE and to RLD of the same seed, agreement with the teacher
and rank correlation, with the setting validation picks.

    python tools/baselines_table.py students/fashion-mnist-10k \
        --ce 0=90.20 --ce 1=90.53 --ce 2=90.43 \
        --rld 0=91.31 --rld 1=91.12 --rld 2=91.25 --rld-8k 0=88.68 --rld-8k 1=88.77 --rld-8k 2=88.70

Students are named as in tools/rank_corr_figure.py. CE and RLD students of a seed are read
from their folders, or given with --ce / --rld / --rld-8k SEED=TOP1 (section 5's) where they
are not there. A method's setting is chosen on validation at seed 0, the one seed every grid
value has: the best validation top-1 (ties: the first in the grid's order).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from rank_corr_figure import LABELS, read_students

TEACHERS = ((True, "From resnet20-8k"), (False, "From resnet20, the demo's"))


def parse(items: list[str]) -> dict[int, float]:
    return {int(k): float(v) for k, v in (item.split("=") for item in items)}


def cell(values: list[float], digits: int = 2, signed: bool = False) -> str:
    if not values:
        return ""
    sign = "+" if signed else ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("students", type=Path)
    parser.add_argument("--ce", action="append", default=[], metavar="SEED=TOP1")
    parser.add_argument("--rld", action="append", default=[], metavar="SEED=TOP1", help="RLD from the demo's teacher")
    parser.add_argument("--rld-8k", action="append", default=[], metavar="SEED=TOP1", help="RLD from resnet20-8k")
    args = parser.parse_args()

    rows: dict[tuple, dict[int, dict]] = defaultdict(dict)  # (weak, loss, option, value) -> seed -> final
    for match, final in read_students(args.students).values():
        rows[(bool(match[2]), match[1], match[3] or "", match[4] or "")][int(match[5])] = final
    ce = {s: f["top1"] for (_, loss, *_), seeds in rows.items() if loss == "ce" for s, f in seeds.items()} | parse(args.ce)
    rld = {weak: {s: f["top1"] for (w, loss, *_), seeds in rows.items() if loss == "rld" and w == weak
                  for s, f in seeds.items()} for weak in (True, False)}
    rld[True] |= parse(args.rld_8k)
    rld[False] |= parse(args.rld)

    for weak, title in TEACHERS:
        print(f"**{title}**\n")
        print("| method | setting | chosen | seeds | val top-1 | test top-1 | Δ CE (paired) | Δ RLD (paired) | agreement | rank corr |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        chosen = _validation_choices({k: v for k, v in rows.items() if k[0] == weak})
        for key in sorted((k for k in rows if k[0] == weak and k[1] != "ce"), key=lambda k: (list(LABELS).index(k[1]), float(k[3] or 0))):
            seeds = rows[key]
            _, loss, option, value = key
            setting = f"{option.replace('_', ' ')} {value}" if option else ""
            top1 = [f["top1"] for f in seeds.values()]
            d_ce = [f["top1"] - ce[s] for s, f in seeds.items() if s in ce]
            d_rld = [f["top1"] - rld[weak][s] for s, f in seeds.items() if s in rld[weak] and loss != "rld"]
            print(f"| {LABELS[loss]} | {setting} | {'val' if chosen.get(loss) == key else ''} | "
                  f"{', '.join(map(str, sorted(seeds)))} | {cell([f['val_top1'] for f in seeds.values()])} | {cell(top1)} | "
                  f"{cell(d_ce, signed=True)} | {cell(d_rld, signed=True)} | "
                  f"{cell([f['teacher_agreement'] for f in seeds.values()])} | "
                  f"{cell([f['teacher_rank_corr'] for f in seeds.values()], 3)} |")
        print()


def _validation_choices(rows: dict[tuple, dict[int, dict]]) -> dict[str, tuple]:
    """Per method with a grid, the setting with the best validation top-1 at seed 0."""
    by_loss: dict[str, list[tuple]] = defaultdict(list)
    for key in rows:
        if key[2]:
            by_loss[key[1]].append(key)
    choices = {}
    for loss, keys in by_loss.items():
        at_seed0 = [k for k in keys if 0 in rows[k]]
        if len(at_seed0) > 1:
            choices[loss] = max(at_seed0, key=lambda k: rows[k][0]["val_top1"])
    return choices


if __name__ == "__main__":
    main()
