"""Where and how models run: device choice, autocast, seeding, code version."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pipeline._lazy import np, torch

if TYPE_CHECKING:
    import torch  # noqa: F811

AMP_CHOICES = ("auto", "off", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def cpu_budget() -> int:
    """The CPUs this job may use: those it is pinned to (taskset, a SLURM cgroup), capped by
    OMP_NUM_THREADS, which the Snakefile sets to the job's `threads`. On a shared GPU node
    (several students per GPU) the node's CPU count would oversubscribe it many times over."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cpus, int(omp))) if omp.isdigit() and int(omp) > 0 else max(1, cpus)


def resolve_workers(workers: int | None, device: torch.device) -> int:
    """None means: on CUDA, one view worker per CPU of the job's budget beyond the main
    process, 1 to 8; on CPU none, since workers would take cores from the model itself."""
    if workers is not None:
        return workers
    return min(8, max(1, cpu_budget() - 1)) if device.type == "cuda" else 0


def resolve_amp(amp: str, device: torch.device) -> str:
    """'auto' means bf16 on CUDA and off on CPU, where it changes numerics for a 2x speed-up."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast is for CUDA; use bf16 on CPU")
    return amp


def resolve_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """None means on for CUDA, where tensor cores want it, and off on a CPU.

    On a CPU it buys ~3% of teacher inference (resnet32x4: 160 vs 165 img/s on 2 cores), and
    the contiguous layout is PyTorch's default, the one the bitwise parity tests pin.
    """
    if channels_last is None:
        return device.type == "cuda"
    return channels_last


@contextlib.contextmanager
def autocast(device: torch.device, amp: str, *, cache: bool = True) -> Iterator[None]:
    """Autocast to `amp` ("off", "bf16", "fp16"). `cache=False` for CUDA graph capture: the
    cache of cast weights would hold tensors from outside the graph (same values either way)."""
    if amp == "off":
        yield
        return
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache):
        yield


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@functools.cache
def code_version() -> str:
    """Package version plus the git commit the code runs from, when it runs from a checkout."""
    from pipeline import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "pipeline"],
            cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__
