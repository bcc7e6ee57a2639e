"""`rld verify`: recompute random cached views and re-run the teacher on them."""

from __future__ import annotations

import json

import click

from stages._options import USER_ERRORS, ShownDefault, fail, legacy_store_argument, renamed, threads_option


@click.command("verify", short_help="Re-run the teacher on random cached views and compare.")
@click.option("--store", type=click.Path(file_okay=False), default=None, help="Logit store to check.  [required]")
@legacy_store_argument
@click.option("--teacher", "teacher_path", required=True, type=click.Path(dir_okay=False),
              help="The store's teacher file, to run again on the sampled views.")
@click.option("--samples", type=click.IntRange(min=1), default=256, show_default=True, help="Random cached views to re-run.")
@click.option("--sample-seed", cls=ShownDefault, type=int, default=None, show_default="0",
              help="Seed that picks which cached views to re-run.")
@renamed("--seed", "--sample-seed", "sample_seed", type=int, default=None)
@click.option("--tolerance", type=float, default=None, help="Max |delta logit| allowed (default by dtype and autocast).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, envvar="RLD_DATA_ROOT",
              help="Where datasets live (default ./data, or $RLD_DATA_ROOT).")
@threads_option()
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def verify_cmd(store, teacher_path, samples, sample_seed, tolerance, data_root, threads, device, as_json) -> None:  # noqa: ANN001
    """Exit 1 when stored logits or inputs differ from a fresh teacher run beyond tolerance."""
    from pipeline.data import load_dataset
    from pipeline.splits import ValSplit
    from pipeline.runtime import resolve_device
    from pipeline.store import LogitStore
    from pipeline.teacher import load_teacher
    from pipeline.verify import verify_store

    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    try:
        opened = LogitStore.open(store)
        ds = opened.attrs["dataset"]
        train_set = load_dataset(ds.get("spec", ds["name"]), "train", root=data_root, subset=ds.get("subset"),
                                 val_split=ValSplit.from_record(ds.get("val_split")))
        report = verify_store(opened, load_teacher(teacher_path), train_set, samples=samples, seed=sample_seed or 0,
                              device=resolve_device(device), tolerance=tolerance)
    except USER_ERRORS as err:
        raise fail(err) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"{store}: {report.views_checked} views re-run, max |delta logit| {report.max_abs_delta:.3g} "
                   f"(tolerance {report.tolerance:g}), argmax agreement {report.argmax_agreement:.2f}%, "
                   f"input mismatches {report.input_mismatches}: {'OK' if report.ok else 'FAILED'}")
    if not report.ok:
        raise SystemExit(1)
