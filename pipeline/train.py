"""Stage 2: the training loop. One student, one teacher signal, one output folder.

The teacher signal (`pipeline.signals`) says, per epoch, which view each sample uses and
what the teacher said about it. The next epoch's plan is prepared in a background thread
while the current epoch trains, so the store is never the bottleneck.

Everything random is a pure function of (seed, epoch): model init, sample order, which
slot a sample replays. So a killed run resumes from its last epoch checkpoint and ends
with the same weights, and W DDP ranks train the same student as one process.
"""

from __future__ import annotations

import csv
import math
import os
import sys
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
from pipeline.errors import NeedsTeacher, RunExists, TrainingDiverged, writing
from pipeline.files import file_sha256, save_torch, write_json
from pipeline.inference import Numerics, predict_test, rank_correlation, topk_accuracy
from pipeline.losses import make_objective
from pipeline.recipe import RUNTIME_ONLY, TrainConfig, learning_rate
from pipeline.runtime import code_version, resolve_amp, resolve_device, resolve_workers
from pipeline.step import CapturedStep, TrainStep, resolve_compile
from pipeline.signals import EpochPlan, ViewsOnly, check_inputs
from pipeline.teacher import Teacher, load_teacher
from pipeline.views import EpochLoader, batch_indices


def epoch_order(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_samples)


def train(
    cfg: TrainConfig,
    train_set: ImageSet,
    test_set: ImageSet,
    signal: ViewsOnly,
    out_dir: str | os.PathLike,
    *,
    val_set: ImageSet | None = None,
    progress: bool = True,
    overwrite: bool = False,
    restart_stale: bool = False,
    stop_after: int | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a student in `out_dir`; returns the summary written there.

    A checkpoint in `out_dir` of a *different* run (other config, data or teacher signal) is
    refused, unless `restart_stale`, which discards it and starts over (for a workflow that
    owns the folder and reruns a job because its config changed).

    Model selection is honest: with a `val_set` (held out of the training split) every
    epoch is evaluated on it and `best.pt` is the epoch with the best validation top-1; the
    test split is evaluated once, at the end, for the final and the best weights. Without
    one, every epoch is evaluated on the test split for the curves and nothing is selected.

    `stop_after` returns after that many epochs of this call, as a kill between epochs
    would; `on_step(epoch, step, terms)` sees every step's loss terms (for parity checks).
    """
    cfg = cfg.resolved()  # the schedule, scaled to the run's length where not set
    objective = make_objective(cfg.loss, **cfg.loss_options)
    if objective.needs_teacher and signal.kind == "none":
        raise NeedsTeacher(cfg.loss)
    # No per-step value checks, on any device: each costs a host sync, which a GPU step must
    # not wait for and a captured step cannot contain. Each epoch's summed losses, and each
    # epoch's cached teacher logits (StoreSignal.plan), are checked for NaN/inf instead.
    objective = objective.replace(validate=False)
    device = resolve_device(cfg.device)
    amp = resolve_amp(cfg.amp, device)
    world = init_world(device.type)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # a CPU's float sums round by how the work is split
    try:
        run = _start(cfg, objective, Splits(train_set, val_set, test_set), signal, Path(out_dir), device, amp, world,
                     overwrite=overwrite, restart_stale=restart_stale)
        if not _run_epochs(run, progress, stop_after, on_step):
            return {"stopped_after_epoch": run.epoch}
        return _finish(run) if world.is_main else {}
    finally:
        torch.set_num_threads(threads)
        close_world(world)


@dataclass(frozen=True)
class Splits:
    """The images a run trains on, selects on (None: no selection) and reports on."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records of them, to refuse resuming on other data."""
        return {"dataset": self.train.describe(), "val_dataset": self.val.describe() if self.val is not None else None,
                "test_dataset": self.test.describe()}


@dataclass
class _Run:
    """Everything one run carries from epoch to epoch (and through a checkpoint)."""

    cfg: TrainConfig
    objective: Any
    resolved: dict[str, Any]  # the config with every loss option filled in, as config.json records it
    splits: Splits
    signal: ViewsOnly
    out: Path
    device: torch.device
    amp: str
    world: World
    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: TrainStep  # one SGD step, eager or captured
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    epoch: int = 0  # epochs finished
    teacher_test: np.ndarray | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def family(self) -> Any:
        return self.signal.spec.family


def _start(cfg: TrainConfig, objective: Any, splits: Splits, signal: ViewsOnly, out: Path, device: torch.device,
           amp: str, world: World, *, overwrite: bool, restart_stale: bool) -> _Run:
    """Build the model and optimizer, resume from a checkpoint of the same run, write config.json."""
    if (out / "summary.json").exists() and not overwrite:
        raise RunExists(f"{out} already holds a finished run (summary.json)")
    resolved = {**cfg.to_dict(), "loss_options": dict(objective.params)}
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.arch, splits.train.num_classes, in_channels=splits.train.in_channels)
    new_layers = _initialise(model, cfg, resolved, out) if cfg.init else []
    if world.distributed:
        model = sync_batchnorm(model, device.type)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(_param_groups(model, new_layers, cfg.backbone_lr_scale), lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")  # fp16 gradients underflow unscaled
    net: nn.Module = model
    if world.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if resolve_compile(cfg.compile, device, amp, world.size):
        step = CapturedStep(net, objective, optimizer, scaler, device, amp, cfg.batch_size)
    else:
        step = TrainStep(net, objective, optimizer, scaler, device, amp)
    run = _Run(cfg, objective, resolved, splits, signal, out, device, amp, world, model, net, optimizer, scaler, step)
    if run.checkpoint_path.exists() and not overwrite:
        _resume(run, restart_stale)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", {"config": resolved, "signal": signal.describe(), **splits.describe(),
                                          "world_size": world.size, "code_version": code_version()})
        run.teacher_test = signal.test_logits(splits.test, device)
    return run


