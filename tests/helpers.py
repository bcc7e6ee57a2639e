"""What several test modules use: paths, the tiny dataset, running the CLI, building
student runs and comparing their weights, a labelled image folder, a workflow folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SYNTH = "synthetic:classes=4,train=96,test=40"
# Subprocesses: one thread each (the tests share 2 cores), this checkout's code, no GPU.
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
HAS_CUDA = torch.cuda.is_available()
POLICIES = ["per-epoch", "pool", "exhaustive"]


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


def cfg(**kw):
    """A tiny student run: resnet8, RLD with a 2-epoch warm-up, 3 epochs of batch 32."""
    from pipeline.recipe import TrainConfig

    base = dict(arch="resnet8", loss="rld", epochs=3, batch_size=32, milestones=(2,), seed=1,
                loss_options={"warmup": 2}, threads=1)
    return TrainConfig(**{**base, **kw})


# `rld student train` of a tiny student; add --store (or a dataset), --loss and --out.
STUDENT = ["student", "train", "--arch", "resnet8", "--epochs", "2", "--batch-size", "32", "--milestones", "",
           "--warmup", "1", "--no-channels-last", "--quiet"]


def update_distance(run: Path, reference: Path, init: Path, buffers: bool = False) -> float:
    """|u_run - u_ref| / |u_ref|, u = final - init over all parameters (or BatchNorm's
    running statistics): how far a run's weight update is from the reference update."""
    a, b, w0 = weights(run), weights(reference), weights(init)
    keys = [k for k in b if b[k].is_floating_point() and ("running_" in k) == buffers]
    if buffers:  # BatchNorm starts from mean 0, variance 1, whatever the init run did
        w0 = {k: torch.zeros_like(b[k]) if k.endswith("mean") else torch.ones_like(b[k]) for k in keys}
    u_ref = torch.cat([(b[k].double() - w0[k].double()).flatten() for k in keys])
    u_run = torch.cat([(a[k].double() - w0[k].double()).flatten() for k in keys])
    return float((u_run - u_ref).norm() / u_ref.norm())


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def max_weight_delta(a, b) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


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
