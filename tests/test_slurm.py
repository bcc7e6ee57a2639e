"""The workflow on a real SLURM cluster: submitted jobs, their requests, cancel and resume.

`make slurm-test` starts a one-node cluster (tests/slurm/cluster.sh), installs Snakemake's
SLURM executor plugin and runs this file. Every rule runs as a SLURM job through the real
profile (`--profile profiles/slurm`), with tests/slurm/profile layered on top for what
differs on the test cluster (its default partition, squeue for job states, no retries).

Marked `slurm`, so the default `pytest` run deselects it; `pytest -m slurm` skips it when no
cluster answers, and fails instead when RLD_REQUIRE_SLURM=1 (as `make slurm-test` sets).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, SUBPROCESS_ENV, SYNTH, cli, workflow_dir
from pipeline.store import LogitStore

pytestmark = pytest.mark.slurm

PROFILES = ["--profile", str(REPO / "profiles/slurm"), "--profile", str(REPO / "tests/slurm/profile")]

# Sized so that a cancel lands mid-job on 2 cores: shard 0 of the store is 7 write units of
# ~1 s each (resnet32x4, a heavy teacher for the data, batches of 8), a student 12 epochs.
EPOCHS = 12
CONFIG = {
    "dataset": SYNTH,
    "amp": "off",
    "val_split": 4,
    "threads": {"teacher": 2, "dump": 1, "student": 1},
    "mem_mb": {"teacher": 2000, "dump": 1200, "student": 1000},
    "gpus_per_job": 0,
    "recipe": {"epochs": EPOCHS, "batch_size": 32, "milestones": []},
    "teachers": {"t": {"arch": "resnet32x4", "recipe": {"epochs": 1}}},
    "stores": {"t-pe": {"teacher": "t", "views": f"per-epoch:{EPOCHS}", "dtype": "float32", "shards": 2,
                        "batch_size": 8}},
    "students": {
        "a": {"arch": "resnet8", "loss": "rld", "store": "t-pe", "loss_options": {"warmup": 1}},
        "b": {"arch": "resnet8", "loss": "kd", "store": "t-pe"},
    },
}
# What the Snakefile should ask SLURM for, per rule: (CPUs, memory in MB).
REQUESTS = {"teacher": (2, 2000), "dump_shard": (1, 1200), "store_manifest": (1, 4000), "student": (1, 1000),
            "report": (1, 2000)}
# `rld student train` for student a, as the Snakefile's rule spells it (checked against the
# workflow's own config.json below), for the uninterrupted reference run.
STUDENT_A = ["--arch", "resnet8", "--loss", "rld", "--seed", "0", "--epochs", str(EPOCHS), "--batch-size", "32",
             "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "0.0005", "--lr-decay", "0.1", "--milestones", "",
             "--device", "auto", "--amp", "off", "--warmup", "1", "--data-root", "data", "--quiet"]


def cluster_problem() -> str | None:
    """Why this machine cannot run the test, or None."""
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (make slurm-test installs and starts a one-node cluster)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "is UP" not in ping.stdout:
        return "no SLURM controller answers (tests/slurm/cluster.sh start)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed in this environment"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = cluster_problem()
    if problem:
        if os.environ.get("RLD_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)



def start_snakemake(wd: Path, *args: str) -> subprocess.Popen:
    path = wd / f"snakemake.{time.monotonic_ns()}.out"
    with path.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", *PROFILES, *args], cwd=wd, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **SUBPROCESS_ENV})
    proc.output = path  # the file holds everything Snakemake printed
    return proc


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    proc.wait(timeout=timeout)
    return proc.returncode, proc.output.read_text()


def submitted(output: str) -> list[str]:
    """SLURM job ids in the order Snakemake submitted them."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def slurm_jobs(wd: Path) -> dict[str, dict[str, str]]:
    """Every job SLURM knows (running or finished less than MinJobAge ago) that runs in `wd`."""
    fmt = "%i|%k|%T|%C|%m|%b|%Z"
    out = subprocess.run(["squeue", "--states=all", "--noheader", f"--format={fmt}"], capture_output=True, text=True,
                         check=True).stdout
    jobs = {}
    for line in out.splitlines():
        jobid, comment, state, cpus, mem, gres, where = line.split("|")
        if Path(where).resolve() == wd.resolve():
            jobs[jobid] = {"comment": comment, "state": state, "cpus": cpus, "mem": mem, "gres": gres}
    return jobs


