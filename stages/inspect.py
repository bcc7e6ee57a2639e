"""`rld inspect`: a logit store's contents, completeness and teacher quality at a glance."""

from __future__ import annotations

import json
from pathlib import Path

import click

from stages._options import legacy_store_argument


@click.command("inspect", short_help="A logit store's contents, completeness and teacher quality.")
@click.option("--store", type=click.Path(file_okay=False), default=None, help="Logit store to report on.  [required]")
@legacy_store_argument
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw confidence, reliability and mask-size histograms into this PNG.")
@click.option("--worst", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the classes the teacher gets wrong most to list.")
@click.option("--require-complete", is_flag=True, help="Exit 1 (after reporting) when write units are missing.")
def inspect_cmd(store: str, as_json: bool, plot: Path | None, worst: int, require_complete: bool) -> None:
    """Report on a logit store (reads every done chunk once; incomplete stores are fine)."""
    from pipeline.store import StoreError
    from pipeline.store_report import format_report, inspect_store

    try:
        report = inspect_store(Path(store), worst=worst)
    except (StoreError, ValueError, OSError) as err:
        raise click.ClickException(" ".join(str(err).split())) from None
    if plot is not None:
        from pipeline.plots import plot_store_report

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_store_report(report, plot)
    click.echo(json.dumps(report, indent=1, allow_nan=False) if as_json else format_report(report))
    if require_complete and not report["completeness"]["complete"]:
        raise click.ClickException(f"{store} is incomplete: run the same `rld dump` command again to finish it")
