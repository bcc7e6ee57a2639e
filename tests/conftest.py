"""Shared fixtures: tiny deterministic data, a tiny teacher, and a finished store.

Everything here is sized for a 2-core CI machine: a few hundred 32 px images, resnet8.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The tests' tensors are tiny and often share the 2 cores with a subprocess: one thread
# each avoids OpenMP spinning against itself (10x slower steps on a loaded box).
torch.set_num_threads(1)
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

REPO = Path(__file__).resolve().parents[1]
SYNTH = "synthetic:classes=4,train=96,test=40"


@pytest.fixture(scope="session")
def synth():
    from pipeline.data import load_splits

    return load_splits(SYNTH)


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory, synth):
    """A resnet8 teacher trained for 2 epochs on the synthetic set (a few seconds)."""
    from pipeline.inference import default_family
    from pipeline.train import TrainConfig, train_teacher

    train_set, test_set = synth
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    cfg = TrainConfig(arch="resnet8", loss="ce", epochs=2, batch_size=32, milestones=(), seed=0)
    train_teacher(cfg, train_set, test_set, default_family(train_set), path, progress=False)
    return path


@pytest.fixture(scope="session")
def teacher(teacher_file):
    from pipeline.teacher import load_teacher

    return load_teacher(teacher_file)


def rld(*args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `rld` CLI in a fresh process, as a user or Snakemake would."""
    proc = subprocess.run(
        [sys.executable, "-m", "stages.cli", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, **SUBPROCESS_ENV, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rld {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli(*args: str):
    """Run the `rld` CLI in this process (fast; for checking outputs and error messages)."""
    from click.testing import CliRunner

    from stages.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)
