"""`rld report`: one table and one plot across finished students."""

from __future__ import annotations

import click

from pipeline.report import write_report
from stages._options import fail


@click.command("report")
@click.argument("students", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="reports", show_default=True, type=click.Path(file_okay=False))
def report_cmd(students, out) -> None:  # noqa: ANN001
    """Write OUT/summary.md, summary.csv and accuracy.png for the given student folders."""
    try:
        paths = write_report(students, out)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise fail(err) from None
    click.echo(paths["markdown"].read_text())
