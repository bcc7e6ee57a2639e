"""rld report: one row per student, seeds of the same configuration as mean ± std."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path


from conftest import cli


def fake_run(folder: Path, name: str, loss: str, seed: int, top1: list[float], teacher_top1: float = 80.0) -> Path:
    """A finished student folder with the files the report reads."""
    out = folder / name
    out.mkdir(parents=True)
    history = [{"epoch": e + 1, "test_top1": acc, "test_top5": 99.0, "lr": 0.05, "teacher_agreement": 70.0 + e}
               for e, acc in enumerate(top1)]
    (out / "metrics.json").write_text(json.dumps(history))
    summary = {
        "name": name, "arch": "resnet8x4", "loss": loss, "seed": seed, "epochs": len(top1),
        "loss_options": {"ce_weight": 1.0, "beta": 8.0, "logit_stand": False},
        "signal": {"kind": "store", "teacher": {"arch": "resnet32x4"}},
        "teacher_test": {"top1": teacher_top1, "top5": 99.5},
        "final": {"top1": top1[-1], "top5": 99.0, "teacher_agreement": 70.0 + len(top1) - 1},
        "best": {"top1": max(top1), "top5": 99.0, "epoch": top1.index(max(top1)) + 1},
        "images_per_s": 250.0,
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_report_rows_groups_and_files(tmp_path):
    runs = [fake_run(tmp_path, "rld-s0", "rld", 0, [50.0, 70.0, 69.0]),
            fake_run(tmp_path, "rld-s1", "rld", 1, [52.0, 66.0, 71.0]),
            fake_run(tmp_path, "ce", "ce", 0, [40.0, 60.0, 65.0])]
    result = cli("report", *map(str, runs), "--out", str(tmp_path / "reports"))
    assert result.exit_code == 0, result.output
    md = (tmp_path / "reports" / "summary.md").read_text()
    assert "| rld-s0 | resnet32x4 (80.00) | resnet8x4 | rld | ce_weight=1 beta=8 | 0 | 3 | 69.00 | 99.00 | 70.00 (2) | 72.00 | 250 |" in md
    mean, std = statistics.fmean([69.0, 71.0]), statistics.stdev([69.0, 71.0])
    assert f"| 2 (0,1) | {mean:.2f} ± {std:.2f} |" in md and "| 1 (0) | 65.00 ± 0.00 |" in md
    with open(tmp_path / "reports" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["ce", "rld-s0", "rld-s1"] and float(rows[2]["final_top1"]) == 71.0
    assert (tmp_path / "reports" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_report_refuses_an_unfinished_student(tmp_path):
    (tmp_path / "running").mkdir()
    result = cli("report", str(tmp_path / "running"), "--out", str(tmp_path / "reports"))
    assert result.exit_code == 1 and "no summary.json" in result.stderr
