"""A training run's recipe: the optimiser, its schedule and the run's settings.

The defaults are the paper's CIFAR-100 recipe (SGD 0.05, momentum 0.9, weight decay 5e-4,
batch 64, 240 epochs, x0.1 after epochs 150, 180 and 210), and this is their one home: the
CLI's defaults and the workflow's fall back to these fields. Torch-free, so `--help` can show
them at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Options that change how fast a run goes but not what it computes (beyond float rounding, for
# `compile`): a run may resume with others.
RUNTIME_ONLY = ("num_workers", "eval_batch_size", "compile")


@dataclass
class TrainConfig:
    """A training run (student, or teacher with loss "ce"). Defaults are the paper's CIFAR-100 recipe."""

    arch: str
    loss: str = "rld"
    loss_options: dict[str, float | bool] = field(default_factory=dict)
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (150, 180, 210)
    lr_decay: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    num_workers: int | None = None  # None: runtime.resolve_workers
    eval_batch_size: int = 256
    compile: bool = False  # replay the training step as a CUDA graph (pipeline/step.py); CUDA only

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["milestones"] = tuple(d.get("milestones", ()))
        return cls(**d)


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """mdistiller's step schedule: x lr_decay after each milestone, epochs counted from 1."""
    steps = sum(epoch > m for m in cfg.milestones)
    return cfg.lr * cfg.lr_decay**steps




def default(name: str) -> Any:
    """The default of a TrainConfig field (what a run gets when neither the CLI nor a config sets it)."""
    spec = TrainConfig.__dataclass_fields__[name]
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
