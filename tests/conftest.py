"""Shared fixtures: tiny deterministic data, a tiny teacher, and a finished store (helpers.py
holds the functions and constants test modules import).

Everything here is sized for a 2-core CI machine: a few hundred 32 px images, resnet8.

The suite runs on the CPU, whatever the machine has: its bitwise and 1e-6 checks are about
float32 CPU numerics (on CUDA, "auto" would mean bf16 autocast and TF32). Subprocesses see
no GPU (CUDA_VISIBLE_DEVICES=""), and in-process "auto" resolves to the CPU. A test marked
`gpu` is the exception: it sees the GPU, and is skipped where there is none.
"""

from __future__ import annotations

import os

import pytest
import torch

from helpers import HAS_CUDA, SYNTH

# The tests' tensors are tiny and often share the 2 cores with a subprocess: one thread
# each avoids OpenMP spinning against itself (10x slower steps on a loaded box).
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_folder(tmp_path_factory):
    """Remembered decode checks (pipeline.data.decode_check_cache) go to a folder of the test run."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(autouse=True)
def _one_thread_after_each_test():
    """A stage run in-process sets the thread count its --threads asks for; later tests must not
    inherit it (float sums round by how the work is split)."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    """In-process, device "auto" means the CPU except in tests marked `gpu`."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def pytest_terminal_summary(terminalreporter):
    """Which kernels this run rounded with (`make test-kernels` forces others), even with -q."""
    forced = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if k in os.environ}
    terminalreporter.write_line(f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}"
                                + (f", forced: {forced}" if forced else ""))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth():
    from pipeline.data import load_splits

    return load_splits(SYNTH)


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory, synth):
    """A resnet8 teacher that gets the synthetic test split right: 100% top-1 (chance: 25%).

    72 steps of batch 8 (~2 s): with fewer, BatchNorm's running statistics lag the
    weights and the eval-mode teacher is near chance (2 epochs of batch 32: 30%). A good
    teacher is what lets a test tell a student that learns from it from one that does not.
    """
    from pipeline.inference import default_family
    from pipeline.recipe import TrainConfig
    from pipeline.teacher import train_teacher

    train_set, test_set = synth
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    cfg = TrainConfig(arch="resnet8", loss="ce", epochs=6, batch_size=8, milestones=(), seed=0, channels_last=False,
                      threads=1)
    train_teacher(cfg, train_set, test_set, default_family(train_set), path, progress=False)
    return path


@pytest.fixture(scope="session")
def teacher(teacher_file):
    from pipeline.teacher import load_teacher

    return load_teacher(teacher_file)


@pytest.fixture(scope="session")
def store32(tmp_path_factory, teacher, synth):
    """A float32 per-epoch store of the session teacher: 3 epochs of views, `rld dump`'s
    default numerics (on a CPU: no autocast, contiguous layout)."""
    from pipeline.dump import dump
    from pipeline.store import LogitStore
    from pipeline.views import ViewSpec

    train_set, test_set = synth
    path = tmp_path_factory.mktemp("store") / "s32.zarr"
    dump(teacher, train_set, test_set, ViewSpec.parse("per-epoch:3", "crop", seed=5), path, dtype="float32",
         progress=False)
    return LogitStore.open(path)
