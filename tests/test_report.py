"""rld report: seeds grouped only with comparable runs, paired differences to CE, choices on validation."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from helpers import cli

RECIPE = {"epochs": 3, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "milestones": [2],
          "lr_decay": 0.1, "amp": "off", "channels_last": True}
VIEWS = {"policy": "exhaustive", "count": None, "seed": 0, "family": {"kind": "crop", "size": 32, "padding": 4}}


def fake_run(folder: Path, name: str, loss: str, seed: int, test: float, val: float | None = None, *,
             beta: float = 8.0, views: dict | None = None, lr: float = 0.05, teacher_top1: float = 80.0,
             teacher_sha: str = "f" * 64, teacher_file: str | None = None) -> Path:
    """A finished student folder with the files the report reads."""
    out = folder / name
    out.mkdir(parents=True)
    monitor = "val_top1" if val is not None else "test_top1"
    history = [{"epoch": e + 1, "lr": lr, monitor: (val if val is not None else test) - 3 + e} for e in range(3)]
    history[-1].update(test_top1=test, test_top5=99.0)
    (out / "metrics.json").write_text(json.dumps(history))
    options = {"ce_weight": 1.0} if loss == "ce" else {"ce_weight": 1.0, "beta": beta, "logit_stand": False}
    final = {"top1": test, "top5": 99.0, "teacher_agreement": 70.0, **({"val_top1": val} if val is not None else {})}
    summary = {
        "name": name, "arch": "resnet8x4", "loss": loss, "seed": seed, "epochs": 3, "loss_options": options,
        "config": {**RECIPE, "lr": lr, "seed": seed, "loss": loss},
        "signal": {"kind": "store", "store_id": "abc", "views": views or VIEWS,
                   "teacher": {"arch": "resnet32x4", "weights_sha256": teacher_sha,
                               **({"file": teacher_file} if teacher_file else {})}},
        "dataset": {"fingerprint": "train"}, "val_dataset": {"fingerprint": "val", "size": 1000} if val is not None else None,
        "test_dataset": {"fingerprint": "test", "size": 2000},
        "teacher_test": {"top1": teacher_top1, "top5": 99.5},
        "final": final,
        "best": {"epoch": 3, "val_top1": val, "val_top5": 99.0, "top1": test, "top5": 99.0} if val is not None else None,
        "images_per_s": 250.0,
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def report(tmp_path: Path, runs: list[Path]) -> tuple[str, list[dict], list[dict]]:
    result = cli("report", *map(str, runs), "--out", str(tmp_path / "reports"))
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports"
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    with open(out / "groups.csv") as f:
        grouped = list(csv.DictReader(f))
    return (out / "summary.md").read_text(), rows, grouped


def test_rows_seed_groups_and_paired_differences_to_ce(tmp_path):
    # seed 1 ties its CE run (68 - 68): a tie is not a win, so 1 of 3 seeds beat CE.
    runs = [fake_run(tmp_path, "rld-s0", "rld", 0, 69.0), fake_run(tmp_path, "rld-s1", "rld", 1, 68.0),
            fake_run(tmp_path, "rld-s2", "rld", 2, 64.0),
            fake_run(tmp_path, "ce-s0", "ce", 0, 65.0), fake_run(tmp_path, "ce-s1", "ce", 1, 68.0),
            fake_run(tmp_path, "ce-s2", "ce", 2, 66.0)]
    md, rows, grouped = report(tmp_path, runs)
    by_name = {r["name"]: r for r in rows}
    assert float(by_name["rld-s0"]["delta_vs_ce"]) == 4.0 and float(by_name["rld-s2"]["delta_vs_ce"]) == -2.0
    assert by_name["ce-s0"]["delta_vs_ce"] == ""
    deltas = [4.0, 0.0, -2.0]
    rld = next(g for g in grouped if g["loss"] == "rld")
    assert rld["runs"] == "3" and rld["seeds"] == "0,1,2" and rld["pairs"] == "3" and rld["delta_positive"] == "1"
    # float64 means and deviations, summed in another order than statistics': approx's default 1e-6
    assert float(rld["delta_vs_ce"]) == pytest.approx(statistics.fmean(deltas))
    assert float(rld["delta_vs_ce_std"]) == pytest.approx(statistics.stdev(deltas))
    mean, std = statistics.fmean([69.0, 68.0, 64.0]), statistics.stdev([69.0, 68.0, 64.0])
    assert f"| {mean:.2f} ± {std:.2f} | +{statistics.fmean(deltas):.2f} ± {statistics.stdev(deltas):.2f} | 1/3 |" in md
    assert "(2,000 images)" in md
    # --versus ce pairs exactly as Δ CE does (CE students have no teacher to match).
    assert cli("report", *map(str, runs), "--out", str(tmp_path / "versus"), "--versus", "ce").exit_code == 0
    versus = (tmp_path / "versus/summary.md").read_text().split("## Paired against CE")[1]
    assert f"| {statistics.fmean(deltas):+.2f} ± {statistics.stdev(deltas):.2f} | 1/3 |" in versus
    for name in ("accuracy.png", "paired.png"):
        assert (tmp_path / "reports" / name).read_bytes()[:4] == b"\x89PNG"


def test_runs_that_differ_in_views_recipe_or_teacher_are_not_averaged_or_paired(tmp_path):
    other_views = {**VIEWS, "policy": "per-epoch", "count": 3}
    runs = [fake_run(tmp_path, "a", "rld", 0, 70.0), fake_run(tmp_path, "b", "rld", 1, 60.0, views=other_views),
            fake_run(tmp_path, "c", "rld", 2, 50.0, lr=0.1), fake_run(tmp_path, "ce", "ce", 0, 65.0, lr=0.1),
            fake_run(tmp_path, "d", "rld", 1, 55.0, teacher_sha="e" * 64)]  # a's setting, another teacher
    _, rows, grouped = report(tmp_path, runs)
    assert sorted(g["runs"] for g in grouped) == ["1", "1", "1", "1", "1"]
    # The only CE run has another recipe than every distilled run of its seed: nothing is paired.
    assert all(r["delta_vs_ce"] == "" for r in rows)
    # Each row and group names its views (students of two stores would otherwise read alike).
    assert {r["name"]: r["views"] for r in rows} == {"a": "exhaustive", "b": "per-epoch:3", "c": "exhaustive",
                                                    "ce": "exhaustive", "d": "exhaustive"}
    assert sorted(g["views"] for g in grouped) == ["exhaustive"] * 4 + ["per-epoch:3"]


def test_teachers_of_one_architecture_are_told_apart_by_name_in_tables_and_labels(tmp_path):
    from pipeline.report import _tell_teachers_apart, groups, load_run, pair_with_ce, row

    strong, weak = {"teacher_file": "teachers/resnet20.pt"}, {"teacher_file": "teachers/resnet20-8k.pt",
                                                              "teacher_sha": "e" * 64, "teacher_top1": 84.0}
    runs = [fake_run(tmp_path, f"rld-{t}-s{s}", "rld", s, 70.0 + s, **kw)
            for t, kw in (("strong", strong), ("weak", weak)) for s in (0, 1)]
    runs += [fake_run(tmp_path, f"ce-s{s}", "ce", s, 66.0, **strong) for s in (0, 1)]
    md, rows, grouped = report(tmp_path, runs)
    assert {r["name"]: r["teacher"] for r in rows if r["loss"] == "rld"} == {
        "rld-strong-s0": "resnet20", "rld-strong-s1": "resnet20", "rld-weak-s0": "resnet20-8k", "rld-weak-s1": "resnet20-8k"}
    assert "| rld-weak-s0 | resnet20-8k (84.00) |" in md
    assert sorted((g["teacher"], g["runs"], g["pairs"]) for g in grouped if g["loss"] == "rld") == [
        ("resnet20", "2", "2"), ("resnet20-8k", "2", "2")]  # CE ignores the teacher: it pairs with both

    # The plots' labels (one curve or bar per group) name the teacher where several distil.
    table = [row(load_run(p)) for p in runs]
    _tell_teachers_apart(table)
    pair_with_ce(table)
    assert sorted(g["label"] for g in groups(table)) == ["ce", "rld <- resnet20", "rld <- resnet20-8k"]

    # The same file name in two folders, other weights: the sha tells them apart.
    again = [fake_run(tmp_path / "x", "a", "rld", 0, 70.0, teacher_file="run1/teacher.pt"),
             fake_run(tmp_path / "x", "b", "rld", 0, 70.0, teacher_file="run2/teacher.pt", teacher_sha="e" * 64)]
    table = [row(load_run(p)) for p in again]
    _tell_teachers_apart(table)
    assert sorted(r["teacher"] for r in table) == ["teacher@eeeeeeee", "teacher@ffffffff"]


def test_an_option_grid_is_chosen_on_validation_never_on_test(tmp_path):
    # beta 2 has the better validation top-1, beta 8 the better test top-1: validation decides.
    runs = [fake_run(tmp_path, f"rld-beta{b}-s{s}", "rld", s, test, val, beta=b)
            for b, test, val in ((2.0, 70.0, 75.0), (8.0, 73.0, 72.0)) for s in (0, 1)]
    runs += [fake_run(tmp_path, f"ce-s{s}", "ce", s, 66.0, 70.0) for s in (0, 1)]
    md, _, grouped = report(tmp_path, runs)
    chosen = {g["options"]: g["chosen"] for g in grouped if g["loss"] == "rld"}
    assert chosen == {"ce_weight=1 beta=2": "True", "ce_weight=1 beta=8": "False"}
    section = md.split("## One setting per loss, chosen on validation")[1]
    assert "| rld | ce_weight=1 beta=2 | exhaustive | 0,1 | 75.00 ± 0.00 | 70.00 ± 0.00 | +4.00 ± 0.00 | 2/2 |" in section
    assert "beta=8" not in section and "| ce | ce_weight=1 | exhaustive | 0,1 |" in section


def test_versus_pairs_each_loss_with_the_chosen_partner_of_the_same_teacher_and_seed(tmp_path):
    # DKD ran beta 2 (chosen on validation) and beta 8 (better on test, passed over); RLD ran from
    # two teachers. Each RLD group pairs with the chosen DKD of its own teacher, seed by seed.
    weak = {"teacher_file": "teachers/weak.pt", "teacher_sha": "e" * 64}
    runs = [fake_run(tmp_path, f"dkd-beta{b}-s{s}", "dkd", s, test + s, val, beta=b)
            for b, test, val in ((2.0, 70.0, 75.0), (8.0, 80.0, 72.0)) for s in (0, 1, 2)]
    runs += [fake_run(tmp_path, f"rld-s{s}", "rld", s, t, 76.0) for s, t in ((0, 71.0), (1, 70.0), (2, 73.0))]
    runs += [fake_run(tmp_path, f"dkd-weak-s{s}", "dkd", s, 60.0, 65.0, beta=2.0, **weak) for s in (0, 1)]
    runs += [fake_run(tmp_path, f"rld-weak-s{s}", "rld", s, t, 66.0, **weak) for s, t in ((0, 62.0), (1, 59.0))]
    result = cli("report", *map(str, runs), "--out", str(tmp_path / "reports"), "--versus", "dkd")
    assert result.exit_code == 0, result.output
    section = (tmp_path / "reports/summary.md").read_text().split("## Paired against DKD")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # Only the RLD groups: DKD is the baseline, and its passed-over beta 8 is neither partner nor row.
    assert len(rows) == 2, section
    strong = [71 - 70, 70 - 71, 73 - 72]  # RLD minus DKD beta 2, seeds 0-2
    assert (f"| rld | ce_weight=1 beta=8 | exhaustive | 0,1,2 | ce_weight=1 beta=2 | "
            f"{statistics.fmean(strong):+.2f} ± {statistics.stdev(strong):.2f} | 2/3 |") in section
    assert "| weak | resnet8x4 | rld | ce_weight=1 beta=8 | exhaustive | 0,1 | ce_weight=1 beta=2 | +0.50 ± 2.12 | 1/2 |" in section

    bad = cli("report", str(runs[0]), "--out", str(tmp_path / "r2"), "--versus", "rdl")
    assert bad.exit_code == 2 and "'rdl' is not one of 'ce', 'dkd', 'kd', 'la', 'lr', 'mlkd', 'rc', 'rld'" in bad.output


def test_report_refuses_an_unfinished_student(tmp_path):
    (tmp_path / "running").mkdir()
    result = cli("report", str(tmp_path / "running"), "--out", str(tmp_path / "reports"))
    assert result.exit_code == 1 and "no summary.json" in result.stderr


def test_rank_correlation_and_each_methods_last_loss_terms_are_reported(tmp_path):
    """Runs of different methods log different terms: the CSV has a column per term of any
    method (from the registry), empty where a run has none; the rank correlation is averaged
    over seeds like the other metrics; runs from before it existed show '-'."""
    runs = []
    for seed, corr in ((0, 0.5), (1, 0.7)):
        run = fake_run(tmp_path, f"rld-s{seed}", "rld", seed, 70.0)
        summary = json.loads((run / "summary.json").read_text())
        summary["final"]["teacher_rank_corr"] = corr
        (run / "summary.json").write_text(json.dumps(summary))
        history = json.loads((run / "metrics.json").read_text())
        history[-1].update(loss_ce=0.5, loss_scd=0.25, loss_mcd=0.125, loss_total=0.875)
        (run / "metrics.json").write_text(json.dumps(history))
        runs.append(run)
    runs.append(fake_run(tmp_path, "ce-s0", "ce", 0, 65.0))
    md, rows, grouped = report(tmp_path, runs)
    by_name = {r["name"]: r for r in rows}
    assert by_name["rld-s0"]["loss_scd"] == "0.25" and by_name["rld-s0"]["loss_mcd"] == "0.125"
    assert by_name["rld-s0"]["loss_tckd"] == "" and by_name["ce-s0"]["teacher_rank_corr"] == ""
    for column in ("loss_ce", "loss_kd", "loss_rc", "loss_mse", "loss_revised", "loss_cc", "loss_bc", "loss_total"):
        assert column in rows[0]
    rld = next(g for g in grouped if g["loss"] == "rld")
    assert float(rld["teacher_rank_corr"]) == pytest.approx(0.6)  # float64 mean of two: approx's default 1e-6
    assert "| 0.600 ± 0.141 |" in md


def test_a_single_seed_is_reported_without_a_spread(tmp_path):
    """One run says nothing of the spread over seeds: no '± 0.00' for it."""
    runs = [fake_run(tmp_path, "rld-s0", "rld", 0, 70.0, 71.0), fake_run(tmp_path, "ce-s0", "ce", 0, 65.0, 66.0)]
    md, _, grouped = report(tmp_path, runs)
    rld = next(g for g in grouped if g["loss"] == "rld")
    assert rld["final_top1"] == "70.0" and rld["final_top1_std"] == "" and rld["delta_vs_ce_std"] == ""
    assert "| 71.00 | 70.00 | +5.00 | 1/1 |" in md and "± 0.00" not in md