def _initialise(model: nn.Module, cfg: TrainConfig, resolved: dict[str, Any], out: Path) -> list[str]:
    """Start from `cfg.init`; record which weights in `resolved` and say what changed. Returns the
    names of the parameters that were left at their fresh initialisation (a new classifier)."""
    changed = models.load_pretrained(model, cfg.init, arch=cfg.arch)
    resolved["init_sha256"] = None if cfg.init == "pretrained" else file_sha256(cfg.init)
    notes = [f"re-initialised {', '.join(changed['reinitialised'])} (another class count)" if changed["reinitialised"]
             else "", f"adapted {', '.join(changed['adapted'])} (other input channels)" if changed["adapted"] else ""]
    print(f"{out}: starting from {cfg.init}" + "".join(f"; {n}" for n in notes if n), file=sys.stderr)
    return changed["reinitialised"]


def _param_groups(model: nn.Module, new_layers: list[str], backbone_scale: float) -> list[dict[str, Any]]:
    """The loaded layers (lr x `backbone_scale`) and the new ones (full lr), each group when it
    has parameters; TrainStep sets each group's lr to the epoch's times its `lr_scale`."""
    if backbone_scale == 1.0:
        return [{"params": list(model.parameters())}]
    named = dict(model.named_parameters())
    backbone = [p for n, p in named.items() if n not in new_layers]
    head = [p for n, p in named.items() if n in new_layers]
    return [{"params": backbone, "lr_scale": backbone_scale}] + ([{"params": head}] if head else [])


def _resume(run: _Run, restart_stale: bool) -> None:
    """Continue from the checkpoint in the run's folder, if it is one of this very run."""
    ckpt = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True)
    datasets = run.splits.describe()
    differs = [k for k in run.resolved if k not in RUNTIME_ONLY and ckpt["config"].get(k) != run.resolved[k]]
    differs += [k for k in datasets if ckpt.get("datasets", {}).get(k) != datasets[k]]
    if differs or ckpt["signal"] != run.signal.describe():
        what = ", ".join(differs) or "teacher signal (store, teacher or views)"
        if not restart_stale:
            raise RunExists(f"{run.out} holds a checkpoint of a different run (differs in: {what})")
        print(f"{run.out}: discarding the checkpoint of a different run (differs in: {what})", file=sys.stderr)
        return
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt.get("scaler", {}))
    run.history, run.best, run.epoch = ckpt["history"], ckpt["best"], ckpt["epoch"]
    torch.set_rng_state(ckpt["torch_rng"])
    if run.world.is_main:
        print(f"{run.out}: resuming after epoch {run.epoch} of {run.cfg.epochs} (checkpoint.pt)", file=sys.stderr)


