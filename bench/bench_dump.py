"""Stage 1 overhead: `rld dump` throughput against the same teacher's bare batched inference.

Both run the same teacher, batch size and numerics (`rld dump`'s defaults for the device:
autocast, memory format) over the same views, alternating, in one process. "bare" only builds each view batch and runs the
teacher; "dump" is pipeline.dump.dump: DataLoader, crc32 of every input, finiteness
checks, whole-chunk Zarr writes, fsync and markers. The target is dump/bare >= 0.9.

    python bench/bench_dump.py                                           # CPU: 2048 samples x 2 views
    python bench/bench_dump.py --samples 50000 --views per-epoch:6       # a GPU
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from common import device_args, machine, random_teacher, resolve, save, synthetic_cifar
from pipeline.data import to_model_input
from pipeline.dump import dump
from pipeline.inference import Numerics
from pipeline.store import LogitStore
from pipeline.views import ViewSpec, batch_indices


def bare_inference(model, images, test, spec, batch_size, device, numerics) -> int:
    """The teacher alone over the same views (and the test split): the ceiling for a dump."""
    views = 0
    with torch.inference_mode():
        for slot in range(-1, spec.num_slots):
            source = test if slot < 0 else images
            for idx in batch_indices(len(source), batch_size):
                batch = source.batch(idx)
                v = spec.family.test_batch(batch) if slot < 0 else spec.family.apply_batch(batch, spec.params(idx, slot))
                numerics.forward(model, to_model_input(v, images.mean, images.std, device=device)).cpu()
                views += len(idx)
    return views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet32x4")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--views", default="per-epoch:2")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 512 on CUDA, 64 on CPU")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--workers", type=int, default=None, help="default: up to 8 on CUDA, 0 on CPU")
    device_args(parser)
    args = parser.parse_args()
    device, amp = resolve(args)
    args.batch_size = args.batch_size or (512 if device.type == "cuda" else 64)

    train, test = synthetic_cifar(args.samples)
    teacher = random_teacher(args.arch, train)
    numerics = Numerics.resolve(device, amp)
    model = numerics.prepare(teacher.model, device)
    spec = ViewSpec.parse(args.views, "crop", seed=0)
    workdir = Path(tempfile.mkdtemp(prefix="bench-dump-"))
    bare_inference(model, train, test, ViewSpec.parse("per-epoch:1", "crop"), args.batch_size, device, numerics)  # warm-up

    best = {"bare": 0.0, "dump": 0.0}
    store_bytes = views_total = 0
    try:
        for r in range(args.rounds):
            start = time.perf_counter()
            views_total = bare_inference(model, train, test, spec, args.batch_size, device, numerics)
            best["bare"] = max(best["bare"], views_total / (time.perf_counter() - start))

            path = workdir / f"round{r}.zarr"
            start = time.perf_counter()
            dump(teacher, train, test, spec, path, dtype=args.dtype, batch_size=args.batch_size, device=device,
                 amp=amp, num_workers=args.workers, progress=False)
            best["dump"] = max(best["dump"], views_total / (time.perf_counter() - start))
            store = LogitStore.open(path)
            store_bytes = store.nbytes_on_disk()
            cached_views = store.layout.slots * store.layout.samples
            shutil.rmtree(path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "device_type": device.type, "machine": machine(device), "arch": args.arch, "amp": amp, "dtype": args.dtype,
        "samples": args.samples, "views": args.views, "batch_size": args.batch_size, "rounds": args.rounds,
        "bare_views_per_s": best["bare"], "dump_views_per_s": best["dump"], "ratio": best["dump"] / best["bare"],
        "bytes_per_cached_view": store_bytes / cached_views, "store_bytes": store_bytes,
    }
    print(f"{machine(device)} | {args.arch} {amp} batch {args.batch_size} | {args.samples} samples x {args.views}")
    print(f"  bare teacher inference  {best['bare']:10.0f} views/s")
    print(f"  rld dump (to Zarr)      {best['dump']:10.0f} views/s")
    print(f"  dump / bare             {result['ratio']:10.3f}   (target >= 0.9)")
    print(f"  bytes per cached view   {result['bytes_per_cached_view']:10.1f}   ({args.dtype} logits, views, checks)")
    print(f"  -> {save('dump', result)}")


if __name__ == "__main__":
    main()
