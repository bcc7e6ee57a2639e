"""`rld report`: one table and one plot across finished students."""

from __future__ import annotations

import click

from pipeline.methods import METHODS
from stages._options import USER_ERRORS, fail


@click.command("report", short_help="Tables and figures comparing finished students.")
@click.argument("students", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder the tables and figures go to.")
@click.option("--versus", multiple=True, type=click.Choice(METHODS),
              help="Also pair every other loss with this one, seed by seed (e.g. --versus dkd). Repeatable.")
def report_cmd(students, out, versus) -> None:  # noqa: ANN001
    """Write OUT/summary.md, summary.csv, groups.csv, accuracy.png and paired.png for the given student folders."""
    from pipeline.report import write_report

    try:
        paths = write_report(students, out, versus)
    except (*USER_ERRORS, KeyError) as err:
        raise fail(err) from None
    click.echo(paths["markdown"].read_text())