def _run_epochs(run: _Run, progress: bool, stop_after: int | None, on_step: Callable | None) -> bool:
    """Train from `run.epoch` to the end (True), or until `stop_after` epochs of this call (False).

    The next epoch's plan (slots, view parameters, cached logits) is read in a background
    thread while this epoch trains; the DataLoader workers that build views live across epochs.
    """
    cfg, world, signal, n = run.cfg, run.world, run.signal, len(run.splits.train)
    loader = EpochLoader(run.family, run.splits.train, num_workers=resolve_workers(cfg.num_workers, run.device),
                         pin_memory=run.device.type == "cuda")
    prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="epoch-plan")
    future = prefetch.submit(signal.plan, run.epoch, cfg.seed, n) if run.epoch < cfg.epochs else None
    bar = tqdm(total=cfg.epochs, initial=run.epoch, unit="epoch", disable=not (progress and world.is_main), desc=run.out.name)
    epochs_this_call = 0
    try:
        while run.epoch < cfg.epochs:
            plan = future.result()
            if run.epoch + 1 < cfg.epochs:
                future = prefetch.submit(signal.plan, run.epoch + 1, cfg.seed, n)
            row = _train_epoch(run, plan, loader, on_step)
            run.epoch += 1
            if world.is_main:
                row.update(_evaluate_epoch(run))
                run.history.append(row)
                _save_checkpoint(run)
                monitor = "val_top1" if run.splits.val is not None else "test_top1"
                bar.set_postfix(loss=f"{row['loss_total']:.3f}", **{monitor: f"{row[monitor]:.2f}"},
                                img_s=f"{row['images_per_s']:.0f}")
            bar.update()
            world.barrier()
            epochs_this_call += 1
            if stop_after is not None and epochs_this_call >= stop_after and run.epoch < cfg.epochs:
                return False
    finally:
        bar.close()
        prefetch.shutdown(wait=True, cancel_futures=True)
        loader.close()
    return True


def _train_epoch(run: _Run, plan: EpochPlan, loader: EpochLoader, on_step: Callable | None) -> dict[str, Any]:
    """One pass over the training set; returns the epoch's row of metrics (losses, train top-1, speed)."""
    cfg, device, world, epoch, images = run.cfg, run.device, run.world, run.epoch, run.splits.train
    n = len(images)
    if plan.logits is not None:
        plan.logits = plan.logits.to(device)  # one copy per epoch, then gathers on the device
    lr = learning_rate(cfg, epoch + 1)
    run.step.start_epoch(epoch + 1, lr)

    global_batches = batch_indices(n, cfg.batch_size, epoch_order(cfg.seed, epoch, n))
    mine = [rank_slice(b, world) for b in global_batches]
    labels = torch.from_numpy(images.labels).to(device)
    run.net.train()
    start = time.perf_counter()
    for step, (views, _labels, idx, crc) in enumerate(loader.epoch([(i, plan.params[i]) for i in mine])):
        check_inputs(plan, idx, crc, epoch)
        x = to_model_input(views, images.mean, images.std, device=device, channels_last=cfg.channels_last)
        idx = to_device(idx, device)
        y = labels[idx]
        teacher_logits = run.signal.batch_logits(plan, x, idx)
        # Each rank's mean is scaled by its share of the global batch, so DDP's
        # gradient average is exactly the global-batch mean.
        share = len(idx) * world.size / len(global_batches[step])
        terms = run.step(x, y, teacher_logits, share)
        if on_step is not None:
            on_step(epoch + 1, step, {k: float(v.detach()) for k, v in terms.items()})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    sums = all_sum(run.step.sums.cpu())  # each term x batch size, then the correct count
    losses = {name: float(total) / n for name, total in zip(run.step.names, sums[:-1])}
    if not torch.isfinite(sums).all():
        bad = ", ".join(f"{name} {value}" for name, value in losses.items() if not math.isfinite(value))
        kept = f"checkpoint.pt keeps epoch {epoch}" if epoch else "no epoch was checkpointed"
        raise TrainingDiverged(
            f"epoch {epoch + 1}: non-finite training loss ({bad}): the student diverged (try a lower learning rate, "
            f"or bf16 or no autocast instead of fp16) or a step's input or teacher logits held NaN/inf; {kept}"
        )
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
    row.update({f"loss_{name}": value for name, value in losses.items()})
    row["train_top1"] = 100.0 * float(sums[-1]) / n
    row["images_per_s"] = n / seconds
    row["epoch_seconds"] = seconds
    return row


def _evaluate(run: _Run, images: ImageSet, prefix: str, model: nn.Module | None = None) -> dict[str, float]:
    """{prefix_top1, prefix_top5} of `model` (default: the run's) on the un-augmented views of `images`;
    on the test split also the agreement with the teacher (top-1, and the rank correlation over
    the classes other than the label)."""
    logits = predict_test(model or run.model, images, run.family, device=run.device, batch_size=run.cfg.eval_batch_size,
                          numerics=Numerics(run.device.type, run.amp, run.cfg.channels_last))
    acc = topk_accuracy(logits, images.labels)
    metrics = {f"{prefix}_top1": acc["top1"], f"{prefix}_top5": acc["top5"]}
    if prefix == "test" and run.teacher_test is not None:
        metrics["teacher_agreement"] = 100.0 * float((logits.argmax(1) == run.teacher_test.argmax(1)).mean())
        metrics["teacher_rank_corr"] = rank_correlation(logits, run.teacher_test, images.labels)
    return metrics


