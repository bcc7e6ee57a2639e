"""Stage 2: the training loop. One student, one teacher signal, one output folder.

The teacher signal says, per epoch, which view each sample uses and what the teacher
said about it: read from a logit store (`StoreSignal`, the point of this project), run
live on the same views (`OnlineSignal`, the way mdistiller works, kept for parity), or
absent (`ViewsOnly`, plain cross-entropy training). The next epoch's plan is prepared in a
background thread while the current epoch trains, so the store is never the bottleneck.

Everything random is a pure function of (seed, epoch): model init, sample order, which
slot a sample replays. So a killed run resumes from its last epoch checkpoint and ends
with the same weights, and W DDP ranks train the same student as one process.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline import models
from pipeline.data import ImageSet, to_device, to_model_input
from pipeline.distributed import World, all_sum, close_world, init_world, rank_slice, sync_batchnorm
from pipeline.inference import predict_test, topk_accuracy
from pipeline.losses import make_objective
from pipeline.runtime import autocast, code_version, resolve_amp, resolve_device, resolve_workers
from pipeline.store import LogitStore, StoreError
from pipeline.teacher import Teacher
from pipeline.views import ViewRequest, ViewSpec, batch_indices, view_loader

# Options that change how fast a run goes but not what it computes: a run may resume with others.
RUNTIME_ONLY = ("num_workers", "eval_batch_size")


@dataclass
class TrainConfig:
    """A student run. Defaults are the paper's CIFAR-100 recipe (RLD.md)."""

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
    num_workers: int | None = None  # None: up to 8 on CUDA, 0 on CPU
    eval_batch_size: int = 256

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


def epoch_order(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_samples)


# ---------------------------------------------------------------------------------------
# Teacher signals


@dataclass
class EpochPlan:
    params: np.ndarray  # [N, k] view parameters of each sample this epoch
    logits: torch.Tensor | None = None  # [N, C] cached teacher logits (stored dtype)
    crc: np.ndarray | None = None  # [N] crc32 of the input the teacher saw


class ViewsOnly:
    """No teacher: views drawn from the spec, as a CE baseline or a teacher's own training."""

    kind = "none"

    def __init__(self, spec: ViewSpec):
        self.spec = spec

    def plan(self, epoch: int, seed: int, num_samples: int) -> EpochPlan:
        slots = self.spec.slots_for_epoch(epoch, num_samples, seed)
        params = np.empty((num_samples, len(self.spec.family.param_names)), dtype=self.spec.family.param_dtype)
        for slot in np.unique(slots):
            rows = np.flatnonzero(slots == slot)
            params[rows] = self.spec.params(rows, int(slot))
        return EpochPlan(params)

    def batch_logits(self, plan: EpochPlan, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        return None

    def test_logits(self, test: ImageSet, device: torch.device) -> np.ndarray | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "views": self.spec.to_dict()}


