"""`rld data check`: find undecodable images before a run that would stop at the first one."""

from __future__ import annotations

import click

from stages._options import USER_ERRORS, fail


@click.group("data")
def data() -> None:
    """Look at a dataset before spending hours on it."""


@data.command("check")
@click.option("--dataset", required=True, help="cifar100 | cifar10 | fashion-mnist | imagefolder | synthetic, options as name:key=value,...")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, envvar="RLD_DATA_ROOT",
              help="Where datasets live (default ./data, or $RLD_DATA_ROOT).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes (default: the CPU count, at most 8).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def check_cmd(dataset: str, data_root: str | None, workers: int | None, quiet: bool) -> None:
    """Decode every image of the train and test splits; list the bad ones (exit status 1 if any)."""
    from pipeline.data import check_decodes, load_dataset
    from pipeline.runtime import cpu_budget

    workers = min(8, cpu_budget()) if workers is None else workers
    bad, total = [], 0
    try:
        for split in ("train", "test"):
            images = load_dataset(dataset, split, root=data_root, download=False)
            found = check_decodes(images, num_workers=workers, progress=not quiet)
            if images.files is None:
                click.echo(f"{split}: {found.files} images held in memory, nothing to decode")
            else:
                sides = f", short sides {found.short_sides[0]}-{found.short_sides[1]} px" if found.short_sides else ""
                click.echo(f"{split}: {found.files - len(found.bad)} of {found.files} images decode{sides}")
            bad += found.bad
            total += found.files
    except USER_ERRORS as err:
        raise fail(err) from None
    for line in bad:
        click.echo(line)
    if bad:
        raise click.ClickException(f"{len(bad)} of {total} images cannot be decoded (listed above); fix or remove them")