def job_of(wd: Path, comment: str, state: str = "RUNNING") -> str | None:
    return next((i for i, j in slurm_jobs(wd).items() if j["comment"] == comment and j["state"] == state), None)


def wait_for(what: str, check, proc: subprocess.Popen, timeout: float = 300, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({proc.returncode}) before {what}:\n{proc.output.read_text()[-4000:]}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def scancel(jobid: str) -> None:
    subprocess.run(["scancel", jobid], check=True)


def shard_progress(store_path: Path, shard: tuple[int, int]) -> tuple[int, int] | None:
    """(done, total) write units of one shard, or None while the store is being created."""
    try:
        store = LogitStore.open(store_path)
        units = [u for i, u in enumerate(store.units()) if i % shard[1] == shard[0]]
        return len(units) - len(store.pending(shard)), len(units)
    except Exception:  # noqa: BLE001 - not created yet, or metadata mid-write
        return None


def checkpoint_epoch(path: Path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def test_the_workflow_on_slurm_survives_a_cancelled_dump_shard_and_a_cancelled_student(tmp_path):
    wd = workflow_dir(tmp_path, CONFIG)
    store_path = wd / "cache/logits/t-pe.zarr"
    walls, seen = [], []

    # Run 1: teacher, then both dump shards; shard 0 is cancelled after its first units.
    t0 = time.monotonic()
    run = start_snakemake(wd)
    shard0 = wait_for("dump shard 0 to run", lambda: job_of(wd, "rule_dump_shard_wildcards_t-pe_0_2"), run)
    wait_for("shard 0 to finish a write unit", lambda: (shard_progress(store_path, (0, 2)) or (0, 0))[0] >= 1, run, every=0.05)
    scancel(shard0)
    rc, out1 = finish(run)
    walls.append(time.monotonic() - t0)
    seen.append(submitted(out1))
    assert rc != 0, "a cancelled job must fail the run"
    assert slurm_jobs(wd)[shard0]["state"] == "CANCELLED"
    assert re.search(rf"SLURM-job '{shard0}' failed, SLURM status is: 'CANCELLED'", out1), out1[-3000:]
    done, total = shard_progress(store_path, (0, 2))
    assert 0 < done < total, f"the cancel should land mid-shard: {done} of {total} units done"
    assert not (wd / "cache/logits/t-pe.shards/0-of-2.done").exists()
    assert (wd / "cache/logits/t-pe.shards/1-of-2.done").exists(), "the other shard finishes undisturbed"

    # Run 2: the rerun computes only shard 0's missing units; then student a is cancelled
    # once it has checkpointed an epoch (student b finishes).
    t0 = time.monotonic()
    run = start_snakemake(wd)
    student_a = wait_for("student a to run", lambda: job_of(wd, "rule_student_wildcards_a"), run)
    checkpoint = wd / "students/.work/a/checkpoint.pt"
    wait_for("student a's first checkpoint", lambda: checkpoint_epoch(checkpoint), run, every=0.05)
    scancel(student_a)
    rc, out2 = finish(run)
    walls.append(time.monotonic() - t0)
    seen.append(submitted(out2))
    assert rc != 0
    assert slurm_jobs(wd)[student_a]["state"] == "CANCELLED"
    log = (wd / "logs/dump/t-pe.0-of-2.log").read_text()
    assert int(re.search(r"wrote (\d+) units", log)[1]) == total - done, log  # only the missing units
    assert (wd / "cache/logits/t-pe.json").exists() and (wd / "students/b/final.pt").exists()
    assert not (wd / "students/a").exists()
    interrupted = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert 1 <= interrupted["epoch"] < EPOCHS, interrupted["epoch"]

    # Run 3: student a resumes from its checkpoint, then the report.
    t0 = time.monotonic()
    rc, out3 = finish(start_snakemake(wd))
    walls.append(time.monotonic() - t0)
    seen.append(submitted(out3))
    assert rc == 0, out3[-4000:]
    assert "Nothing to be done" in finish(start_snakemake(wd, "--dry-run"))[1]

    # Every job Snakemake reported is a SLURM job of this workflow, with the rule's requests.
    jobs = slurm_jobs(wd)
    ids = [i for run_ids in seen for i in run_ids]
    assert sorted(ids, key=int) == sorted(jobs, key=int), (ids, jobs)
    rules = [[re.match(r"rule_(\w+?)(_wildcards_|$)", jobs[i]["comment"])[1] for i in run_ids] for run_ids in seen]
    assert [sorted(r) for r in rules] == [["dump_shard", "dump_shard", "teacher"],
                                          ["dump_shard", "store_manifest", "student", "student"],
                                          ["report", "student"]]
    for jobid, job in jobs.items():
        rule = re.match(r"rule_(\w+?)(_wildcards_|$)", job["comment"])[1]
        cpus, mem = REQUESTS[rule]
        assert (int(job["cpus"]), job["mem"], job["gres"]) == (cpus, f"{mem}M", "N/A"), (jobid, job)
        assert job["state"] == ("CANCELLED" if jobid in (shard0, student_a) else "COMPLETED"), (jobid, job)

    print(f"\nSLURM jobs seen: {', '.join(ids)} ({len(ids)} submitted in 3 runs; cancelled {shard0} and {student_a})")
    for n, (run_ids, wall) in enumerate(zip(seen, walls), 1):
        print(f"  run {n}: {wall:5.1f} s, " + ", ".join(f"{i} {jobs[i]['comment'].removeprefix('rule_')} "
                                                      f"[{jobs[i]['state'].lower()}]" for i in run_ids))
    print(f"  total: {sum(walls):.1f} s of Snakemake wall time")
    print(f"  shard 0 had {done} of {total} units when {shard0} was cancelled; job {seen[1][0]} wrote the other "
          f"{total - done}; student a had {interrupted['epoch']} of {EPOCHS} epochs when {student_a} was cancelled")
    for tsv in sorted((wd / "benchmarks").rglob("*.tsv")):
        row = dict(zip(*[line.split("\t") for line in tsv.read_text().splitlines()[:2]]))
        print(f"  {tsv.relative_to(wd / 'benchmarks')}: {float(row['s']):.1f} s, max RSS {float(row['max_rss']):.0f} MB")

    # The store equals an uninterrupted dump of the same teacher (one process, no shards).
    cli("dump", "--teacher", str(wd / "teachers/t.pt"), "--dataset", SYNTH, "--val-split", "4",
        "--views", f"per-epoch:{EPOCHS}", "--dtype", "float32", "--batch-size", "8", "--amp", "off", "--quiet",
        "--store", str(tmp_path / "whole.zarr"))
    a, b = LogitStore.open(store_path), LogitStore.open(tmp_path / "whole.zarr")
    assert a.complete and a.id == b.id
    for name in ("logits", "views", "input_crc", "eval/logits"):
        assert np.array_equal(a.group[name][:], b.group[name][:]), name

    # Student a resumed rather than restarted: the epochs it had finished before the cancel
    # are in its history unchanged, down to their measured wall times ...
    history = json.loads((wd / "students/a/metrics.json").read_text())
    k = interrupted["epoch"]
    assert [row["epoch_seconds"] for row in history[:k]] == [row["epoch_seconds"] for row in interrupted["history"]]
    assert len(history) == EPOCHS
    # ... and it ends with the weights of an uninterrupted run, bit for bit.
    ref = tmp_path / "a-uninterrupted"
    result = cli("student", "train", *STUDENT_A, "--threads", "1",  # the config's threads for students
                 "--store", str(store_path), "--out", str(ref))
    assert result.exit_code == 0, result.output
    ours = json.loads((wd / "students/a/config.json").read_text())["config"]
    assert json.loads((ref / "config.json").read_text())["config"] == ours
    got = torch.load(wd / "students/a/final.pt", map_location="cpu", weights_only=True)["model"]
    want = torch.load(ref / "final.pt", map_location="cpu", weights_only=True)["model"]
    assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in got)
    assert (wd / "reports/summary.md").exists()


def test_the_profile_asks_slurm_for_the_gpus_of_gpus_per_job(tmp_path):
    """With gpus_per_job 4 a student asks for 4 GPUs on one node (DDP), with 4x the cores and
    memory; a teacher one GPU. The test cluster has no GPUs, so SLURM refuses both jobs at
    submission (nothing runs), and the plugin's error shows the sbatch call it made."""
    if subprocess.run(["sinfo", "--noheader", "--format=%G"], capture_output=True, text=True).stdout.strip() != "(null)":
        pytest.skip("this cluster has GPUs: submitting would run the jobs")
    config = {**CONFIG, "gpus_per_job": 4, "threads": {"teacher": 2, "dump": 1, "student": 3},
              "students": {"c": {"arch": "resnet8", "loss": "ce"}}}  # CE alone: no store to wait for
    wd = workflow_dir(tmp_path, config)
    rc, out = finish(start_snakemake(wd, "--keep-going", "students/c", "teachers/t.pt"), timeout=120)
    assert rc != 0
    calls = {m[1]: m[2] for m in re.finditer(r"--comment (rule_\w+?)(?:_wildcards_\S+)? (.*)", out)}
    assert set(calls) == {"rule_student", "rule_teacher"}, out[-3000:]
    assert re.search(r"--gpus=4\b", calls["rule_student"]) and "--nodes=1" in calls["rule_student"]
    assert "--cpus-per-task=12" in calls["rule_student"] and "--mem 4000" in calls["rule_student"]
    assert re.search(r"--gpus=1\b", calls["rule_teacher"]) and "--cpus-per-task=2" in calls["rule_teacher"]
    assert "gres" in out.lower(), "SLURM itself should have refused the GPU request"


# A GPU job under `rld on-gpus` that logs when it held its device (simulated: --devices 0).
GPU_JOB = """{python} -m stages.cli on-gpus --gpus 1 --devices 0 -- {python} -c '
import json, os, sys, time
start = time.time(); time.sleep(4)
print(json.dumps({{"devices": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time()}}))'"""


def test_gpu_jobs_in_different_slurm_jobs_do_not_wait_for_each_other(tmp_path):
    """Where SLURM constrains devices, every job sees its own GPUs as 0..n-1. Two jobs that
    both hold their "device 0" run at once: `rld on-gpus` keeps slots per allocation (on one
    machine without SLURM the same two would take turns)."""
    ids = []
    for n in range(2):
        proc = subprocess.run(["sbatch", "--parsable", "--ntasks=1", "--cpus-per-task=1", "--mem=500", f"--chdir={tmp_path}",
                               f"--output={tmp_path}/job{n}.out", "--export=ALL", f"--wrap={GPU_JOB.format(python=sys.executable)}"],
                              capture_output=True, text=True, check=True, env={**os.environ, **SUBPROCESS_ENV})
        ids.append(proc.stdout.strip().split(";")[0])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(slurm_jobs(tmp_path).get(i, {}).get("state") != "COMPLETED" for i in ids):
        time.sleep(0.5)
    runs = [json.loads((tmp_path / f"job{n}.out").read_text().splitlines()[-1]) for n in range(2)]
    print(f"\nSLURM jobs {', '.join(ids)} on device 0: " + ", ".join(f"{r['start'] % 100:.1f}-{r['end'] % 100:.1f} s" for r in runs))
    assert [r["devices"] for r in runs] == ["0", "0"]
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs), "the two jobs took turns on device 0"