class StoreSignal(ViewsOnly):
    """Teacher logits and view parameters replayed from a complete logit store."""

    kind = "store"

    def __init__(self, store: LogitStore):
        store.require_complete()
        self.store = store
        super().__init__(ViewSpec.from_dict(store.attrs["views"]))

    def plan(self, epoch: int, seed: int, num_samples: int) -> EpochPlan:
        views, logits, crc = self.store.gather(self.spec.slots_for_epoch(epoch, num_samples, seed))
        finite = np.isfinite(logits).all(1)
        if not finite.all():
            raise StoreError(f"{self.store.path}: non-finite teacher logits for sample {int(np.flatnonzero(~finite)[0])} at epoch {epoch + 1}")
        return EpochPlan(views, torch.from_numpy(logits), crc)

    def batch_logits(self, plan: EpochPlan, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        return plan.logits[indices].float()

    def test_logits(self, test: ImageSet, device: torch.device) -> np.ndarray | None:
        return self.store.eval_logits()[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "store": str(self.store.path), "store_id": self.store.id,
                "teacher": self.store.attrs["teacher"], "views": self.spec.to_dict()}


class OnlineSignal(ViewsOnly):
    """The teacher runs every step on the very batch the student sees (mdistiller's way)."""

    kind = "online"

    def __init__(self, teacher: Teacher, spec: ViewSpec, amp: str = "off", channels_last: bool = True):
        super().__init__(spec)
        self.teacher, self.amp, self.channels_last = teacher, amp, channels_last

    def batch_logits(self, plan: EpochPlan, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        model = self.teacher.model.to(x.device).eval()
        with torch.inference_mode(), autocast(x.device, self.amp):
            return model(x).float().clone()

    def test_logits(self, test: ImageSet, device: torch.device) -> np.ndarray | None:
        return predict_test(self.teacher.model.to(device), test, self.spec.family, device=device,
                            amp=self.amp, channels_last=self.channels_last)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "teacher": self.teacher.describe(), "views": self.spec.to_dict()}


# ---------------------------------------------------------------------------------------
# The loop


class RunExists(RuntimeError):
    """The output folder holds a finished run, or a checkpoint of a different run."""


def train(
    cfg: TrainConfig,
    train_set: ImageSet,
    test_set: ImageSet,
    signal: ViewsOnly,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    overwrite: bool = False,
    stop_after: int | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a student in `out_dir`; returns the summary written there.

    `stop_after` returns after that many epochs of this call, as a kill between epochs
    would; `on_step(epoch, step, terms)` sees every step's loss terms (for parity checks).
    """
    out = Path(out_dir)
    objective = make_objective(cfg.loss, **cfg.loss_options)
    if objective.needs_teacher and signal.kind == "none":
        raise ValueError(f"loss {cfg.loss!r} needs a teacher: give a logit store or an online teacher")
    device = resolve_device(cfg.device)
    # Per-step value checks cost a host sync each step on a GPU; there, cached logits are
    # checked once per epoch and the epoch's loss is checked for NaN instead.
    objective = objective.replace(validate=device.type == "cpu")
    amp = resolve_amp(cfg.amp, device)
    world = init_world(device.type)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    try:
        return _train(cfg, objective, train_set, test_set, signal, out, device, amp, world, progress, overwrite,
                      stop_after, on_step)
    finally:
        close_world(world)


def _train(cfg, objective, train_set, test_set, signal, out, device, amp, world: World, progress, overwrite,  # noqa: ANN001, ANN202
           stop_after, on_step):
    summary_path, ckpt_path = out / "summary.json", out / "checkpoint.pt"
    if summary_path.exists() and not overwrite:
        raise RunExists(f"{out} already holds a finished run (summary.json); pass --force to train it again")
    resolved = {**cfg.to_dict(), "loss_options": dict(objective.params)}

    torch.manual_seed(cfg.seed)
    model = models.build(cfg.arch, train_set.num_classes, in_channels=train_set.in_channels)
    if world.distributed:
        model = sync_batchnorm(model, device.type)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")  # fp16 gradients underflow unscaled

    history: list[dict[str, Any]] = []
    best = {"top1": -1.0, "epoch": 0}
    start_epoch = 0
    if ckpt_path.exists() and not overwrite:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        differs = [k for k in resolved if k not in RUNTIME_ONLY and ckpt["config"].get(k) != resolved[k]]
        if differs or ckpt["signal"] != signal.describe():
            what = ", ".join(differs) or "teacher signal (store, teacher or views)"
            raise RunExists(f"{out} holds a checkpoint of a different run (differs in: {what}); pass --force to start over")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler", {}))
        history, best, start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"]
        torch.set_rng_state(ckpt["torch_rng"])
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", {"config": resolved, "signal": signal.describe(), "dataset": train_set.describe(),
                                          "test_dataset": test_set.describe(), "world_size": world.size,
                                          "code_version": code_version()})

    net: nn.Module = model
    if world.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    labels_on_device = torch.from_numpy(train_set.labels).to(device)
    workers = resolve_workers(cfg.num_workers, device)
    teacher_test = signal.test_logits(test_set, device) if world.is_main else None
    teacher_test_acc = topk_accuracy(teacher_test, test_set.labels) if teacher_test is not None else {}
    family, n = signal.spec.family, len(train_set)
    prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="epoch-plan")
    future = prefetch.submit(signal.plan, start_epoch, cfg.seed, n) if start_epoch < cfg.epochs else None
    bar = tqdm(total=cfg.epochs, initial=start_epoch, unit="epoch", disable=not (progress and world.is_main), desc=out.name)
    epochs_this_call = 0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            plan = future.result()
            if plan.logits is not None:
                plan.logits = plan.logits.to(device)  # one copy per epoch, then gathers on the device
            if epoch + 1 < cfg.epochs:
                future = prefetch.submit(signal.plan, epoch + 1, cfg.seed, n)
            lr = learning_rate(cfg, epoch + 1)
            for group in optimizer.param_groups:
                group["lr"] = lr

            global_batches = batch_indices(n, cfg.batch_size, epoch_order(cfg.seed, epoch, n))
            mine = [rank_slice(b, world) for b in global_batches]
            loader = view_loader(family, [ViewRequest(train_set, idx, plan.params[idx]) for idx in mine],
                                 num_workers=workers, pin_memory=device.type == "cuda")
            net.train()
            totals: dict[str, torch.Tensor] = {}
            correct = torch.zeros((), device=device)
            start = time.perf_counter()
            for step, (views, _labels, idx, crc) in enumerate(loader):
                if step == 0 and plan.crc is not None and not np.array_equal(crc, plan.crc[idx].astype(np.int64)):
                    raise StoreError(
                        "the views this run builds differ from the ones the teacher saw (input crc32 mismatch): "
                        "the dataset or view code changed since the store was written"
                    )
                x = to_model_input(views, train_set.mean, train_set.std, device=device, channels_last=cfg.channels_last)
                idx = to_device(idx, device)
                y = labels_on_device[idx]
                teacher_logits = signal.batch_logits(plan, x, idx)
                with autocast(device, amp):
                    student_logits = net(x)
                terms = objective(student_logits.float(), teacher_logits, y, epoch + 1)
                # Each rank's mean is scaled by its share of the global batch, so DDP's
                # gradient average is exactly the global-batch mean.
                share = len(idx) * world.size / len(global_batches[step])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"] * share).backward()
                scaler.step(optimizer)
                scaler.update()
                for key, value in terms.items():
                    totals[key] = totals.get(key, 0) + value.detach() * len(idx)
                if on_step is not None:
                    on_step(epoch + 1, step, {k: float(v.detach()) for k, v in terms.items()})
                correct += (student_logits.argmax(1) == y).sum()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            sums = all_sum(torch.stack([*totals.values(), correct.float()]).cpu())
            if not torch.isfinite(sums).all():
                raise RuntimeError(f"non-finite training loss in epoch {epoch + 1} ({', '.join(totals)}: {sums[:-1].tolist()})")
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
            row.update({f"loss_{k}": float(v) / n for k, v in zip(totals, sums[:-1])})
            row["train_top1"] = 100.0 * float(sums[-1]) / n
            row["images_per_s"] = n / seconds
            row["epoch_seconds"] = seconds

            if world.is_main:
                test_logits = predict_test(model, test_set, family, device=device, batch_size=cfg.eval_batch_size,
                                           amp=amp, channels_last=cfg.channels_last)
                acc = topk_accuracy(test_logits, test_set.labels)
                row.update({"test_top1": acc["top1"], "test_top5": acc["top5"]})
                if teacher_test is not None:
                    row["teacher_agreement"] = 100.0 * float((test_logits.argmax(1) == teacher_test.argmax(1)).mean())
                history.append(row)
                if acc["top1"] > best["top1"]:
                    best = {"top1": acc["top1"], "top5": acc["top5"], "epoch": epoch + 1}
                    _save_student(out / "best.pt", model, cfg, train_set, family, acc, signal, epoch + 1)
                _atomic_torch_save(
                    {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(),
                     "history": history, "best": best, "config": resolved, "signal": signal.describe(),
                     "torch_rng": torch.get_rng_state()},
                    ckpt_path,
                )
                bar.set_postfix(loss=f"{row['loss_total']:.3f}", test_top1=f"{acc['top1']:.2f}", img_s=f"{row['images_per_s']:.0f}")
            bar.update()
            world.barrier()
            epochs_this_call += 1
            if stop_after is not None and epochs_this_call >= stop_after and epoch + 1 < cfg.epochs:
                return {"stopped_after_epoch": epoch + 1}
    finally:
        bar.close()
        prefetch.shutdown(wait=True, cancel_futures=True)

    summary: dict[str, Any] = {}
    if world.is_main:
        final_acc = {"top1": history[-1]["test_top1"], "top5": history[-1]["test_top5"]}
        _save_student(out / "final.pt", model, cfg, train_set, family, final_acc, signal, cfg.epochs)
        summary = {
            "name": out.name,
            "arch": cfg.arch,
            "loss": cfg.loss,
            "loss_options": dict(objective.params),
            "seed": cfg.seed,
            "epochs": cfg.epochs,
            "signal": signal.describe(),
            "dataset": train_set.describe(),
            "teacher_test": teacher_test_acc,
            "final": {**final_acc, **({"teacher_agreement": history[-1]["teacher_agreement"]} if teacher_test is not None else {})},
            "best": best,
            "images_per_s": float(np.mean([r["images_per_s"] for r in history])),
            "train_seconds": float(sum(r["epoch_seconds"] for r in history)),
            "world_size": world.size,
            "device": str(device),
            "amp": amp,
            "code_version": code_version(),
        }
        write_metrics(out, history)
        _write_json(summary_path, summary)
        ckpt_path.unlink(missing_ok=True)
    return summary


# ---------------------------------------------------------------------------------------
# Outputs


def _save_student(path: Path, model: nn.Module, cfg: TrainConfig, train_set: ImageSet, family: Any,
                  accuracy: dict[str, float], signal: ViewsOnly, epoch: int) -> None:
    """A student is saved as a teacher file, so it can teach in turn."""
    what = signal.describe()
    source = f"trained with loss {cfg.loss}" + (f" from store {what['store_id']}" if "store_id" in what else "")
    Teacher(
        arch=cfg.arch, num_classes=train_set.num_classes, in_channels=train_set.in_channels, model=model,
        dataset=train_set.describe(class_names=True), family=family.to_dict(),
        accuracy=accuracy, source=source, extra={"epoch": epoch, "config": cfg.to_dict()},
    ).save(path)


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """metrics.csv, metrics.json and curves.png from the per-epoch rows."""
    from pipeline.plots import plot_training_curves

    _write_json(out / "metrics.json", history)
    fields = list(dict.fromkeys(k for row in history for k in row))
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    plot_training_curves(history, out / "curves.png", title=out.name)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_teacher(
    cfg: TrainConfig,
    train_set: ImageSet,
    test_set: ImageSet,
    family: Any,
    out_path: str | os.PathLike,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> Teacher:
    """Plain CE training; the run lives in `<out>.run/` (resumable), the teacher file at `out`."""
    from pipeline.teacher import load_teacher

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise RunExists(f"{out_path} exists; pass --force to train it again")
    if cfg.loss != "ce":
        raise ValueError(f"a teacher is trained with loss 'ce', not {cfg.loss!r}")
    run_dir = out_path.with_suffix(".run")
    spec = ViewSpec(family, "per-epoch", cfg.epochs, seed=cfg.seed)
    if overwrite or not (run_dir / "summary.json").exists():
        train(cfg, train_set, test_set, ViewsOnly(spec), run_dir, progress=progress, overwrite=overwrite)
    teacher = load_teacher(run_dir / "final.pt")
    teacher.source = "trained"
    teacher.extra = {"recipe": cfg.to_dict(), "run": str(run_dir)}
    teacher.save(out_path)
    return teacher
