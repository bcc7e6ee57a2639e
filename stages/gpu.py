"""`rld on-gpus`: run a command on GPUs of its own (the workflow wraps GPU jobs in it)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.gpu_slots import DEFAULT_LOCK_DIR, acquire, exec_on, visible_devices
from stages._options import fail


@click.command("on-gpus", hidden=True, context_settings={"ignore_unknown_options": True})
@click.option("--gpus", type=click.IntRange(min=0), default=1, show_default=True,
              help="Devices the command needs (0: run it as is).")
@click.option("--jobs-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="Jobs that may share one device (launch-bound students leave a GPU mostly idle).")
@click.option("--devices", default=None,
              help="Comma-separated device ids to choose from (default: $CUDA_VISIBLE_DEVICES, else every CUDA device).")
@click.option("--lock-dir", type=click.Path(file_okay=False), default=str(DEFAULT_LOCK_DIR), show_default=True,
              help="Where the slot locks live; every job of one machine must use the same one.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds without a free slot.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def on_gpus_cmd(gpus, jobs_per_gpu, devices, lock_dir, timeout, command) -> None:  # noqa: ANN001
    """Wait for a free slot on GPUS devices, then exec COMMAND with CUDA_VISIBLE_DEVICES set to them.

    Slots are lock files the kernel releases when the command ends, however it ends.
    Example: rld on-gpus --gpus 1 --jobs-per-gpu 4 -- rld student train ...
    """
    if gpus == 0:
        os.execvp(command[0], list(command))
    try:
        pool = [d.strip() for d in devices.split(",") if d.strip()] if devices else visible_devices()
        slots = acquire(gpus, pool, per_gpu=jobs_per_gpu, lock_dir=Path(lock_dir), timeout=timeout)
    except (ValueError, TimeoutError) as err:
        raise fail(err) from None
    exec_on(slots, command)
