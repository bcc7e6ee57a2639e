"""Ensemble teachers: what building an ensemble store costs, and what it saves a student.

(1) Building: K member stores of CIFAR-100 shape (100 classes, float16) combined by
    `build_ensemble`, against reading the same member bytes through zarr, a plain copy of
    the member folders (shutil.copytree), and re-writing one member through the store's
    writer (crc32c, fsync, done markers: the floor of anything that writes a store), in
    seconds per GB of member bytes. The members were just written, so everything reads from
    the page cache: this is the CPU cost, not the disk's.
(2) Training: a student distilling with RLD from an ensemble of K teachers, online (the K
    teachers run every step on the student's batch, their logits averaged) against offline
    from the ensemble store, in images/s of the last epoch's training phase, for each K.
    The offline side paid K teacher passes over the cached views once, when the members were
    dumped; the online side pays K teacher passes per image per epoch.

    python bench/bench_ensemble.py                          # CPU: 3 x 200 MB members; K = 1, 3
    python bench/bench_ensemble.py --slots 100 --samples 4096 --device cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import device_args, machine, random_teacher, resolve, save, synthetic_cifar
from pipeline.dump import dump
from pipeline.ensemble import build_ensemble
from pipeline.recipe import TrainConfig
from pipeline.signals import OnlineSignal, StoreSignal
from pipeline.store import LogitStore, UnitWriter, create_or_open, plan_layout
from pipeline.teacher import Teacher
from pipeline.train import train
from pipeline.views import ViewSpec


class MeanOfLogits(nn.Module):
    """K teachers as one online teacher: the mean of their logits (what a mean-of-logits store holds)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def synthetic_members(folder: Path, k: int, slots: int, samples: int, classes: int) -> list[Path]:
    """K complete stores of the same views with random float16 logits (speed does not depend on the values)."""
    layout = plan_layout(slots=slots, samples=samples, classes=classes, param_count=3, param_dtype="int16",
                         dtype="float16", eval_samples=10_000)
    rng = np.random.default_rng(0)
    labels, eval_labels = rng.integers(0, classes, samples), rng.integers(0, classes, 10_000)
    paths = []
    for i in range(k):
        provenance = {
            "teacher": {"arch": f"random{i}", "num_classes": classes, "in_channels": 3, "weights_sha256": f"{i:064d}"},
            "dataset": {"name": "synthetic", "split": "train", "size": samples, "num_classes": classes, "fingerprint": "f" * 64},
            "views": {"policy": "per-epoch", "count": slots, "seed": 0, "family": {"kind": "crop", "size": 32, "padding": 4}},
            "dtype": "float16",
        }
        store = create_or_open(folder / f"member{i}.zarr", provenance, layout, labels, eval_labels)
        for unit in store.units():
            a, b = layout.eval_range(unit.chunk) if unit.is_eval else layout.chunk_range(unit.chunk)
            logits = rng.normal(scale=4, size=(b - a, classes)).astype(np.float32)
            if unit.is_eval:
                store.write_unit(unit, logits)
            else:
                store.write_unit(unit, logits, views=np.zeros((b - a, 3), np.int16), input_crc=np.arange(a, b, dtype=np.uint32))
        store.mark_complete_if_done()
        paths.append(folder / f"member{i}.zarr")
    return paths


def folder_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())


def bench_building(workdir: Path, k: int, slots: int, samples: int) -> dict[str, float]:
    members = synthetic_members(workdir, k, slots, samples, 100)
    gb = folder_bytes(members) / 1e9
    timings: dict[str, float] = {}

    start = time.perf_counter()
    for path in members:
        store = LogitStore.open(path)
        for slot in range(store.layout.slots):
            store.read_logits(slot)
            store.read_slot("views", slot), store.read_slot("input_crc", slot)
    timings["read_members"] = time.perf_counter() - start

    start = time.perf_counter()
    for i, path in enumerate(members):
        shutil.copytree(path, workdir / f"copy{i}.zarr")
    timings["copy_members"] = time.perf_counter() - start

    # The floor of any build: one store's worth written through the store's own writer
    # (crc32c, fsync, done markers), here a re-write of the first member.
    first = LogitStore.open(members[0])
    start = time.perf_counter()
    rewrite = create_or_open(workdir / "rewrite.zarr", first.provenance, first.layout, first.labels(), first.eval_logits()[1])
    with UnitWriter(rewrite, None) as writer:
        for unit in (u for u in rewrite.units() if not u.is_eval):
            logits, views, crc = first.read_unit(unit, *first.layout.chunk_range(unit.chunk))
            writer.submit(unit, logits, views=views, input_crc=crc)
    timings["rewrite_one_member"] = time.perf_counter() - start

    start = time.perf_counter()
    build_ensemble(members, workdir / "ensemble.zarr", progress=False)
    timings["build_ensemble"] = time.perf_counter() - start
    return {"members": k, "member_gb": gb, **{f"{name}_s_per_gb": t / gb for name, t in timings.items()}}


