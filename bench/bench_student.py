"""Stage 2 speed: a student from the store against the student alone and an online teacher.

Measured side by side in one process with pipeline.train.train (the real loop: views,
DataLoader, logits gathered from the epoch plan, loss, SGD), on the same views:
  (a) the student alone with CE,
  (b) offline RLD, teacher logits read from a logit store,
  (c) online RLD, the teacher run every step on the same batch (mdistiller's way).
Images/s are of the training phase of the last epoch (evaluation excluded).
Targets: (b)/(a) >= 0.95 and (b)/(c) >= 2.5.

    python bench/bench_student.py                   # CPU: resnet32x4 -> resnet8x4, 1024 images
    python bench/bench_student.py --samples 20000   # a GPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from common import device_args, machine, random_teacher, resolve, save, synthetic_cifar
from pipeline.dump import dump
from pipeline.store import LogitStore
from pipeline.recipe import TrainConfig
from pipeline.signals import OnlineSignal, StoreSignal, ViewsOnly
from pipeline.train import train
from pipeline.views import ViewSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="default: up to 8 on CUDA, 0 on CPU")
    device_args(parser)
    args = parser.parse_args()
    device, amp = resolve(args)

    train_set, test_set = synthetic_cifar(args.samples)
    teacher = random_teacher(args.teacher, train_set)
    spec = ViewSpec.parse("per-epoch:2", "crop", seed=0)
    workdir = Path(tempfile.mkdtemp(prefix="bench-student-"))
    try:
        dump(teacher, train_set, test_set, spec, workdir / "store.zarr", device=device, amp=amp, progress=False)
        store = LogitStore.open(workdir / "store.zarr")
        runs = {
            "a_student_alone_ce": ("ce", lambda: ViewsOnly(spec)),
            "b_offline_rld_store": ("rld", lambda: StoreSignal(store)),
            "c_online_rld_teacher": ("rld", lambda: OnlineSignal(teacher, spec, store.numerics.on(device))),
        }
        best = {name: 0.0 for name in runs}
        for r in range(args.rounds):
            for name, (loss, signal) in runs.items():
                cfg = TrainConfig(arch=args.student, loss=loss, epochs=2, batch_size=args.batch_size, milestones=(),
                                  device=str(device), amp=amp, num_workers=args.workers)
                out = workdir / f"{name}-{r}"
                train(cfg, train_set, test_set, signal(), out, progress=False)
                rate = json.loads((out / "metrics.json").read_text())[-1]["images_per_s"]
                best[name] = max(best[name], rate)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    a, b, c = best.values()
    result = {"device_type": device.type, "machine": machine(device), "teacher": args.teacher, "student": args.student,
              "amp": amp, "samples": args.samples, "batch_size": args.batch_size, "rounds": args.rounds,
              "images_per_s": best, "offline_over_alone": b / a, "offline_over_online": b / c}
    print(f"{machine(device)} | {args.teacher} -> {args.student}, {amp}, batch {args.batch_size}, {args.samples} images")
    print(f"  (a) student alone, CE        {a:9.0f} img/s")
    print(f"  (b) offline RLD from store   {b:9.0f} img/s")
    print(f"  (c) online RLD (teacher)     {c:9.0f} img/s")
    print(f"  (b)/(a) = {b / a:.3f}  (target >= 0.95)    (b)/(c) = {b / c:.2f}  (target >= 2.5)")
    print(f"  -> {save('student', result)}")


if __name__ == "__main__":
    main()
