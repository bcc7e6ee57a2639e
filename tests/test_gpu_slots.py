"""GPU slots on one machine: concurrent jobs never share a slot, a killed job's slot comes back.

No GPU is needed: the device list is simulated, and what a job sees is CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, SUBPROCESS_ENV, rld
from pipeline.gpu_slots import acquire, default_lock_dir

# A job: take slots through the library, exec a command that logs its devices and lifetime.
JOB = """
import sys
from pathlib import Path
from pipeline.gpu_slots import acquire, exec_on
count, per_gpu, devices, lock_dir, log, hold = sys.argv[1:7]
slots = acquire(int(count), devices.split(","), per_gpu=int(per_gpu), lock_dir=Path(lock_dir), poll=0.02)
exec_on(slots, [sys.executable, "-c", '''
import json, os, sys, time
start = time.time(); time.sleep(float(sys.argv[2]))
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"devices": os.environ["CUDA_VISIBLE_DEVICES"].split(","), "start": start, "end": time.time()}) + "\\\\n")
''', log, hold])
"""


def job(tmp_path: Path, count: int, per_gpu: int, devices: str, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", JOB, str(count), str(per_gpu), devices, str(tmp_path / "locks"),
                             str(tmp_path / "log.jsonl"), str(hold)], env={**os.environ, **SUBPROCESS_ENV})


def runs(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]


def max_concurrency(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize(("per_gpu", "count"), [(1, 1), (2, 1), (1, 2)])
def test_concurrent_jobs_never_share_a_slot(tmp_path, per_gpu, count):
    devices = ["0", "1", "2"]
    procs = [job(tmp_path, count, per_gpu, ",".join(devices), hold=0.4) for _ in range(7)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    done = runs(tmp_path)
    assert len(done) == 7 and all(len(r["devices"]) == count and len(set(r["devices"])) == count for r in done)
    for device in devices:
        on_device = [(r["start"], r["end"]) for r in done if device in r["devices"]]
        assert max_concurrency(on_device) <= per_gpu, (device, on_device)
    if count == 1:  # one-device jobs spread over every device rather than queueing on one
        assert {d for r in done for d in r["devices"]} == set(devices)


@pytest.mark.slow
def test_a_killed_job_gives_its_slot_back(tmp_path):
    holder = job(tmp_path, 1, 1, "7", hold=60)
    deadline = time.time() + 600  # bounds a hung holder only: the loop ends once it owns the slot
    while time.time() < deadline:  # wait until the holder owns the only slot
        try:
            acquire(1, ["7"], lock_dir=tmp_path / "locks", timeout=0).release()
            time.sleep(0.05)
        except TimeoutError:
            break
    with pytest.raises(TimeoutError, match="no 1 GPU"):
        acquire(1, ["7"], lock_dir=tmp_path / "locks", timeout=0.3, poll=0.05)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    slots = acquire(1, ["7"], lock_dir=tmp_path / "locks", timeout=10, poll=0.05)
    assert slots.devices == ["7"]
    slots.release()


@pytest.mark.slow
def test_the_cli_sets_the_devices_of_the_command(tmp_path):
    args = ["on-gpus", "--gpus", "2", "--devices", "3,5,9", "--lock-dir", str(tmp_path), "--",
            sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    assert rld(*args, cwd=REPO).stdout.strip() == "3,5"
    failed = rld("on-gpus", "--gpus", "4", "--devices", "0,1", "--lock-dir", str(tmp_path), "--", "true", check=False)
    assert failed.returncode == 1 and "asks for 4 GPUs but this machine offers 2 (0,1)" in failed.stderr
    # --gpus 0 (a CPU job): the command runs as it is, on the caller's devices, taking no slot.
    plain = rld("on-gpus", "--gpus", "0", "--lock-dir", str(tmp_path / "unused"), "--", sys.executable, "-c",
                "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])", env={"CUDA_VISIBLE_DEVICES": "7"})
    assert plain.stdout.strip() == "7" and not (tmp_path / "unused").exists()


def test_gpu_jobs_size_their_view_workers_from_the_jobs_cpus_not_the_nodes(monkeypatch):
    """Four students sharing a GPU on a 64-core node, each given `threads: 4`, must not start
    eight workers each: a job's budget is its affinity capped by OMP_NUM_THREADS."""
    import torch

    from pipeline.runtime import cpu_budget, resolve_workers

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu_budget() == 4 and resolve_workers(None, cuda) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_budget() == 64 and resolve_workers(None, cuda) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})  # a one-CPU cgroup
    assert resolve_workers(None, cuda) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # OMP_NUM_THREADS above the affinity
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert cpu_budget() == 2 and resolve_workers(None, cuda) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not-a-number")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert cpu_budget() == 1
    assert resolve_workers(None, cpu) == 0 and resolve_workers(5, cuda) == 5


def test_a_job_holds_exactly_its_slots_and_prefers_the_emptiest_device(tmp_path):
    """In one process, as a job runs until it execs: counting free slots locks each one for a
    moment, and only the slot taken may stay locked. Two slots per device: the second job goes
    to the other, emptier device, and the slots the first two jobs only counted are still free."""
    locks = tmp_path / "locks"
    a = acquire(1, ["0", "1"], per_gpu=2, lock_dir=locks, timeout=0)
    b = acquire(1, ["0", "1"], per_gpu=2, lock_dir=locks, timeout=0)
    assert (a.devices, b.devices) == (["0"], ["1"])
    c = acquire(1, ["0"], per_gpu=2, lock_dir=locks, timeout=0)  # device 0's second slot, only probed by a and b
    d = acquire(1, ["1"], per_gpu=2, lock_dir=locks, timeout=0)
    with pytest.raises(TimeoutError, match="no 1 GPU"):
        acquire(1, ["0", "1"], per_gpu=2, lock_dir=locks, timeout=0)
    for slots in (a, b, c, d):
        slots.release()
    assert acquire(2, ["0", "1"], per_gpu=1, lock_dir=locks, timeout=0).devices == ["0", "1"]


def test_a_job_waiting_for_several_devices_holds_none_of_them(tmp_path):
    """A two-device job that finds only one device free gives it back while it waits: holding
    it would starve one-device jobs, and two such jobs could deadlock each other."""
    locks = tmp_path / "locks"
    busy = acquire(1, ["1"], lock_dir=locks, timeout=0)
    with pytest.raises(TimeoutError, match="no 2 GPU"):
        acquire(2, ["0", "1"], lock_dir=locks, timeout=0.2, poll=0.05)
    free = acquire(1, ["0"], lock_dir=locks, timeout=0)
    assert free.devices == ["0"]
    free.release()
    busy.release()


def test_jobs_of_different_slurm_allocations_use_different_lock_folders():
    """Inside SLURM every job sees its own GPUs as 0..n-1: one machine-wide gpu0 lock would make
    jobs on different physical GPUs wait for each other (tests/test_slurm.py runs this for real)."""
    base = Path("/tmp") / f"rld-gpu-slots-{os.getuid()}"
    assert default_lock_dir({}) == base
    assert default_lock_dir({"SLURM_JOB_ID": "42"}) == base / "slurm-job-42"
    assert default_lock_dir({"SLURM_JOB_ID": "43"}) != default_lock_dir({"SLURM_JOB_ID": "42"})
