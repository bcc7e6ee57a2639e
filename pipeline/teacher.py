"""Teacher files: weights plus everything downstream needs to name exactly which teacher it used.

A teacher file is a `torch.save`d dict (readable with weights_only=True):

    format            "rld-teacher", format_version 1
    arch, num_classes, in_channels
    model             the state dict (so mdistiller-style loaders read it too)
    weights_sha256    sha256 over the state dict's names, dtypes, shapes and bytes
    dataset           the train split it is meant for (name, subset, fingerprint, ...)
    family            the view family its test accuracy was measured with
    accuracy          {"top1", "top5"} on the un-augmented test split, in percent
    source            "trained" (with its recipe) or "imported from <file>"

A teacher is made here: trained with cross-entropy (`train_teacher`), or imported from
mdistiller / torchvision weights (`import_teacher`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline import models
from pipeline.errors import RunExists, TeacherFileError
from pipeline.files import save_torch
from pipeline.views import family_from_dict

if TYPE_CHECKING:
    from pipeline.recipe import TrainConfig

TEACHER_FORMAT = "rld-teacher"
TEACHER_FORMAT_VERSION = 1


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of the weights themselves, independent of how the file was pickled."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Teacher:
    arch: str
    num_classes: int
    in_channels: int
    model: nn.Module
    dataset: dict[str, Any]
    family: dict[str, Any]
    accuracy: dict[str, float]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def weights_sha256(self) -> str:
        return weights_sha256(self.model.state_dict())

    def describe(self) -> dict[str, Any]:
        """The teacher record of a store's provenance."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "weights_sha256": self.weights_sha256,
            "accuracy": self.accuracy,
            "source": self.source,
            "file": self.path,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a killed save never leaves a half-written teacher behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        payload = {
            "format": TEACHER_FORMAT,
            "format_version": TEACHER_FORMAT_VERSION,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "model": state,
            "weights_sha256": weights_sha256(state),
            "dataset": self.dataset,
            "family": self.family,
            "accuracy": self.accuracy,
            "source": self.source,
            **({"extra": self.extra} if self.extra else {}),
        }
        save_torch(payload, path)
        self.path = str(path)



def load_teacher(path: str | os.PathLike, device: torch.device | str = "cpu") -> Teacher:
    """Read a teacher file; its weights must still hash to the recorded sha256."""
    path = Path(path)
    if not path.is_file():
        raise TeacherFileError(f"{path}: no such teacher file (train a teacher, or import weights, to make one)",
                               remedy="make", missing=True)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable teacher file ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != TEACHER_FORMAT:
        raise TeacherFileError(f"{path}: not an rld teacher file (no format={TEACHER_FORMAT!r}); import "
                               "mdistiller or torchvision weights to make one", remedy="import")
    missing = [k for k in ("arch", "num_classes", "in_channels", "model", "weights_sha256") if k not in payload]
    if missing:
        raise ValueError(f"{path}: teacher file lacks field(s) {missing}")
    digest = weights_sha256(payload["model"])
    if digest != payload["weights_sha256"]:
        raise ValueError(f"{path}: weights hash {digest[:12]}… differs from the recorded {payload['weights_sha256'][:12]}… (file corrupted or edited)")
    if payload.get("family"):
        try:
            family_from_dict(payload["family"])
        except (ValueError, TypeError) as err:
            # Its recorded accuracy was measured on other test views; the weights are fine.
            raise TeacherFileError(f"{path}: its test accuracy was measured with {err}; import its weights again to "
                                   "measure it on today's test view", remedy="reimport", arch=payload["arch"]) from None
    model = models.build(payload["arch"], payload["num_classes"], in_channels=payload["in_channels"])
    models.load_weights(model, payload["model"], arch=payload["arch"])
    return Teacher(
        arch=payload["arch"], num_classes=payload["num_classes"], in_channels=payload["in_channels"],
        model=model.to(device).eval(), dataset=payload.get("dataset", {}), family=payload.get("family", {}),
        accuracy=payload.get("accuracy", {}), source=payload.get("source", ""),
        extra=payload.get("extra", {}), path=str(path),
    )


def evaluate_teacher(teacher: Teacher, test: Any, family: Any, *, device: torch.device, amp: str = "off", batch_size: int = 256) -> dict[str, float]:
    """Top-1/top-5 (%) on the un-augmented test split; recorded in the teacher file."""
    from pipeline.inference import Numerics, predict_test, topk_accuracy

    logits = predict_test(teacher.model, test, family, device=device, numerics=Numerics(device.type, amp),
                          batch_size=batch_size)
    return topk_accuracy(logits, test.labels)


def import_teacher(
    arch: str, weights: str | os.PathLike, train: Any, test: Any, family: Any, *,
    device: torch.device, amp: str = "off",
) -> Teacher:
    """Wrap mdistiller / torchvision / DDP weights as a teacher file, measuring test accuracy."""
    model = models.build(arch, train.num_classes, in_channels=train.in_channels)
    models.load_weights(model, weights, arch=arch)
    teacher = Teacher(
        arch=arch, num_classes=train.num_classes, in_channels=train.in_channels, model=model.eval(),
        dataset=train.describe(class_names=True), family=family.to_dict(),
        accuracy={}, source=f"imported from {Path(weights).name}",
    )
    teacher.accuracy = evaluate_teacher(teacher, test, family, device=device, amp=amp)
    return teacher


def train_teacher(
    cfg: TrainConfig,
    train_set: Any,
    test_set: Any,
    family: Any,
    out_path: str | os.PathLike,
    *,
    val_set: Any | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Teacher:
    """Plain CE training; the run lives in `<out>.run/` (resumable), the teacher file at `out`.

    The teacher is the last epoch's weights (a teacher's recipe is fixed, nothing is selected);
    with a `val_set` its validation accuracy is recorded beside the test accuracy.
    """
    from pipeline.signals import ViewsOnly  # the loop reads teacher files: imported here, not above
    from pipeline.train import train
    from pipeline.views import ViewSpec

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise RunExists(f"{out_path} exists")
    if cfg.loss != "ce":
        raise ValueError(f"a teacher is trained with loss 'ce', not {cfg.loss!r}")
    run_dir = out_path.with_suffix(".run")
    spec = ViewSpec(family, "per-epoch", cfg.epochs, seed=cfg.seed)
    if overwrite or not (run_dir / "summary.json").exists():
        train(cfg, train_set, test_set, ViewsOnly(spec), run_dir, val_set=val_set, progress=progress, overwrite=overwrite)
    teacher = load_teacher(run_dir / "final.pt")
    teacher.source = "trained"
    teacher.extra = {"recipe": cfg.to_dict(), "run": str(run_dir), **({"val": teacher.extra["val"]} if "val" in teacher.extra else {})}
    teacher.save(out_path)
    return teacher
