"""`rld dump`: run the teacher once over every cached view into a logit store."""

from __future__ import annotations

import click

from pipeline.data import load_splits
from pipeline.dump import dump, layout_for
from pipeline.runtime import resolve_device
from pipeline.store import DTYPES, human_bytes, parse_shard
from pipeline.teacher import load_teacher
from pipeline.views import ViewSpec, family_from_dict, parse_family
from stages._options import dataset_options, fail, runtime_options


@click.command("dump")
@click.option("--teacher", "teacher_path", required=True, type=click.Path(dir_okay=False), help="Teacher file (rld teacher train/import).")
@dataset_options()
@click.option("--views", required=True, help="per-epoch:E | pool:P | exhaustive")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed the views are drawn from (ignored by exhaustive).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True)
@click.option("--shard", default="0/1", show_default=True, help="I/N: fill only shard I of N (N processes can share one store).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Views per teacher batch (default 512 on CUDA, 64 on CPU).")
@click.option("--chunk-samples", type=click.IntRange(min=1), default=None, help="Samples per chunk (default: ~4 MiB of logits).")
@click.option("--max-gb", type=float, default=None, help="Refuse a store predicted to be larger than this.")
@runtime_options(channels_last="auto", amp_help=(
    " The teacher's numerics (device type, autocast, memory format) are recorded in the store"
    " and part of its identity: a resumed dump must use the same, and an online teacher adopts them."))
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Store path, e.g. cache/logits/NAME.zarr")
def dump_cmd(teacher_path, dataset, data_root, subset, test_subset, val_split, augment, views, seed, dtype, shard, batch_size,
             chunk_samples, max_gb, device, amp, channels_last, workers, quiet, out) -> None:  # noqa: ANN001
    """Fill (or resume) a logit store: raw teacher logits of every view, plus test logits.

    Safe to kill: rerunning the same command finishes only the missing write units.
    With the defaults on a CPU (no autocast, contiguous layout) a student of the store and one
    of `--online-teacher` get bitwise-equal teacher logits; on CUDA they agree to float rounding.
    """
    try:
        shard_index = parse_shard(shard)
        teacher = load_teacher(teacher_path)
        train_set, test_set = load_splits(dataset, root=data_root, subset=subset, test_subset=test_subset,
                                          val_split=val_split)
        family = parse_family(augment) if augment else family_from_dict(teacher.family) if teacher.family else None
        if family is None:
            raise ValueError(f"{teacher_path} records no view family; pass --augment")
        spec = ViewSpec.parse(views, family, seed)
        layout = layout_for(train_set, test_set, spec, dtype, chunk_samples)
        gb = layout.predicted_bytes / 1e9
        click.echo(f"{out}: {spec.num_slots} views x {len(train_set)} samples x {layout.classes} classes {dtype} "
                   f"= {human_bytes(layout.predicted_bytes)} predicted ({layout.view_bytes} B per view), "
                   f"{layout.slots * layout.chunks + layout.eval_chunks} write units")
        if max_gb is not None and gb > max_gb:
            raise ValueError(f"predicted store size {gb:.3f} GB exceeds --max-gb {max_gb}")
        dev = resolve_device(device)
        result = dump(teacher, train_set, test_set, spec, out, dtype=dtype, shard=shard_index, batch_size=batch_size,
                      device=dev, amp=amp, channels_last=channels_last, num_workers=workers,
                      chunk_samples=chunk_samples, progress=not quiet)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        raise fail(err) from None
    state = "complete" if result.complete else "incomplete (other shards pending)"
    click.echo(f"{out}: wrote {result.units_written} units ({result.views_written} views) for shard {shard}; store {result.store.id} {state}")
