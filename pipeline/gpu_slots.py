"""GPU slots for jobs that share one machine: each job gets its own device(s).

Snakemake's local executor counts a `gpu` resource but does not say which device a job
should use (snakemake/snakemake#281), so every job would land on device 0. Here a device
has `per_gpu` slots, each an advisory lock file (`flock`); a job takes one free slot on
each of N devices and runs with CUDA_VISIBLE_DEVICES naming them. The kernel drops a
`flock` when the last descriptor of the lock closes, so a slot comes back when its job
ends in any way, `kill -9` included, and no stale state is ever left to clean up.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


def default_lock_dir(env: dict[str, str] | None = None) -> Path:
    """Where slot locks live: one folder per user, and inside a SLURM job one per allocation.

    SLURM already gives each job GPUs of its own, and where it constrains devices every job
    sees its GPUs as 0..n-1: one machine-wide lock on "gpu0" would make jobs on different
    GPUs wait for each other. Jobs inside one allocation (Snakemake under salloc/srun) still
    share slots.
    """
    env = os.environ if env is None else env
    base = Path("/tmp") / f"rld-gpu-slots-{os.getuid()}"
    job = env.get("SLURM_JOB_ID")
    return base / f"slurm-job-{job}" if job else base


DEFAULT_LOCK_DIR = default_lock_dir()


@dataclass
class Slots:
    """Slots held by this process: the devices they are on and the open lock files."""

    devices: list[str]
    fds: list[int]

    @property
    def visible_devices(self) -> str:
        return ",".join(self.devices)

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def visible_devices(env: dict[str, str] | None = None) -> list[str]:
    """The devices this machine offers: CUDA_VISIBLE_DEVICES if set, else every CUDA device."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def acquire(
    count: int,
    devices: Sequence[str],
    *,
    per_gpu: int = 1,
    lock_dir: Path = DEFAULT_LOCK_DIR,
    timeout: float | None = None,
    poll: float = 0.5,
) -> Slots:
    """Take one free slot on each of `count` devices, least-loaded devices first.

    Waits (polling) until enough devices have a free slot, holding nothing while it waits,
    so jobs asking for several devices cannot deadlock each other. `timeout` None waits
    forever; otherwise TimeoutError after that many seconds.
    """
    if count < 1:
        raise ValueError(f"a job needs at least 1 GPU slot, asked for {count}")
    if per_gpu < 1:
        raise ValueError(f"jobs_per_gpu must be >= 1, got {per_gpu}")
    if count > len(devices):
        raise ValueError(f"a job asks for {count} GPUs but this machine offers {len(devices)} ({','.join(devices) or 'none'})")
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        held: dict[str, int] = {}
        free_slots: dict[str, int] = {}
        for device in devices:
            # Count free slots per device (taking at most one), to prefer the emptiest devices.
            for slot in range(per_gpu):
                fd = _try_lock(lock_dir / f"gpu{device}.slot{slot}.lock")
                if fd is None:
                    continue
                free_slots[device] = free_slots.get(device, 0) + 1
                if device in held:
                    os.close(fd)
                else:
                    held[device] = fd
        chosen = sorted(held, key=lambda d: (-free_slots[d], devices.index(d)))[:count]
        for device in set(held) - set(chosen):
            os.close(held[device])
        if len(chosen) == count:
            chosen.sort(key=devices.index)
            return Slots(chosen, [held[d] for d in chosen])
        for device in chosen:
            os.close(held[device])
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no {count} GPU(s) with a free slot among {','.join(devices)} after {timeout:g} s")
        time.sleep(poll)


def exec_on(slots: Slots, command: Sequence[str]) -> None:
    """Replace this process by `command` on the slots' devices; the locks live as long as it does."""
    for fd in slots.fds:
        os.set_inheritable(fd, True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": slots.visible_devices}
    os.execvpe(command[0], list(command), env)
