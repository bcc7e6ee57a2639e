"""Shared set-up for the benchmarks: CIFAR-size synthetic data and randomly initialised teachers.

Speed does not depend on what the weights or pixels are, so no dataset or checkpoint is
needed: the numbers are the same for CIFAR-100 and resnet32x4's released weights.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from pipeline import models
from pipeline.data import ImageSet, load_splits
from pipeline.runtime import resolve_amp, resolve_device
from pipeline.teacher import Teacher

RESULTS = Path(__file__).parent / "results"


def synthetic_cifar(samples: int, test: int = 256, classes: int = 100) -> tuple[ImageSet, ImageSet]:
    return load_splits(f"synthetic:classes={classes},train={samples},test={test},size=32,channels=3")


def random_teacher(arch: str, train: ImageSet) -> Teacher:
    torch.manual_seed(0)
    model = models.build(arch, train.num_classes, in_channels=train.in_channels)
    return Teacher(arch=arch, num_classes=train.num_classes, in_channels=train.in_channels, model=model.eval(),
                   dataset=train.describe(), family={}, accuracy={}, source="random init (benchmark)")


def device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", help="auto: bf16 on CUDA, off on CPU")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")


def resolve(args: argparse.Namespace) -> tuple[torch.device, str]:
    device = resolve_device(args.device)
    return device, resolve_amp(args.amp, device)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{result['device_type']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
