"""Shared fixtures: tiny deterministic data, a tiny teacher, and a finished store.

Everything here is sized for a 2-core CI machine: a few hundred 32 px images, resnet8.

The suite runs on the CPU, whatever the machine has: its bitwise and 1e-6 checks are about
float32 CPU numerics (on CUDA, "auto" would mean bf16 autocast and TF32). Subprocesses see
no GPU (CUDA_VISIBLE_DEVICES=""), and in-process "auto" resolves to the CPU. A test marked
`gpu` is the exception: it sees the GPU, and is skipped where there is none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# The tests' tensors are tiny and often share the 2 cores with a subprocess: one thread
# each avoids OpenMP spinning against itself (10x slower steps on a loaded box).
torch.set_num_threads(1)
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                  "CUDA_VISIBLE_DEVICES": ""}
HAS_CUDA = torch.cuda.is_available()

REPO = Path(__file__).resolve().parents[1]
SYNTH = "synthetic:classes=4,train=96,test=40"


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
    cfg = TrainConfig(arch="resnet8", loss="ce", epochs=6, batch_size=8, milestones=(), seed=0, channels_last=False)
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


SHAPES = ("disc", "ring", "square", "cross")


def make_image_folder(root: Path, *, train: int = 60, test: int = 25, sides: tuple[int, int] = (20, 47),
                      seed: int = 0) -> Path:
    """A small own-data tree as users have them: `root/{train,val}/<shape>/*`.

    Each image is a shape (one class per shape) on a noisy background, with mixed sizes
    (`sides`, height and width drawn independently), PNG and JPEG, RGB and grey. A shape is
    told apart by its outline, so a view that magnifies the image far more than training
    did (a centre crop of an image scaled way up) sees a blob and guesses.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train), ("val", test)):
        for label, shape in enumerate(SHAPES):
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = (int(s) for s in rng.integers(sides[0], sides[1] + 1, 2))
                y, x = np.mgrid[0:h, 0:w].astype(np.float64)
                cy, cx = h / 2 + rng.uniform(-0.1, 0.1) * h, w / 2 + rng.uniform(-0.1, 0.1) * w
                r = rng.uniform(0.3, 0.42) * min(h, w)
                dy, dx = np.abs(y - cy), np.abs(x - cx)
                mask = {
                    "disc": np.hypot(dy, dx) <= r,
                    "ring": np.abs(np.hypot(dy, dx) - 0.75 * r) <= 0.25 * r,
                    "square": np.maximum(dy, dx) <= 0.85 * r,
                    "cross": (np.minimum(dy, dx) <= 0.3 * r) & (np.maximum(dy, dx) <= r),
                }[shape]
                background, colour = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
                colour = np.where(np.abs(colour - background) < 80, (background + 128) % 256, colour)
                pixels = np.where(mask[..., None], colour, background) + rng.normal(0, 20, (h, w, 3))
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                if i % 3 == 2:
                    image = image.convert("L")
                image.save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def workflow_dir(path: Path, config: dict) -> Path:
    """A copy of the workflow's layout (Snakefile + config/) in `path`, with `config` as its default config."""
    import yaml

    shutil.copy(REPO / "Snakefile", path / "Snakefile")
    (path / "config").mkdir()
    shutil.copy(REPO / "config" / "schema.yaml", path / "config" / "schema.yaml")
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return path
