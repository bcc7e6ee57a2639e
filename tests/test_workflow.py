"""The Snakemake workflow end to end on tiny data: targets, store reuse, config errors, kills."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, SUBPROCESS_ENV, SYNTH, cli, max_weight_delta, workflow_dir
from pipeline.data import load_dataset
from pipeline.grid import expand_students
from pipeline.inference import Numerics, predict_test, topk_accuracy
from pipeline.store import LogitStore
from pipeline.teacher import load_teacher
from pipeline.views import family_from_dict

pytestmark = pytest.mark.slow

TINY = {
    "dataset": SYNTH,
    "amp": "off",
    "val_split": 4,
    "threads": 1,
    "recipe": {"epochs": 2, "batch_size": 32, "milestones": []},
    "teachers": {"t8": {"arch": "resnet8", "recipe": {"epochs": 1}}},
    "stores": {"t8-pe": {"teacher": "t8", "views": "per-epoch:2", "dtype": "float32", "shards": 2}},
    "students": {
        "a": {"arch": "resnet8", "loss": "rld", "store": "t8-pe", "loss_options": {"warmup": 1}},
        "b": {"arch": "resnet8", "loss": "ce", "store": "t8-pe"},
        "c": {"arch": "resnet8", "loss": "kd", "store": "t8-pe", "seed": [1, 2]},  # a grid: c-s1, c-s2
    },
}



def snakemake(cwd: Path, *args: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **SUBPROCESS_ENV}, timeout=900)
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((cwd / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}")
    return proc


def planned_jobs(cwd: Path, target: str) -> dict[str, int]:
    """The rules a dry run would execute for `target`, with their counts."""
    out = snakemake(cwd, "--quiet", "rules", "--dry-run", target).stdout
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M) if m[1] != "total"}


def test_one_student_target_then_reuse_of_the_store_then_the_report(tmp_path):
    wd = workflow_dir(tmp_path, TINY)
    assert planned_jobs(wd, "students/a") == {"teacher": 1, "dump_shard": 2, "store_manifest": 1, "student": 1}
    snakemake(wd, "--cores", "2", "students/a")

    summary = json.loads((wd / "students/a/summary.json").read_text())
    assert summary["loss"] == "rld" and summary["epochs"] == 2
    # The reported test top-1 is the final weights' own: recomputed from final.pt with the
    # numerics the student ran with (CPU, no autocast, channels_last), it is the same number.
    student = load_teacher(wd / "students/a/final.pt")
    test_set = load_dataset(SYNTH, "test")
    logits = predict_test(student.model, test_set, family_from_dict(student.family), device=torch.device("cpu"),
                          numerics=Numerics("cpu", "off", channels_last=True))
    assert summary["final"]["top1"] == topk_accuracy(logits, test_set.labels)["top1"]
    assert {"metrics.csv", "metrics.json", "curves.png", "final.pt"} <= {p.name for p in (wd / "students/a").iterdir()}
    store = LogitStore.open(wd / "cache/logits/t8-pe.zarr")
    assert store.complete and summary["signal"]["store_id"] == store.id
    manifest = json.loads((wd / "cache/logits/t8-pe.json").read_text())
    assert manifest["completeness"]["complete"] is True
    assert (wd / "logs/teacher/t8.log").exists() and (wd / "logs/dump/t8-pe.1-of-2.log").exists()
    assert not (wd / "students/.work/a").exists()

    # The same student by hand, as docs/stages.md shows it, ends with the workflow's weights: the
    # workflow passes its `threads` (1 here) to the command, and a hand run names the same count
    # (the CPU's float sums round by how the work is split between threads).
    assert summary["config"]["threads"] == 1
    hand = cli("student", "train", "--arch", "resnet8", "--loss", "rld", "--warmup", "1", "--epochs", "2",
               "--batch-size", "32", "--milestones", "", "--amp", "off", "--threads", "1", "--quiet",
               "--store", str(wd / "cache/logits/t8-pe.zarr"), "--out", str(tmp_path / "by-hand"))
    assert hand.exit_code == 0, hand.output
    assert max_weight_delta(wd / "students/a/final.pt", tmp_path / "by-hand" / "final.pt") == 0.0

    # A second student of the same teacher reuses the store: no teacher, no dump.
    assert planned_jobs(wd, "students/b") == {"student": 1}
    store_mtime = (wd / "cache/logits/t8-pe.json").stat().st_mtime
    snakemake(wd, "--cores", "2")
    assert (wd / "cache/logits/t8-pe.json").stat().st_mtime == store_mtime
    table = (wd / "reports/summary.md").read_text()
    # the teacher column names the teacher as the config does (teachers/t8.pt), not its arch
    for name in ("a", "b", "c-s1", "c-s2"):
        assert re.search(rf"^\| {name} \| t8 \(\d+\.\d\d\) \| resnet8 \|", table, re.M), table
    rows = (wd / "reports/summary.csv").read_text().splitlines()
    assert rows[0].startswith("name,teacher,teacher_top1,arch,loss") and len(rows) == 5
    assert json.loads((wd / "students/c-s2/summary.json").read_text())["seed"] == 2
    # The validation split reached every stage: the store's data excludes it, students select on it.
    assert store.attrs["dataset"]["val_split"] == {"size": 4, "draw": "random", "seed": 0} and summary["best"]["val_top1"] is not None
    assert (wd / "reports/accuracy.png").read_bytes()[:4] == b"\x89PNG"
    rerun = snakemake(wd, "--cores", "2")
    assert "Nothing to be done" in rerun.stdout + rerun.stderr


@pytest.mark.once  # plumbing: which jobs run and what they record; no value here depends on the kernels
def test_an_ensemble_store_of_two_teachers_is_built_from_their_stores_and_taught_from(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["teachers"]["t8b"] = {"arch": "resnet8", "seed": 1, "recipe": {"epochs": 1}}
    config["stores"] = {"a": {"teacher": "t8", "views": "per-epoch:2", "dtype": "float32"},
                        "b": {"teacher": "t8b", "views": "per-epoch:2", "dtype": "float32"},
                        "ens": {"ensemble": ["a", "b"], "space": "probs", "dtype": "float32"}}
    config["students"] = {"e": {"arch": "resnet8", "loss": "rld", "store": "ens", "loss_options": {"warmup": 1}}}
    wd = workflow_dir(tmp_path, config)
    assert planned_jobs(wd, "students/e") == {"teacher": 2, "dump_shard": 2, "store_manifest": 3, "ensemble_store": 1,
                                              "student": 1}
    snakemake(wd, "--cores", "2", "students/e")
    ens = LogitStore.open(wd / "cache/logits/ens.zarr")
    members = [LogitStore.open(wd / f"cache/logits/{m}.zarr") for m in ("a", "b")]
    record = ens.attrs["teacher"]["ensemble"]
    assert ens.complete and record["space"] == "probs" and [m["store_id"] for m in record["members"]] == [m.id for m in members]
    summary = json.loads((wd / "students/e/summary.json").read_text())
    assert summary["signal"]["store_id"] == ens.id
    manifest = json.loads((wd / "cache/logits/ens.json").read_text())
    assert [m["name"] for m in manifest["ensemble"]["members"]] == ["t8", "t8b"]
    assert planned_jobs(wd, "students/e") == {}


@pytest.mark.once  # plans and configs: nothing here depends on the CPU's kernels
def test_compile_in_the_config_reaches_the_student_commands_only(tmp_path):
    wd = workflow_dir(tmp_path, {**TINY, "compile": True})
    commands = snakemake(wd, "--dry-run", "--printshellcmds", "students/a").stdout.splitlines()
    students = [c for c in commands if "student train" in c]
    others = [c for c in commands if " dump " in c or "teacher train" in c]
    assert students and others, commands
    assert all("--cuda-graph" in c for c in students) and not any("--cuda-graph" in c for c in others)


@pytest.mark.once  # plans and configs: nothing here depends on the CPU's kernels
def test_every_method_and_its_options_reach_the_student_commands(tmp_path):
    """Methods and options come from the registry: a grid over every method, RLD's mask and
    LR's eta plans one student per method and mask, each given only its own options."""
    from pipeline.methods import METHODS

    students = {"m": {"arch": "resnet8", "store": "t8-pe", "loss": list(METHODS),
                      "loss_options": {"mask": ["ge", "g"], "eta": 0.5, "rc_weight": 0.2, "warmup": 1}}}
    wd = workflow_dir(tmp_path, {**TINY, "students": students})
    commands = [c for c in snakemake(wd, "--dry-run", "--printshellcmds").stdout.splitlines() if "student train" in c]
    by_name = {re.search(r"--out students/\.work/(\S+)", c)[1]: c for c in commands}
    expected = {f"m-{m}" for m in METHODS if m != "rld"} | {"m-rld-maskge", "m-rld-maskg"}
    assert set(by_name) == expected, sorted(by_name)
    assert "--mask g " in by_name["m-rld-maskg"] and "--eta 0.5 " in by_name["m-lr"] and "--rc-weight 0.2 " in by_name["m-rc"]
    assert "--warmup 1 " in by_name["m-dkd"] and "--warmup" not in by_name["m-la"]
    assert not any(flag in by_name["m-mlkd"] for flag in ("--mask", "--eta", "--rc-weight"))


