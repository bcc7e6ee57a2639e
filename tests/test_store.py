"""The Zarr logit store on its own: layout, units, provenance, atomic creation, errors."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.store import (
    LogitStore,
    ProvenanceMismatch,
    StoreError,
    Unit,
    compare,
    create_or_open,
    plan_layout,
    store_id,
)
from pipeline.units import format_bytes
from stages.dump import parse_shard


def provenance(**changes) -> dict:
    base = {
        "teacher": {"arch": "resnet8", "num_classes": 5, "in_channels": 3, "weights_sha256": "a" * 64},
        "dataset": {"name": "synthetic", "split": "train", "size": 10, "num_classes": 5, "subset": None, "fingerprint": "f" * 64},
        "eval_dataset": {"fingerprint": "e" * 64},
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "views": {"policy": "per-epoch", "count": 2, "seed": 0, "family": {"kind": "crop", "size": 32, "padding": 4}},
        "dtype": "float32",
        "inference": {"amp": "off"},
    }
    for dotted, value in changes.items():
        node = base
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return base


LAYOUT = plan_layout(slots=2, samples=10, classes=5, param_count=3, param_dtype="int16", dtype="float32",
                     eval_samples=6, chunk_samples=4)


def make(path: Path, prov: dict | None = None) -> LogitStore:
    return create_or_open(path, prov or provenance(), LAYOUT, np.arange(10) % 5, np.arange(6) % 5)


def fill(store: LogitStore, units=None) -> None:
    for unit in units or store.units():
        if unit.is_eval:
            a, b = store.layout.eval_range(unit.chunk)
            store.write_unit(unit, np.full((b - a, 5), unit.chunk, np.float32))
        else:
            a, b = store.layout.chunk_range(unit.chunk)
            logits = np.arange(a, b)[:, None] + 100.0 * unit.slot + np.arange(5)[None]
            store.write_unit(unit, logits.astype(np.float32), views=np.full((b - a, 3), unit.slot, np.int16),
                             input_crc=np.arange(a, b, dtype=np.uint32))


def test_layout_chunks_units_and_predicted_size():
    assert LAYOUT.chunks == 3 and LAYOUT.chunk_range(2) == (8, 10) and LAYOUT.eval_chunks == 2
    # CIFAR-100 fp16: chunks of at most 4 MiB, split evenly (zarr pads a short edge chunk).
    cifar = plan_layout(slots=240, samples=50_000, classes=100, param_count=3, param_dtype="int16",
                        dtype="float16", eval_samples=10_000)
    assert cifar.chunks == 3 and cifar.chunk_samples == 16_667 and cifar.chunk_samples * 200 <= 4 * 2**20
    assert cifar.eval_chunks == 1 and cifar.eval_chunk_samples == 10_000
    imagenet = plan_layout(slots=100, samples=1_281_167, classes=1000, param_count=5, param_dtype="float32",
                           dtype="float16", eval_samples=50_000)
    assert imagenet.chunk_samples * 2000 <= 4 * 2**20 and imagenet.chunks * imagenet.chunk_samples - 1_281_167 < imagenet.chunks
    assert cifar.view_bytes == 100 * 2 + 3 * 2 + 8
    assert cifar.predicted_bytes == 240 * 50_000 * cifar.view_bytes + 10_000 * 100 * 4 + 60_000 * 8
    with pytest.raises(ValueError, match="dtype"):
        plan_layout(slots=1, samples=1, classes=1, param_count=1, param_dtype="int16", dtype="int8", eval_samples=1)


def test_write_read_round_trip_and_completion(tmp_path):
    store = make(tmp_path / "s.zarr")
    assert [str(u) for u in store.units()[:3]] == ["eval chunk 0", "eval chunk 1", "slot 0 chunk 0"]
    assert not store.complete
    with pytest.raises(StoreError, match="incomplete: 8 of 8 write units missing"):
        store.require_complete()
    fill(store)
    assert store.mark_complete_if_done()
    reopened = LogitStore.open(tmp_path / "s.zarr")
    assert reopened.attrs["complete"] is True
    logits = reopened.read_logits(1)
    assert logits.shape == (10, 5) and logits[7, 2] == 7 + 100 + 2
    assert reopened.read_slot("argmax", 1).tolist() == [4] * 10  # argmax of an increasing row
    views, gathered, crc = reopened.gather(np.array([0, 1] * 5))
    assert views[:, 0].tolist() == [0, 1] * 5 and gathered[3, 0] == 3 + 100 and crc.tolist() == list(range(10))
    eval_logits, eval_labels = reopened.eval_logits()
    assert eval_logits[:, 0].tolist() == [0, 0, 0, 0, 1, 1] and eval_labels.tolist() == [0, 1, 2, 3, 4, 0]
    assert reopened.id == store_id(provenance())


def test_a_missing_test_split_unit_leaves_the_store_incomplete(tmp_path):
    """Every train unit done, one test-split unit not: a student would read NaN teacher test
    logits (the fill value), so the store is neither complete nor marked so."""
    store = make(tmp_path / "s.zarr")
    fill(store, [u for u in store.units() if u != Unit(-1, 1)])
    assert not store.complete and not store.mark_complete_if_done()
    with pytest.raises(StoreError, match="incomplete: 1 of 8 write units missing"):
        store.require_complete()
    assert store.pending() == [Unit(-1, 1)]


def test_shards_partition_the_units_and_resume_skips_done_ones(tmp_path):
    store = make(tmp_path / "s.zarr")
    shards = [store.pending((i, 3)) for i in range(3)]
    assert sorted(u for s in shards for u in s) == sorted(store.units())
    assert not set(shards[0]) & set(shards[1])
    fill(store, shards[1])
    assert store.pending((1, 3)) == [] and store.pending((0, 3)) == shards[0]
    assert len(store.pending()) == len(store.units()) - len(shards[1])
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="I/N|0 <= I < N"):
            parse_shard(bad)


def test_mismatching_provenance_names_every_differing_field(tmp_path):
    make(tmp_path / "s.zarr")
    other = provenance(teacher__weights_sha256="b" * 64, views__count=3, dtype="float16")
    with pytest.raises(ProvenanceMismatch) as err:
        make(tmp_path / "s.zarr", other)
    text = str(err.value)
    assert "teacher.weights_sha256" in text and "views.count: store has 2, requested 3" in text and "dtype" in text
    assert "dataset.fingerprint" not in text
    assert compare({"dataset": {"subset": 5}}, provenance()) == ["dataset.subset: store has null, requested 5"]
    assert store_id(provenance()) != store_id(other)
    # Record-only fields (accuracy, times, file names) never change the id.
    assert store_id(provenance(teacher__accuracy={"top1": 1.0})) == store_id(provenance())


def _race(path: str, racer: int, barrier) -> str:
    """One of several processes creating the same store at the same moment, then writing one
    unit of its own into it; returns the creation record of the store it ended up with."""
    # Every array takes 20 ms to create, as on a slow network file system: a store built in
    # place would be visible half-made, or rebuilt under a racer that already wrote into it.
    create_array = zarr.Group.create_array

    def slow_create_array(self, *args, **kwargs):
        time.sleep(0.02)
        return create_array(self, *args, **kwargs)

    zarr.Group.create_array = slow_create_array
    barrier.wait()
    # `created` is a record-only field, as in a real dump: it differs per racer, not the id.
    store = make(Path(path), provenance(created=f"racer {racer}"))
    fill(store, [RACE_UNITS[racer]])
    return store.attrs["created"]


RACE_UNITS = [Unit(0, 0), Unit(0, 2), Unit(1, 1), Unit(-1, 1)]


@pytest.mark.slow
def test_concurrent_creation_makes_the_store_exactly_once(tmp_path):
    ctx = mp.get_context("spawn")
    path = str(tmp_path / "race.zarr")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(len(RACE_UNITS))
        with ctx.Pool(len(RACE_UNITS)) as pool:
            seen = pool.starmap(_race, [(path, i, barrier) for i in range(len(RACE_UNITS))])
    # One store, made by one racer: every racer opened that one (no half-made store, no
    # second creation under it), and every unit any racer wrote is still there.
    store = LogitStore.open(path)
    assert len(set(seen)) == 1 and store.attrs["created"] == seen[0], seen
    train, evals = store.done_mask()
    assert [bool(evals[u.chunk] if u.is_eval else train[u.slot, u.chunk]) for u in RACE_UNITS] == [True] * 4
    assert int(train.sum() + evals.sum()) == 4
    assert store.read_logits(1)[5, 2] == 5 + 100 + 2  # Unit(1, 1) holds samples 4-7
    assert [p.name for p in tmp_path.iterdir()] == ["race.zarr"]  # no temporary leftovers


def test_foreign_missing_and_corrupted_stores_fail_in_one_line(tmp_path):
    with pytest.raises(StoreError, match="no such logit store"):
        LogitStore.open(tmp_path / "nope.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a logit store"):
        LogitStore.open(tmp_path / "empty")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="not an rld logit store"):
        LogitStore.open(tmp_path / "plain.zarr")

    store = make(tmp_path / "s.zarr")
    fill(store)
    chunk = tmp_path / "s.zarr" / "logits" / "c" / "1" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"logits chunk \(slot 1, samples 4-7\) is corrupted") as err:
        LogitStore.open(tmp_path / "s.zarr").read_logits(1)
    assert "\n" not in str(err.value)


def test_unit_blocks_must_have_the_unit_shape(tmp_path):
    store = make(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match=r"logits block must have shape \(4, 5\)"):
        store.write_unit(Unit(0, 0), np.zeros((3, 5), np.float32), views=np.zeros((3, 3)), input_crc=np.zeros(3))


def test_sizes_quoted_in_the_docs_are_the_codes_predictions():
    """The docs and the presets quote store sizes: they must be what `rld dump`
    predicts (Layout.predicted_bytes), not a hand calculation of the logits alone."""
    from helpers import REPO
    from pipeline.views import CropFlip, ResizedCropFlip

    def size(family, slots: int, samples: int, classes: int, eval_samples: int) -> str:
        layout = plan_layout(slots=slots, samples=samples, classes=classes, param_count=len(family.param_names),
                             param_dtype=np.dtype(family.param_dtype).name, dtype="float16", eval_samples=eval_samples)
        return format_bytes(layout.predicted_bytes)

    cifar_exhaustive = size(CropFlip(), 162, 50_000, 100, 10_000)
    cifar_240 = size(CropFlip(), 240, 50_000, 100, 10_000)
    imagenet = size(ResizedCropFlip(), 100, 1_281_167, 1000, 50_000)
    assert (cifar_exhaustive, cifar_240, imagenet) == ("1.7 GB", "2.6 GB", "269.3 GB")
    docs = {name: (REPO / name).read_text() for name in
            ("docs/workflow.md", "docs/store-format.md", "config/cifar100.yaml", "config/imagenet.yaml")}
    for name in ("docs/workflow.md", "docs/store-format.md", "config/cifar100.yaml"):
        assert f"{cifar_exhaustive}" in docs[name], name
    assert f"{cifar_240}" in docs["docs/store-format.md"]
    for name in ("docs/workflow.md", "config/imagenet.yaml"):
        assert f"{imagenet} per teacher" in docs[name], name


def test_a_store_of_other_images_names_the_dataset_setting_that_differs():
    """A fingerprint says only that the images differ; the dataset option that made them does."""
    stored = provenance(dataset__spec="imagefolder:resize=32", dataset__fingerprint="b" * 64)
    requested = {"dataset": {"spec": "imagefolder", "fingerprint": "a" * 64}}
    lines = compare(requested, stored)
    assert lines[0] == "resize: store 32, requested none" and lines[1].startswith("dataset.fingerprint: store has")
