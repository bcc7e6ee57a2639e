"""`rld student train`: distil a student from a logit store (or an online teacher, or none)."""

from __future__ import annotations

import click

from pipeline.data import load_splits_with_val
from pipeline.inference import Numerics, default_family
from pipeline.losses import DEFAULTS, METHODS
from pipeline.models import available
from pipeline.runtime import resolve_device
from pipeline.store import LogitStore, StoreError
from pipeline.teacher import load_teacher
from pipeline.train import OnlineSignal, StoreSignal, TrainConfig, ViewsOnly, train
from pipeline.views import ViewSpec, parse_family
from stages._options import dataset_options, fail, recipe_options, runtime_options

# CLI flag -> objective option; only flags the user gives reach the objective, so a flag
# that does not apply to the chosen loss is an error rather than silently ignored.
LOSS_FLAGS = {
    "ce_weight": "--ce-weight", "kd_weight": "--kd-weight", "alpha": "--alpha", "beta": "--beta",
    "temperature": "--temperature", "alpha_temperature": "--alpha-temperature", "warmup": "--warmup",
    "logit_stand": "--logit-stand",
}


def _loss_help() -> str:
    return "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS[m].items()) for m in METHODS)


@click.group()
def student() -> None:
    """Train students from cached teacher logits."""


@student.command("train")
@click.option("--arch", required=True, help="Student model name (mdistiller's, e.g. resnet8x4).")
@click.option("--logits", "store_path", type=click.Path(), default=None, help="Logit store to distil from.")
@click.option("--loss", type=click.Choice(METHODS), default="rld", show_default=True, help=f"Defaults: {_loss_help()}")
@click.option("--ce-weight", type=float, default=None)
@click.option("--kd-weight", type=float, default=None, help="kd only.")
@click.option("--alpha", type=float, default=None, help="dkd: TCKD weight; rld: SCD weight.")
@click.option("--beta", type=float, default=None, help="dkd: NCKD weight; rld: MCD weight.")
@click.option("--temperature", "-T", type=float, default=None, help="KD/NCKD/MCD temperature.")
@click.option("--alpha-temperature", type=float, default=None, help="rld: SCD temperature.")
@click.option("--same-t", is_flag=True, help="rld: SCD uses the MCD temperature (official --same-t); "
              "not with --alpha-temperature.")
@click.option("--warmup", type=float, default=None, help="dkd/rld: epochs over which distillation ramps up.")
@click.option("--logit-stand/--no-logit-stand", default=None, help="Standardise logits per row before the loss.")
@dataset_options(required=False)
@recipe_options(default_epochs=None)
@runtime_options()
@click.option("--teacher", "teacher_path", type=click.Path(dir_okay=False), default=None,
              help="Also require the store to come from this teacher file.")
@click.option("--online-teacher", type=click.Path(dir_okay=False), default=None,
              help="Run this teacher every step on the same views instead of reading the store. With "
                   "--logits it computes with the store's recorded numerics (autocast, memory format) and "
                   "dtype, so on a CPU it gives the stored logits bit for bit; without, with `rld dump`'s "
                   "defaults, in float32.")
@click.option("--views", default=None, help="Without a store: per-epoch:E | pool:P | exhaustive (default per-epoch:epochs).")
@click.option("--view-seed", type=int, default=None, help="Without a store: seed of the views (default --seed).")
@click.option("--compile", "compile_step", is_flag=True,
              help="Replay the training step as a CUDA graph (forward, loss, backward, SGD step): the same "
                   "computation up to float rounding, one launch per step instead of hundreds. CUDA only (on a CPU "
                   "it trains eagerly, saying so); not with --amp fp16 or DDP. A run may resume with or without it.")
@click.option("--force", is_flag=True, help="Start over even if the output holds a finished run or another run's checkpoint.")
@click.option("--restart-stale", is_flag=True,
              help="If the output holds a checkpoint of a different run (another config), discard it and start over; "
                   "a finished run is still kept (the workflow passes this for its own work folders).")
