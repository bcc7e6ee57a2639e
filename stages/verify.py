"""`rld verify`: recompute random cached views and re-run the teacher on them."""

from __future__ import annotations

import json

import click

from pipeline.data import load_dataset
from pipeline.runtime import resolve_device
from pipeline.store import LogitStore
from pipeline.teacher import load_teacher
from pipeline.verify import verify_store
from stages._options import fail


@click.command("verify")
@click.argument("store_path", metavar="STORE", type=click.Path())
@click.option("--teacher", "teacher_path", required=True, type=click.Path(dir_okay=False))
@click.option("--samples", type=click.IntRange(min=1), default=256, show_default=True, help="Random cached views to re-run.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tolerance", type=float, default=None, help="Max |delta logit| allowed (default by dtype and autocast).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, envvar="RLD_DATA_ROOT")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(store_path, teacher_path, samples, seed, tolerance, data_root, device, as_json) -> None:  # noqa: ANN001
    """Exit 1 when stored logits or inputs differ from a fresh teacher run beyond tolerance."""
    try:
        store = LogitStore.open(store_path)
        ds = store.attrs["dataset"]
        train_set = load_dataset(ds.get("spec", ds["name"]), "train", root=data_root, subset=ds.get("subset"),
                                 val_split=ds.get("val_split"))
        report = verify_store(store, load_teacher(teacher_path), train_set, samples=samples, seed=seed,
                              device=resolve_device(device), tolerance=tolerance)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        raise fail(err) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"{store_path}: {report.views_checked} views re-run, max |delta logit| {report.max_abs_delta:.3g} "
                   f"(tolerance {report.tolerance:g}), argmax agreement {report.argmax_agreement:.2f}%, "
                   f"input mismatches {report.input_mismatches}: {'OK' if report.ok else 'FAILED'}")
    if not report.ok:
        raise SystemExit(1)
