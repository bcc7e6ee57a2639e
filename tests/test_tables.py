"""The tools that write docs/results.md's tables and figure from students' summaries and store manifests:
a wrong pairing or a wrong validation pick would put wrong numbers in the results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.once

REPO = Path(__file__).resolve().parent.parent


def _student(folder: Path, name: str, top1: float, val_top1: float = 0.0) -> None:
    (folder / name).mkdir(parents=True)
    final = {"top1": top1, "val_top1": val_top1, "teacher_agreement": 90.0, "teacher_rank_corr": 0.95}
    (folder / name / "summary.json").write_text(json.dumps({"final": final}))


def _run(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=True)
    return proc.stdout.splitlines()


def _row(lines: list[str], first_cell: str) -> list[str]:
    rows = [line.split("|")[1:-1] for line in lines if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, (first_cell, lines)
    return [cell.strip() for cell in rows[0]]


def test_ensemble_table_pairs_students_by_seed(tmp_path):
    stores, students = tmp_path / "logits", tmp_path / "students"
    stores.mkdir()
    for store, arch, top1 in (("resnet20", "resnet20", 90.0), ("resnet32", "resnet32", 91.0),
                              ("wrn_16_2", "wrn_16_2", 91.5), ("ensemble3", None, 92.0)):
        manifest = {"test_split": {"top1_pct": top1}, "cached_views": {"wrong_pct": 100 - top1},
                    "provenance": {"teacher": {"arch": arch}}}
        if arch is None:
            manifest["ensemble"] = {}
        (stores / f"{store}-per-epoch.json").write_text(json.dumps(manifest))
    # The ensemble's RLD students: +0.5 and +0.1 over wrn_16_2's of the same seed; seed 2 has no pair.
    for seed, wrn, ens in ((0, 91.0, 91.5), (1, 91.2, 91.3)):
        _student(students, f"resnet8x4-rld-from-wrn_16_2-per-epoch-s{seed}", wrn)
        _student(students, f"resnet8x4-rld-from-ensemble3-per-epoch-s{seed}", ens)
    _student(students, "resnet8x4-rld-from-ensemble3-per-epoch-s2", 80.0)
    _student(students, "resnet8x4-dkd-from-ensemble3-per-epoch-s0", 91.0)

    lines = _run("tools/ensemble_table.py", str(stores), str(students), "--ce", "0=90.0", "--ce", "1=90.5",
                 "--ref", "rld:resnet20-per-epoch:0=90.9")
    ensemble = _row(lines, "ensemble of the three (mean of logits)")
    assert ensemble[1:4] == ["92.00", "8.00%", "87.60 ± 6.58 (3)"]
    assert ensemble[4] == "+1.15 ± 0.49 (2)"  # 91.5 - 90.0, 91.3 - 90.5; seed 2 has no CE
    assert ensemble[7] == "+0.50 (1)"  # RLD - DKD at seed 0 only
    assert _row(lines, "resnet20")[3] == "90.90 (1)"  # from --ref
    assert _row(lines, "wrn_16_2-per-epoch") == ["wrn_16_2-per-epoch", "+0.50", "+0.30 ± 0.28 (2)", "-"]
    assert _row(lines, "resnet20-per-epoch")[2:] == ["+0.60 (1)", "-"]


def test_baselines_table_marks_the_validation_pick_at_seed_0(tmp_path):
    students = tmp_path / "students"
    _student(students, "resnet8x4-ce-s0", 90.0)
    _student(students, "resnet8x4-ce-s1", 90.4)
    # rc_weight 1 wins on validation at seed 0 though 0.1 has the better test top-1: test must not decide.
    _student(students, "resnet8x4-rc-rc_weight0.1-s0", 91.0, val_top1=88.0)
    _student(students, "resnet8x4-rc-rc_weight1-s0", 90.5, val_top1=89.0)
    _student(students, "resnet8x4-rc-rc_weight1-s1", 90.2, val_top1=80.0)
    lines = _run("tools/baselines_table.py", str(students), "--rld", "0=91.0", "--rld", "1=91.4")
    demo = lines[lines.index("**From resnet20, the demo's**"):]
    rows = {tuple(row[1:3]): row for row in ([c.strip() for c in line.split("|")[1:-1]] for line in demo if line.startswith("| RC |"))}
    assert rows[("rc weight 0.1", "")][6:8] == ["+1.00", "+0.00"]
    picked = rows[("rc weight 1", "val")]
    assert picked[3:8] == ["0, 1", "84.50 ± 6.36", "90.35 ± 0.21", "+0.15 ± 0.49", "-0.85 ± 0.49"]


def test_rank_corr_figure_lists_students_below_its_floor(tmp_path):
    students = tmp_path / "students"
    _student(students, "resnet8x4-kd-8k-s0", 85.0)
    _student(students, "resnet8x4-mlkd-8k-kd_weight0.9-s0", 11.0)  # 79 points below CE: a stalled run
    _student(students, "resnet8x4-mlkd-kd_weight0.9-s0", 85.0)  # the demo teacher's: 5 below, plotted
    figure = tmp_path / "figure.png"

    lines = _run("tools/rank_corr_figure.py", str(students), str(figure), "--ce", "0=90.0", "--floor", "-10")
    assert lines == ["below the chart, weaker teacher (resnet20-8k): MLKD 0.9 s0: -79.00, rank corr 0.950"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
