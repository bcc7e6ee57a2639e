"""`rld dump`: run the teacher once over every cached view into a logit store."""

from __future__ import annotations

import click

from stages._options import (NO_CHECK, USER_ERRORS, dataset_options, decode_check, fail, renamed, runtime_options,
                             store_option, val_split_with_seed)

STORE_DTYPES = ("float16", "float32")  # pipeline.store.DTYPES (a test keeps them equal)


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (0 <= I < N) -> (I, N)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return index, count


@click.command("dump", short_help="Run the teacher once over every view into a logit store.")
@store_option("Store to fill or resume, e.g. cache/logits/NAME.zarr.", old="--out")
@click.option("--teacher", "teacher_path", required=True, type=click.Path(dir_okay=False),
              help="Teacher file to run (rld teacher train/import).")
@dataset_options()
@click.option("--views", required=True, help="Which views to cache: per-epoch:E | pool:P | exhaustive.")
@click.option("--view-seed", type=int, default=None, help="Seed the views are drawn from (ignored by exhaustive).  [default: 0]")
@renamed("--seed", "--view-seed", "view_seed", type=int, default=None)
@click.option("--dtype", type=click.Choice(STORE_DTYPES), default="float16", show_default=True,
              help="Precision the logits are stored in.")
@click.option("--shard", default="0/1", show_default=True, help="I/N: fill only shard I of N (N processes can share one store).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Views per teacher batch (default 512 on CUDA, 64 on CPU).")
@click.option("--chunk-samples", type=click.IntRange(min=1), default=None, help="Samples per chunk (default: ~4 MiB of logits).")
@click.option("--max-gb", type=float, default=None, help="Refuse a store predicted to be larger than this.")
@runtime_options(channels_last="auto", amp_help=(
    " The teacher's numerics (device type, autocast, memory format) are recorded in the store"
    " and part of its identity: a resumed dump must use the same, and an online teacher adopts them."))
@NO_CHECK
@click.option("--quiet", is_flag=True, help="No progress bar.")
def dump_cmd(store, teacher_path, dataset, data_root, subset, test_subset, val_split, val_seed, augment, views, view_seed, dtype,
             shard, batch_size, chunk_samples, max_gb, threads, device, amp, channels_last, workers, no_check, quiet) -> None:  # noqa: ANN001
    """Fill (or resume) a logit store: raw teacher logits of every view, plus test logits.

    Safe to kill: rerunning the same command finishes only the missing write units.
    With the defaults on a CPU (no autocast, contiguous layout) a student of the store and one
    whose --teacher runs online get bitwise-equal teacher logits; on CUDA they agree to float rounding.
    """
    from pipeline.data import load_splits
    from pipeline.dump import dump, layout_for
    from pipeline.runtime import resolve_device
    from pipeline.units import format_bytes
    from pipeline.teacher import load_teacher
    from pipeline.views import ViewSpec, family_from_dict, parse_family

    try:
        shard_index = parse_shard(shard)
        teacher = load_teacher(teacher_path)
        train_set, test_set = load_splits(dataset, root=data_root, subset=subset, test_subset=test_subset,
                                          val_split=val_split_with_seed(val_split, val_seed))
        decode_check([train_set, test_set], no_check, progress=not quiet)
        family = parse_family(augment) if augment else family_from_dict(teacher.family) if teacher.family else None
        if family is None:
            raise ValueError(f"{teacher_path} records no view family; pass --augment")
        spec = ViewSpec.parse(views, family, 0 if view_seed is None else view_seed)
        layout = layout_for(train_set, test_set, spec, dtype, chunk_samples)
        gb = layout.predicted_bytes / 1e9
        click.echo(f"{store}: {spec.num_slots} views x {len(train_set)} samples x {layout.classes} classes {dtype} "
                   f"= {format_bytes(layout.predicted_bytes)} predicted ({layout.view_bytes} B per view), "
                   f"{layout.slots * layout.chunks + layout.eval_chunks} write units")
        if max_gb is not None and gb > max_gb:
            raise ValueError(f"predicted store size {gb:.3f} GB exceeds --max-gb {max_gb}")
        dev = resolve_device(device)
        result = dump(teacher, train_set, test_set, spec, store, dtype=dtype, shard=shard_index, batch_size=batch_size,
                      device=dev, amp=amp, channels_last=channels_last, num_workers=workers,
                      chunk_samples=chunk_samples, threads=threads, progress=not quiet)
    except USER_ERRORS as err:
        raise fail(err) from None
    state = "complete" if result.complete else "incomplete (other shards pending)"
    click.echo(f"{store}: wrote {result.units_written} units ({result.views_written} views) for shard {shard}; store {result.store.id} {state}")