def _evaluate_epoch(run: _Run) -> dict[str, float]:
    """Validation every epoch (and the test split only after the last), or the test split every epoch."""
    if run.splits.val is None:
        return _evaluate(run, run.splits.test, "test")
    metrics = _evaluate(run, run.splits.val, "val")
    if run.best is None or metrics["val_top1"] > run.best["val_top1"]:
        run.best = {"epoch": run.epoch, "val_top1": metrics["val_top1"], "val_top5": metrics["val_top5"]}
        _save_student(run, run.out / "best.pt", run.model, {}, run.epoch,
                      {"val": {"top1": metrics["val_top1"], "top5": metrics["val_top5"]}})
    if run.epoch == run.cfg.epochs:
        metrics.update(_evaluate(run, run.splits.test, "test"))
    return metrics


def _save_checkpoint(run: _Run) -> None:
    save_torch(
        {"epoch": run.epoch, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
         "scaler": run.scaler.state_dict(), "history": run.history, "best": run.best, "config": run.resolved,
         "signal": run.signal.describe(), "torch_rng": torch.get_rng_state(), "datasets": run.splits.describe()},
        run.checkpoint_path,
    )


def _finish(run: _Run) -> dict[str, Any]:
    """final.pt, the best checkpoint's test accuracy, metrics files and summary.json."""
    cfg, last, splits = run.cfg, run.history[-1], run.splits
    final = {"top1": last["test_top1"], "top5": last["test_top5"]}
    for key in ("teacher_agreement", "teacher_rank_corr"):
        if key in last:
            final[key] = last[key]
    if splits.val is not None:
        final.update(val_top1=last["val_top1"], val_top5=last["val_top5"])
    _save_student(run, run.out / "final.pt", run.model, {"top1": final["top1"], "top5": final["top5"]}, cfg.epochs,
                  {"val": {"top1": last["val_top1"], "top5": last["val_top5"]}} if splits.val is not None else {})
    best = run.best
    if best is not None:
        # The test split sees the selected weights once, after the selection is over.
        chosen = load_teacher(run.out / "best.pt", run.device)
        acc = _evaluate(run, splits.test, "test", chosen.model)
        best = {**best, "top1": acc["test_top1"], "top5": acc["test_top5"]}
        _save_student(run, run.out / "best.pt", chosen.model, {"top1": best["top1"], "top5": best["top5"]},
                      best["epoch"], {"val": {"top1": best["val_top1"], "top5": best["val_top5"]}})
    summary = {
        "name": run.out.name,
        "arch": cfg.arch,
        "loss": cfg.loss,
        "loss_options": dict(run.objective.params),
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "config": run.resolved,
        "signal": run.signal.describe(),
        **splits.describe(),
        "teacher_test": topk_accuracy(run.teacher_test, splits.test.labels) if run.teacher_test is not None else {},
        "final": final,
        "best": best,
        "images_per_s": float(np.mean([r["images_per_s"] for r in run.history])),
        "train_seconds": float(sum(r["epoch_seconds"] for r in run.history)),
        "world_size": run.world.size,
        "device": str(run.device),
        "amp": run.amp,
        "code_version": code_version(),
    }
    write_metrics(run.out, run.history)
    _write_json(run.out / "summary.json", summary)
    run.checkpoint_path.unlink(missing_ok=True)
    return summary


# ---------------------------------------------------------------------------------------
# Outputs


def _save_student(run: _Run, path: Path, model: nn.Module, accuracy: dict[str, float], epoch: int,
                  extra: dict[str, Any]) -> None:
    """A student is saved as a teacher file, so it can teach in turn.

    `accuracy` is the test split's ({} while the run still selects on validation data).
    """
    cfg, images, what = run.cfg, run.splits.train, run.signal.describe()
    source = f"trained with loss {cfg.loss}" + (f" from store {what['store_id']}" if "store_id" in what else "")
    Teacher(
        arch=cfg.arch, num_classes=images.num_classes, in_channels=images.in_channels, model=model,
        dataset=images.describe(class_names=True), family=run.family.to_dict(),
        accuracy=accuracy, source=source, extra={"epoch": epoch, "config": cfg.to_dict(), **extra},
    ).save(path)


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """metrics.csv, metrics.json and curves.png from the per-epoch rows."""
    from pipeline.plots import plot_training_curves

    _write_json(out / "metrics.json", history)
    fields = list(dict.fromkeys(k for row in history for k in row))
    with writing(out / "metrics.csv"), open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    plot_training_curves(history, out / "curves.png", title=out.name)


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")