def bench_training(workdir: Path, ks: list[int], args: argparse.Namespace, device: torch.device, amp: str) -> dict:
    train_set, test_set = synthetic_cifar(args.train_samples)
    spec = ViewSpec.parse("per-epoch:2", "crop", seed=0)
    teachers = []
    for i in range(max(ks)):
        teacher = random_teacher(args.teacher, train_set)
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():  # K different teachers (random_teacher always seeds 0)
            for p in teacher.model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=generator))
        teachers.append(teacher)
        dump(teacher, train_set, test_set, spec, workdir / f"t{i}.zarr", device=device, amp=amp, progress=False)
    rates = {}
    for k in ks:
        if k == 1:
            store = LogitStore.open(workdir / "t0.zarr")
            online_teacher = teachers[0]
        else:
            store = build_ensemble([workdir / f"t{i}.zarr" for i in range(k)], workdir / f"ens{k}.zarr", progress=False).store
            online_teacher = Teacher(arch="ensemble", num_classes=train_set.num_classes, in_channels=3,
                                     model=MeanOfLogits([t.model for t in teachers[:k]]).eval(), dataset={}, family={},
                                     accuracy={}, source="benchmark")
        runs = {"offline": lambda: StoreSignal(store),
                "online": lambda: OnlineSignal(online_teacher, spec, LogitStore.open(workdir / "t0.zarr").numerics.on(device))}
        best = {name: 0.0 for name in runs}
        for r in range(args.rounds):
            for name, signal in runs.items():
                cfg = TrainConfig(arch=args.student, loss="rld", epochs=2, batch_size=64, milestones=(),
                                  device=str(device), amp=amp)
                out = workdir / f"k{k}-{name}-{r}"
                train(cfg, train_set, test_set, signal(), out, progress=False)
                best[name] = max(best[name], json.loads((out / "metrics.json").read_text())[-1]["images_per_s"])
        rates[k] = {**best, "offline_over_online": best["offline"] / best["online"]}
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--slots", type=int, default=20, help="views per sample in each member (per-epoch slots)")
    parser.add_argument("--samples", type=int, default=50_000, help="samples per member store")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--train-samples", type=int, default=1024, help="images a student trains on in (2)")
    parser.add_argument("--k", default="1,3", help="ensemble sizes to train with in (2)")
    parser.add_argument("--skip-training", action="store_true")
    device_args(parser)
    args = parser.parse_args()
    device, amp = resolve(args)

    workdir = Path(tempfile.mkdtemp(prefix="bench-ensemble-"))
    try:
        building = bench_building(workdir / "build", args.members, args.slots, args.samples)
        training = None if args.skip_training else bench_training(
            workdir / "train", [int(k) for k in args.k.split(",")], args, device, amp)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = {"device_type": device.type, "machine": machine(device), "amp": amp, "building": building,
              "training": training, "teacher": args.teacher, "student": args.student,
              "train_samples": args.train_samples, "rounds": args.rounds}
    print(f"{machine(device)} | building from {building['members']} members of {building['member_gb']:.2f} GB in all")
    for name in ("read_members", "copy_members", "rewrite_one_member", "build_ensemble"):
        print(f"  {name:<20}{building[f'{name}_s_per_gb']:8.2f} s per GB of member bytes")
    floor = building["read_members_s_per_gb"] + building["rewrite_one_member_s_per_gb"]
    print(f"  build / read = {building['build_ensemble_s_per_gb'] / building['read_members_s_per_gb']:.2f}   "
          f"build / copy = {building['build_ensemble_s_per_gb'] / building['copy_members_s_per_gb']:.2f}   "
          f"build / (read members + rewrite one) = {building['build_ensemble_s_per_gb'] / floor:.2f}")
    for k, r in (training or {}).items():
        print(f"  K={k} teachers ({args.teacher} -> {args.student}, {amp}): offline {r['offline']:.0f} img/s, "
              f"online {r['online']:.0f} img/s, offline/online = {r['offline_over_online']:.2f}")
    print(f"  -> {save('ensemble', result)}")


if __name__ == "__main__":
    main()
