"""`rld ensemble`: combine aligned logit stores into the store of an ensemble teacher."""

from __future__ import annotations

import click

from stages._options import USER_ERRORS, fail, store_option

SPACES = ("logits", "probs")  # pipeline.ensemble.SPACES (a test keeps them equal)


def parse_weights(text: str | None) -> list[float] | None:
    """'1,1,2' -> [1.0, 1.0, 2.0]."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"give numbers separated by commas (e.g. 1,1,2), got {text!r}",
                                 param_hint="--weights") from None


@click.command("ensemble", short_help="Combine aligned logit stores into an ensemble teacher's store.")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...", type=click.Path(file_okay=False))
@store_option("Ensemble store to write or resume, e.g. cache/logits/NAME.zarr.")
@click.option("--space", type=click.Choice(SPACES), default="logits", show_default=True,
              help="Average the members' logits, or their probabilities (the ensemble's logits are then the log of the mean).")
@click.option("--weights", default=None, help="One weight per member, e.g. 2,1,1 (scaled to sum 1).  [default: equal]")
@click.option("--dtype", type=click.Choice(("float16", "float32")), default=None,
              help="Precision the logits are stored in.  [default: the members', float32 if they differ]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ensemble_cmd(members: tuple[str, ...], store: str, space: str, weights: str | None, dtype: str | None,
                 quiet: bool) -> None:
    """Write the store of an ensemble of the teachers of the MEMBER stores (two or more, complete).

    The members must hold the same views of the same data (same dataset, subset, validation
    split, view spec and view seed; their teachers may differ), so their logits line up view
    for view and no teacher runs. Students, inspect and the workflow read the result like any
    store. Safe to kill: rerunning the same command finishes only the missing write units.
    """
    from pipeline.ensemble import build_ensemble

    try:
        result = build_ensemble(list(members), store, space=space, weights=parse_weights(weights), dtype=dtype,
                                progress=not quiet)
    except USER_ERRORS as err:
        raise fail(err) from None
    accuracy = result.store.attrs["teacher"].get("accuracy") or {}
    top1 = f", test top-1 {accuracy['top1']:.2f}%" if "top1" in accuracy else ""
    state = "complete" if result.complete else "incomplete"
    click.echo(f"{store}: wrote {result.units_written} units, ensemble of {len(members)} stores ({space}){top1}; "
               f"store {result.store.id} {state}")