@pytest.mark.once  # plans and configs: nothing here depends on the CPU's kernels
def test_report_versus_in_the_config_reaches_the_report_command(tmp_path):
    wd = workflow_dir(tmp_path, {**TINY, "report_versus": ["dkd", "kd"]})
    report = [c for c in snakemake(wd, "--dry-run", "--printshellcmds").stdout.splitlines() if " report " in c]
    assert len(report) == 1 and report[0].endswith("--out reports --versus dkd --versus kd > logs/report/reports.log 2>&1")


@pytest.mark.once  # plans and configs: nothing here depends on the CPU's kernels
def test_a_config_with_its_own_students_dir_plans_there_and_leaves_same_named_students_alone(tmp_path):
    """Two configs that both name a student `b`: without folders of their own, running the second
    would retrain (and so delete) the first's students/b, since its command changed."""
    wd = workflow_dir(tmp_path, TINY)
    (wd / "students/b").mkdir(parents=True)
    (wd / "config/other.yaml").write_text(json.dumps({**TINY, "students_dir": "students/other",
                                                      "recipe": {**TINY["recipe"], "epochs": 3}}))
    dry = snakemake(wd, "--dry-run", "--printshellcmds", "--configfile", "config/other.yaml").stdout
    trains = [line for line in dry.splitlines() if "student train" in line]
    assert len(trains) == len(expand_students(TINY["students"])), dry[-3000:]
    b = next(line for line in trains if "--loss ce" in line)
    assert "--out students/other/.work/b > logs/students/other/b.log" in b and "mv students/other/.work/b students/other/b" in b
    assert not any(re.search(r"\bstudents/b\b", line) for line in dry.splitlines()), "the default config's student was planned"
    assert planned_jobs(wd, "students/b") == {}  # the default config's students/b stays built


