"""`rld student train`: distil a student from a logit store (or an online teacher, or none)."""

from __future__ import annotations

import click

from pipeline.methods import METHODS, option_names
from stages._options import (USER_ERRORS, arch_option, checked_loss_options, cuda_graph_option, dataset_options, fail, given_recipe,
                             loss_options, method_epilog, recipe_options, renamed, runtime_options, val_split_with_seed)


@click.group()
def student() -> None:
    """Train students from cached teacher logits."""


@student.command("train", epilog=method_epilog())
@arch_option()
@click.option("--store", type=click.Path(file_okay=False), default=None,
              help="Logit store to distil from; the student takes its data, views and epochs from it.")
@renamed("--logits", "--store", "store", type=click.Path(file_okay=False), default=None)
@click.option("--loss", type=click.Choice(METHODS), default="rld", show_default=True,
              help="Distillation method (its options: below).")
@loss_options()
@click.option("--same-t", is_flag=True, help="rld: SCD uses the MCD temperature (official --same-t); "
              "not with --alpha-temperature.")
@dataset_options(required=False)
@recipe_options(epochs_default="E with a per-epoch store of E views, else 240")
@runtime_options()
@click.option("--teacher", "teacher_path", type=click.Path(dir_okay=False), default=None,
              help="Run this teacher every step on the same views instead of reading the store. With --store it "
                   "must be the store's teacher and computes with the store's recorded numerics (autocast, memory "
                   "format) and dtype, so on a CPU it gives the stored logits bit for bit; without, with `rld "
                   "dump`'s defaults, in float32.")
@renamed("--online-teacher", "--teacher", "teacher_path", type=click.Path(dir_okay=False), default=None)
@click.option("--expect-teacher", type=click.Path(dir_okay=False), default=None,
              help="Refuse a store that does not come from this teacher file (checks, runs nothing).")
@click.option("--views", default=None, help="Without a store: per-epoch:E | pool:P | exhaustive (default per-epoch:epochs).")
@click.option("--view-seed", type=int, default=None, help="Without a store: seed of the views (default --seed).")
@cuda_graph_option()
@click.option("--force", is_flag=True, help="Start over even if the output holds a finished run or another run's checkpoint.")
@click.option("--restart-stale", is_flag=True,
              help="If the output holds a checkpoint of a different run (another config), discard it and start over; "
                   "a finished run is still kept (the workflow passes this for its own work folders).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder, e.g. students/resnet8x4")
def train_cmd(arch, store, loss, same_t, dataset, data_root, subset, test_subset, val_split, val_seed, augment, threads, device, amp,
              channels_last, workers, teacher_path, expect_teacher, views, view_seed, cuda_graph, force, restart_stale,
              quiet, out, **options) -> None:  # noqa: ANN001
    """Train one student; resumable (rerun the same command after a kill).

    Defaults are the paper's recipe. With a per-epoch store of E views and no --epochs,
    the student trains E epochs; otherwise 240.
    """
    from pipeline.models import get_spec
    from pipeline.student import DataRequest, student_inputs
    from pipeline.recipe import TrainConfig
    from pipeline.train import train

    recipe = given_recipe(options)
    method_flags = {k: options[k] for k in option_names() if options[k] is not None}
    try:
        get_spec(arch)  # an unknown name fails here, with the closest ones
        loss_options = checked_loss_options(loss, method_flags)
        if same_t:
            if loss != "rld":
                raise ValueError("--same-t applies only to --loss rld")
            if "alpha_temperature" in loss_options:
                raise ValueError("--same-t sets the SCD temperature to -T; give it or --alpha-temperature, not both")
            from pipeline.losses import make_objective

            loss_options["alpha_temperature"] = make_objective(loss, **loss_options).with_same_t().params["alpha_temperature"]
        data = DataRequest(dataset, data_root, subset, test_subset, val_split_with_seed(val_split, val_seed), augment)
        inputs = student_inputs(loss, data, store_path=store, expected_teacher=expect_teacher, online_teacher=teacher_path,
                                views=views, view_seed=view_seed, seed=recipe.get("seed", 0),
                                epochs=recipe.pop("epochs", None), device=device)
        if threads is not None:
            recipe["threads"] = threads
        cfg = TrainConfig(arch=arch, loss=loss, loss_options=loss_options, epochs=inputs.epochs, device=device, amp=amp,
                          channels_last=channels_last, num_workers=workers, compile=cuda_graph, **recipe)
        click.echo(f"{out}: {cfg.resolved().describe_schedule()}")
        summary = train(cfg, inputs.train_set, inputs.test_set, inputs.signal, out, val_set=inputs.val_set,
                        progress=not quiet, overwrite=force, restart_stale=restart_stale)
    except USER_ERRORS as err:
        raise fail(err) from None
    if summary:
        final, best = summary["final"], summary["best"]
        chosen = (f", best on validation: epoch {best['epoch']} (val {best['val_top1']:.2f}%, test {best['top1']:.2f}%)"
                  if best else "")
        click.echo(f"{out}: {arch} ({loss}) test top-1 {final['top1']:.2f}%{chosen}, {summary['images_per_s']:.0f} img/s")

