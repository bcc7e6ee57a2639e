"""The ensemble table of docs/results.md: each teacher of config/fashion-mnist-ensemble.yaml and
their ensemble, with its students' test top-1 and paired differences to CE and between RLD and DKD,
then the ensemble's students against each member's, paired by seed (does the ensemble's edge carry over?).

    python tools/ensemble_table.py cache/logits students/fashion-mnist-10k \
        --ce 0=90.20 --ce 1=90.53 --ce 2=90.43 \
        --ref rld:resnet20-per-epoch:0=91.31 ... --ref dkd:resnet20-per-epoch:0=90.95 ...

A teacher's numbers come from its store's manifest (cache/logits/STORE.json, `rld inspect
--json`): test top-1 and the share of cached views it gets wrong. Students are the workflow's
folders resnet8x4-{rld,dkd}-from-STORE-sSEED, or, for the resnet20 store, resnet8x4-rld-sSEED
and resnet8x4-dkd-sSEED; --ref LOSS:STORE:SEED=TOP1 gives a student that is not there
(section 2's), --ce SEED=TOP1 the CE student of a seed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

STORES = ("resnet20-per-epoch", "resnet32-per-epoch", "wrn_16_2-per-epoch", "ensemble3-per-epoch")
NAME = re.compile(r"^resnet8x4-(rld|dkd)(?:-from-(.+))?-s(\d+)$")


def cell(values: list[float], signed: bool = False) -> str:
    if not values:
        return "-"
    sign = "+" if signed else ""
    mean = statistics.fmean(values)
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{mean:{sign}.2f}{spread} ({len(values)})"


def paired(mine: dict[int, float], theirs: dict[int, float]) -> str:
    """Mine minus theirs over the seeds both have."""
    return cell([v - theirs[s] for s, v in mine.items() if s in theirs], signed=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", type=Path, help="the folder of the stores and their manifests")
    parser.add_argument("students", type=Path)
    parser.add_argument("--ce", action="append", default=[], metavar="SEED=TOP1")
    parser.add_argument("--ref", action="append", default=[], metavar="LOSS:STORE:SEED=TOP1")
    args = parser.parse_args()

    ce = {int(k): float(v) for k, v in (item.split("=") for item in args.ce)}
    top1: dict[tuple[str, str], dict[int, float]] = {}
    for folder in args.students.iterdir():
        match = NAME.match(folder.name)
        if match and (folder / "summary.json").exists():
            store = match[2] or STORES[0]
            top1.setdefault((match[1], store), {})[int(match[3])] = json.loads((folder / "summary.json").read_text())["final"]["top1"]
    for item in args.ref:
        key, value = item.split("=")
        loss, store, seed = key.split(":")
        top1.setdefault((loss, store), {}).setdefault(int(seed), float(value))

    manifests = {store: json.loads((args.stores / f"{store}.json").read_text()) for store in STORES}
    print("| teacher | test top-1 | wrong on cached views | RLD student | RLD − CE | DKD student | DKD − CE | RLD − DKD |")
    print("|---|---|---|---|---|---|---|---|")
    for store, manifest in manifests.items():
        rld, dkd = top1.get(("rld", store), {}), top1.get(("dkd", store), {})
        name = "ensemble of the three (mean of logits)" if "ensemble" in manifest else manifest["provenance"]["teacher"]["arch"]
        print(f"| {name} | {manifest['test_split']['top1_pct']:.2f} | {manifest['cached_views']['wrong_pct']:.2f}% | "
              f"{cell(list(rld.values()))} | {paired(rld, ce)} | {cell(list(dkd.values()))} | {paired(dkd, ce)} | "
              f"{paired(rld, dkd)} |")

    ensemble = STORES[-1]
    teacher_top1 = {store: manifest["test_split"]["top1_pct"] for store, manifest in manifests.items()}
    print()
    print("| ensemble's students − those of | teacher's gap (test) | RLD | DKD |")
    print("|---|---|---|---|")
    for store in STORES[:-1]:
        rld, dkd = (paired(top1.get((loss, ensemble), {}), top1.get((loss, store), {})) for loss in ("rld", "dkd"))
        print(f"| {store} | {teacher_top1[ensemble] - teacher_top1[store]:+.2f} | {rld} | {dkd} |")


if __name__ == "__main__":
    main()