PRESETS = sorted(p.name for p in (REPO / "config").glob("*.yaml") if p.name != "schema.yaml")


@pytest.mark.once  # plans and configs: nothing here depends on the CPU's kernels
@pytest.mark.parametrize("preset", PRESETS)
def test_every_shipped_config_plans_every_student_it_names(tmp_path, preset):
    """A preset that broke the schema, or named a teacher or store it lacks, would reach a user
    untested: each one, as a user's config, must plan its whole grid (a dry run, ~2 s)."""
    import yaml

    config = yaml.safe_load((REPO / "config" / preset).read_text())
    jobs = planned_jobs(workflow_dir(tmp_path, config), "all")
    assert jobs["student"] == len(expand_students(config["students"])) and jobs["report"] == 1, jobs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(val_spilt=100), "config: 'val_spilt' is not a key here; did you mean val_split? (keys: "),
        (lambda c: c["students"]["a"].update(lossx="rld"), "config: students.a: 'lossx' is not a key here; did you mean loss?"),
        (lambda c: c["stores"]["t8-pe"].update(views="every"), "config: stores.t8-pe.views: 'every' is not of the form"),
        (lambda c: c["students"]["a"].update(store="nope"), "students.a.store 'nope' is not one of stores"),
        (lambda c: c["students"]["a"]["loss_options"].update(betta=2),
         "config: students.a.loss_options: 'betta' is not a key here; did you mean beta?"),
        (lambda c: c["students"]["b"].update(loss_options={"beta": 2}), "students.b.loss_options.beta applies to none of the losses ['ce']"),
        (lambda c: c["students"]["a"]["loss_options"].update(mask="gt"),
         "config: students.a.loss_options.mask: 'gt' is not one of ['g', 'ge']"),
        (lambda c: c["students"]["a"].update(loss="swap"),
         "config: students.a.loss: 'swap' is not one of ['ce', 'dkd', 'kd', 'la', 'lr', 'mlkd', 'rc', 'rld']"),
        (lambda c: c.update(students_dir="../elsewhere"), "config: students_dir: '../elsewhere' is not of the form"),
        (lambda c: c.update(students_dir="students/.work"), "config: students_dir: 'students/.work' is not of the form"),
        (lambda c: c["teachers"]["t8"].pop("arch"), "config: teachers.t8: 'arch' is required"),
        # the store checks (pipeline.config.check_stores, unit-tested in test_ensemble.py) reach the workflow
        (lambda c: c["stores"].update(ens={"ensemble": ["t8-pe", "x"]}), "config: stores.ens.ensemble member 'x' is not one of stores"),
    ],
)
@pytest.mark.once  # plans and configs: nothing here depends on the CPU's kernels
def test_an_invalid_config_fails_at_once_naming_the_field(tmp_path, change, message):
    """One line, and no schema dump or jsonschema warning around it."""
    config = json.loads(json.dumps(TINY))
    change(config)
    proc = snakemake(workflow_dir(tmp_path, config), "--dry-run", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout.strip(), proc.stderr


@pytest.mark.parametrize(
    ("target", "message", "close"),
    [
        ("students/c-s3", "no student 'c-s3' in this config (its students: a, b, c-s1, c-s2); did you mean", {"c-s1", "c-s2"}),
        ("teachers/t88.pt", "no teacher 't88' in this config (its teachers: t8); did you mean", {"t8"}),
        ("cache/logits/t8-p.json", "no store 't8-p' in this config (its stores: t8-pe); did you mean", {"t8-pe"}),
    ],
)
@pytest.mark.once  # plans and configs: nothing here depends on the CPU's kernels
def test_a_target_naming_no_entry_of_the_config_fails_with_the_names_it_has(tmp_path, target, message, close):
    proc = snakemake(workflow_dir(tmp_path, TINY), "--dry-run", target, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert message in out, out[-2000:]
    suggested = re.search(r"did you mean (.*)\?", out)[1]
    assert set(suggested.split(" or ")) == close


def test_a_killed_dump_keeps_its_finished_units_and_the_rerun_completes(tmp_path, teacher_file):
    config = {**TINY, "teachers": {"t8": {"arch": "resnet8", "weights": str(teacher_file)}},
              "stores": {"big": {"teacher": "t8", "views": "per-epoch:6", "dtype": "float32", "shards": 1,
                                 "batch_size": 8}}}
    config["students"] = {"a": {"arch": "resnet8", "loss": "rld", "store": "big"}}
    wd = workflow_dir(tmp_path, config)
    snakemake(wd, "--cores", "1", "teachers/t8.pt")
    store_path = wd / "cache/logits/big.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", "cache/logits/big.json"], cwd=wd,
                            env={**os.environ, **SUBPROCESS_ENV}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # bounds a hung dump only: the loop ends at the first durable unit
    while time.time() < deadline and not any((store_path / "done" / "c").glob("*/*")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    partial = LogitStore.open(store_path)
    done_before = len(partial.units()) - len(partial.pending())
    assert 0 < done_before < len(partial.units()), "the kill should land mid-dump"

    snakemake(wd, "--unlock")
    snakemake(wd, "--cores", "1", "cache/logits/big.json")
    log = (wd / "logs/dump/big.0-of-1.log").read_text()
    written = int(re.search(r"wrote (\d+) units", log)[1])
    assert written == len(partial.units()) - done_before  # only the missing units were computed

    # ... and the store equals an uninterrupted dump of the same teacher and views.
    cli("dump", "--teacher", str(teacher_file), "--dataset", SYNTH, "--val-split", "4", "--views", "per-epoch:6", "--dtype", "float32",
        "--batch-size", "8", "--quiet", "--store", str(tmp_path / "whole.zarr"))
    a, b = LogitStore.open(store_path), LogitStore.open(tmp_path / "whole.zarr")
    for name in ("logits", "views", "input_crc", "eval/logits"):
        assert np.array_equal(a.group[name][:], b.group[name][:]), name
