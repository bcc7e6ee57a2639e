"""A training run's recipe: the optimiser, its schedule and the run's settings.

The defaults are the paper's CIFAR-100 recipe (SGD 0.05, momentum 0.9, weight decay 5e-4,
batch 64, 240 epochs, x0.1 after epochs 150, 180 and 210, distillation warmed up over 20
epochs), and this is their one home: the CLI's defaults and the workflow's fall back to these
fields. Torch-free, so `--help` can show them at once.

The schedule follows the run's length: a run of E epochs that sets no milestones (or no
warm-up) gets the paper's, scaled by E / 240 (`TrainConfig.resolved`). A run of 20 epochs
decays after epochs 13, 15 and 18 and warms its distillation up over 1.67 epochs; kept at
150/180/210 and 20 it would never decay and never reach full distillation weight.
Milestones or a warm-up set by hand that reach past the run's end are refused, unless the
run says `force_schedule`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError

# Options that change how fast a run goes but not what it computes (beyond float rounding, for
# `compile`): a run may resume with others.
RUNTIME_ONLY = ("num_workers", "eval_batch_size", "compile", "threads")
DEFAULT_THREADS = 2  # the workflow's default; CPU kernels round differently with other thread counts

PAPER_EPOCHS = 240
PAPER_MILESTONES = (150, 180, 210)


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
    milestones: tuple[int, ...] | None = None  # None: the paper's 150/180/210 of 240, scaled to `epochs`
    lr_decay: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    num_workers: int | None = None  # None: runtime.resolve_workers
    threads: int = DEFAULT_THREADS  # torch's CPU threads: the same count gives the same student on a CPU
    eval_batch_size: int = 256
    compile: bool = False  # replay the training step as a CUDA graph (pipeline/step.py); CUDA only
    force_schedule: bool = False  # accept milestones and a warm-up that reach past the last epoch
    init: str | None = None  # start from these weights (a file, or "pretrained": the published ones)
    backbone_lr_scale: float = 1.0  # with `init`: the loaded layers learn at lr x this, a new classifier at lr

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = None if self.milestones is None else list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        if d.get("milestones") is not None:
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)

    def resolved(self) -> "TrainConfig":
        """This run with its schedule filled in: milestones, and the distillation warm-up of a
        method that has one, either as set or the paper's scaled to `epochs`. Refuses (a
        ConfigError with the numbers) milestones at or past the last epoch and a warm-up
        longer than the run, unless `force_schedule`."""
        from pipeline.methods import get_method

        milestones = self.milestones if self.milestones is not None else scale_milestones(self.epochs)
        options = dict(self.loss_options)
        method = get_method(self.loss)
        if method.has_warmup and "warmup" not in options:
            options["warmup"] = scale_warmup(float(method.defaults["warmup"]), self.epochs)
        if self.backbone_lr_scale != 1.0 and self.init is None:
            raise ConfigError("a backbone learning-rate scale needs weights to start from", setting="backbone_lr_scale")
        if not self.backbone_lr_scale > 0:
            raise ConfigError(f"the backbone learning-rate scale must be > 0, got {self.backbone_lr_scale}",
                              setting="backbone_lr_scale")
        if not self.force_schedule:
            late = [m for m in milestones if m >= self.epochs]
            if late:
                raise ConfigError(f"milestones {_epochs(late)} are at or past the last epoch ({self.epochs}): the learning "
                                  "rate would never decay there; drop them, or force the schedule", setting="milestones")
            if options.get("warmup", 0) > self.epochs:
                raise ConfigError(f"a warm-up of {options['warmup']:g} epochs is longer than the run ({self.epochs}): "
                                  "the distillation would never reach its full weight; shorten it, or force the schedule",
                                  setting="warmup")
        return dataclasses.replace(self, milestones=tuple(milestones), loss_options=options)

    def describe_schedule(self) -> str:
        """One line for the user: the schedule this (resolved) run trains with, and where it came from."""
        milestones = self.milestones or ()
        decay = (f"x{self.lr_decay:g} after epoch{'s' if len(milestones) > 1 else ''} {_epochs(milestones)}"
                 if milestones else "constant")
        line = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}, lr {self.lr:g} {decay}"
        warmup = self.loss_options.get("warmup")
        if warmup is not None:
            line += f", distillation warmed up over {warmup:.3g} epochs"
        return line


def scale_milestones(epochs: int) -> tuple[int, ...]:
    """The paper's milestones (150, 180, 210 of 240) scaled to a run of `epochs`: rounded half
    up, and only those inside the run (a very short run decays fewer times, or never)."""
    scaled = {int(m * epochs / PAPER_EPOCHS + 0.5) for m in PAPER_MILESTONES}
    return tuple(sorted(m for m in scaled if 1 <= m < epochs))


def scale_warmup(warmup: float, epochs: int) -> float:
    """A method's warm-up (in epochs of the paper's 240) scaled to a run of `epochs`."""
    return warmup * epochs / PAPER_EPOCHS


def _epochs(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """mdistiller's step schedule: x lr_decay after each milestone, epochs counted from 1
    (of a resolved run: `TrainConfig.resolved`)."""
    steps = sum(epoch > m for m in cfg.milestones or ())
    return cfg.lr * cfg.lr_decay**steps



def default(name: str) -> Any:
    """The default of a TrainConfig field (what a run gets when neither the CLI nor a config sets it)."""
    spec = TrainConfig.__dataclass_fields__[name]
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