@click.option("--quiet", is_flag=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder, e.g. students/resnet8x4")
def train_cmd(arch, store_path, loss, ce_weight, kd_weight, alpha, beta, temperature, alpha_temperature, same_t,
              warmup, logit_stand, dataset, data_root, subset, test_subset, val_split, augment, epochs, batch_size, lr, momentum,
              weight_decay, milestones, lr_decay, seed, device, amp, channels_last, workers, teacher_path,
              online_teacher, views, view_seed, compile_step, force, restart_stale, quiet, out) -> None:  # noqa: ANN001
    """Train one student; resumable (rerun the same command after a kill).

    Defaults are the paper's recipe. With a per-epoch store of E views and no --epochs,
    the student trains E epochs; otherwise 240.
    """
    given = {"ce_weight": ce_weight, "kd_weight": kd_weight, "alpha": alpha, "beta": beta, "temperature": temperature,
             "alpha_temperature": alpha_temperature, "warmup": warmup, "logit_stand": logit_stand}
    loss_options = {k: v for k, v in given.items() if v is not None}
    try:
        if arch not in available():
            raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(available())}")
        if same_t:
            if loss != "rld":
                raise ValueError("--same-t applies only to --loss rld")
            if alpha_temperature is not None:
                raise ValueError("--same-t sets the SCD temperature to -T; give it or --alpha-temperature, not both")
            loss_options["alpha_temperature"] = loss_options.get("temperature", DEFAULTS["rld"]["temperature"])
        for key in loss_options:
            if key not in DEFAULTS[loss]:
                valid = ", ".join(LOSS_FLAGS[k] for k in DEFAULTS[loss])
                raise ValueError(f"{LOSS_FLAGS[key]} does not apply to --loss {loss}; its options: {valid}")
        if loss != "ce" and store_path is None and online_teacher is None:
            raise ValueError(f"--loss {loss} needs a teacher: --logits STORE or --online-teacher FILE")

        store = LogitStore.open(store_path) if store_path else None
        if store is not None:
            store.require_complete()
            recorded = store.attrs["dataset"]
            dataset = dataset or recorded.get("spec", recorded["name"])
            subset = subset if subset is not None else recorded.get("subset")
            test_subset = test_subset if test_subset is not None else store.attrs["eval_dataset"].get("subset")
            val_split = val_split if val_split is not None else recorded.get("val_split")
        elif dataset is None:
            raise ValueError("--dataset is required without --logits")
        train_set, val_set, test_set = load_splits_with_val(dataset, root=data_root, subset=subset,
                                                            test_subset=test_subset, val_split=val_split)

        if store is not None:
            _check_store(store, train_set, test_set, augment, teacher_path)
            spec = ViewSpec.from_dict(store.attrs["views"])
        else:
            family = parse_family(augment) if augment else default_family(train_set)
            spec = None if views is None else ViewSpec.parse(views, family, seed if view_seed is None else view_seed)

        if epochs is None:
            epochs = spec.num_slots if spec is not None and spec.policy == "per-epoch" else 240
        if spec is None:
            spec = ViewSpec(family, "per-epoch", epochs, seed if view_seed is None else view_seed)

        cfg = TrainConfig(arch=arch, loss=loss, loss_options=loss_options, epochs=epochs, batch_size=batch_size, lr=lr,
                          momentum=momentum, weight_decay=weight_decay, milestones=milestones, lr_decay=lr_decay,
                          seed=seed, device=device, amp=amp, channels_last=channels_last, num_workers=workers,
                          compile=compile_step)
        if online_teacher:
            teacher = load_teacher(online_teacher)
            if store is not None:
                store.check({"teacher": {"weights_sha256": teacher.weights_sha256}})
            dev = resolve_device(device)
            numerics = store.numerics.on(dev) if store is not None else Numerics.resolve(dev)
            signal = OnlineSignal(teacher, spec, numerics, dtype=store.layout.dtype if store is not None else "float32")
        elif store is not None:
            signal = StoreSignal(store)
        else:
            signal = ViewsOnly(spec)
        summary = train(cfg, train_set, test_set, signal, out, val_set=val_set, progress=not quiet, overwrite=force,
                        restart_stale=restart_stale)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        raise fail(err) from None
    if summary:
        final, best = summary["final"], summary["best"]
        chosen = (f", best on validation: epoch {best['epoch']} (val {best['val_top1']:.2f}%, test {best['top1']:.2f}%)"
                  if best else "")
        click.echo(f"{out}: {arch} ({loss}) test top-1 {final['top1']:.2f}%{chosen}, {summary['images_per_s']:.0f} img/s")


def _check_store(store: LogitStore, train_set, test_set, augment: str | None, teacher_path: str | None) -> None:  # noqa: ANN001
    """Refuse a store that was made from other data, views or teacher than requested."""
    expected = {"dataset": train_set.describe(), "eval_dataset": test_set.describe(),
                "normalization": train_set.normalization}
    if augment:
        expected["views"] = {"family": parse_family(augment).to_dict()}
    if teacher_path:
        expected["teacher"] = {"weights_sha256": load_teacher(teacher_path).weights_sha256}
    store.check(expected)
    if store.layout.classes != train_set.num_classes:
        raise StoreError(f"{store.path} holds {store.layout.classes}-class logits; the student has {train_set.num_classes} classes")
