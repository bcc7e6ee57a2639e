"""`rld teacher train|import`: make the teacher file every later stage names."""

from __future__ import annotations

import click

from stages._options import (NO_CHECK, USER_ERRORS, InPipelineOrder, arch_option, dataset_options, decode_check, fail, given_recipe,
                             recipe_options, runtime_options, val_split_with_seed)


@click.group(cls=InPipelineOrder)
def teacher() -> None:
    """Train a teacher here, or import mdistiller / torchvision weights."""


@teacher.command("train")
@arch_option()
@dataset_options()
@recipe_options()
@runtime_options()
@NO_CHECK
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--force", is_flag=True, help="Train again even if the output exists.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Teacher file to write, e.g. teachers/resnet32x4.pt")
def train_cmd(arch, dataset, data_root, subset, test_subset, val_split, val_seed, augment, threads, device, amp, channels_last, workers,
              no_check, quiet, force, out, **recipe) -> None:  # noqa: ANN001
    """Plain cross-entropy training with the paper's recipe; records test accuracy."""
    from pipeline.data import load_splits_with_val
    from pipeline.inference import default_family
    from pipeline.recipe import TrainConfig
    from pipeline.teacher import train_teacher
    from pipeline.views import parse_family

    try:
        train_set, val_set, test_set = load_splits_with_val(dataset, root=data_root, subset=subset,
                                                            test_subset=test_subset,
                                                            val_split=val_split_with_seed(val_split, val_seed))
        decode_check([train_set, val_set, test_set], no_check, progress=not quiet)
        family = parse_family(augment) if augment else default_family(train_set)
        cfg = TrainConfig(arch=arch, loss="ce", device=device, amp=amp, channels_last=channels_last, num_workers=workers,
                          **given_recipe(recipe), **({"threads": threads} if threads is not None else {}))
        click.echo(f"{out}: {cfg.resolved().describe_schedule()}")
        result = train_teacher(cfg, train_set, test_set, family, out, val_set=val_set, overwrite=force, progress=not quiet)
    except USER_ERRORS as err:
        raise fail(err) from None
    click.echo(f"{out}: {arch}, test top-1 {result.accuracy['top1']:.2f}%, sha256 {result.weights_sha256[:12]}")


@teacher.command("import")
@click.option("--arch", required=True, help="Model name the weights belong to.")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
              help="mdistiller ckpt_epoch_240.pth, a torchvision .pth, or any (DDP) state dict.")
@dataset_options()
@runtime_options(channels_last=None, workers=False)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Teacher file to write.")
def import_cmd(arch, weights, dataset, data_root, subset, test_subset, val_split, val_seed, augment, threads, device, amp, out) -> None:  # noqa: ANN001
    """Wrap existing weights as a teacher file, measuring its test accuracy here."""
    import torch

    from pipeline.data import load_splits
    from pipeline.inference import default_family
    from pipeline.recipe import DEFAULT_THREADS
    from pipeline.runtime import resolve_amp, resolve_device
    from pipeline.teacher import import_teacher
    from pipeline.views import parse_family

    torch.set_num_threads(threads or DEFAULT_THREADS)
    try:
        train_set, test_set = load_splits(dataset, root=data_root, subset=subset, test_subset=test_subset,
                                          val_split=val_split_with_seed(val_split, val_seed))
        family = parse_family(augment) if augment else default_family(train_set)
        dev = resolve_device(device)
        result = import_teacher(arch, weights, train_set, test_set, family, device=dev, amp=resolve_amp(amp, dev))
        result.save(out)
    except USER_ERRORS as err:
        raise fail(err) from None
    click.echo(f"{out}: {arch} from {weights}, test top-1 {result.accuracy['top1']:.2f}%, sha256 {result.weights_sha256[:12]}")
