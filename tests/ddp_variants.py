"""`rld student train` inside torchrun ranks, with DDP intact and deliberately broken.

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_variants.py OUT VARIANT[,VARIANT...] rld-args...

runs `rld rld-args... --out OUT/VARIANT` once per variant, one after the other in the same
ranks (one torchrun start-up for all of them). Variants:
- `intact`: the library as it is;
- `no-grad-sync`: DistributedDataParallel replaced by the bare model, so each rank steps
  on its own share of the batch and no gradient crosses ranks;
- `local-batchnorm`: the global-batch BatchNorm normalises with this rank's statistics only.

tests/test_train.py runs the broken variants as controls: its DDP check must tell them
apart from an intact run, or it would not be checking DDP at all.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import torch.distributed as dist
from torch import nn


def _bare(module: nn.Module, *args: object, **kwargs: object) -> nn.Module:
    return module


@contextlib.contextmanager
def broken(variant: str) -> Iterator[None]:
    from pipeline import distributed

    saved = nn.parallel.DistributedDataParallel, distributed.GlobalBatchNorm2d.forward
    if variant == "no-grad-sync":
        nn.parallel.DistributedDataParallel = _bare  # type: ignore[misc]
    elif variant == "local-batchnorm":
        distributed.GlobalBatchNorm2d.forward = nn.BatchNorm2d.forward  # type: ignore[method-assign]
    elif variant != "intact":
        raise SystemExit(f"variant must be intact, no-grad-sync or local-batchnorm, got {variant!r}")
    try:
        yield
    finally:
        nn.parallel.DistributedDataParallel, distributed.GlobalBatchNorm2d.forward = saved  # type: ignore[misc]


def main() -> None:
    out, variants, args = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
    from stages.cli import main as rld

    # A process group cannot be re-created under torchrun once destroyed: keep the first
    # one for every run and destroy it at the end.
    destroy, dist.destroy_process_group = dist.destroy_process_group, lambda *a, **k: None
    try:
        for variant in variants:
            with broken(variant):
                rld([*args, "--out", f"{out}/{variant}"], prog_name="rld", standalone_mode=False)
    finally:
        if dist.is_initialized():
            destroy()


if __name__ == "__main__":
    main()
