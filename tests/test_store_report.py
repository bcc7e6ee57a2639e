"""Tests for `rld inspect` (pipeline.store_report, stages.inspect, plots.plot_store_report).

Stores are built here with hand-made logits (no teacher), and every expected number is
computed independently with plain numpy in float64: ranks from a stable sort, masks as
literal comparisons, softmax by hand, and one ECE case checked with pencil and paper.

Tolerances: counts are compared exactly. Percentages and means of counts use
pytest.approx's default (1e-6 relative): they are float64 ratios of integers, computed in
another order here. Confidences come from inspect's float32 softmax (float32 rounds each
to ~6e-8 relative; summed in float64): 1e-5 relative for a mean of 120, 1e-6 absolute for
hand values below 1, and 1e-4 absolute for ECE in percent (100x the same rounding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import pipeline.store_report.reading as reading
from pipeline.store_report import format_report, inspect_store
from pipeline.store_report.reading import CheckedArray, chunk_keys
from pipeline.store import LogitStore, StoreError, create_or_open, plan_layout
from stages.cli import main

CLASSES = 8
NAMES = [f"cls{c}" for c in range(CLASSES)]


def make_store(
    path: Path, logits: np.ndarray, labels: np.ndarray, eval_logits: np.ndarray, eval_labels: np.ndarray, *,
    dtype: str = "float16", chunk: int = 16, skip: set[tuple[int, int]] = frozenset(), names: list[str] | None = None,
) -> LogitStore:
    """A store holding exactly `logits` [S, N, C]; units in `skip` are left undone."""
    slots, samples, classes = logits.shape
    layout = plan_layout(slots=slots, samples=samples, classes=classes, param_count=3, param_dtype="int16",
                         dtype=dtype, eval_samples=len(eval_labels), chunk_samples=chunk)
    provenance = {
        "teacher": {"arch": "toy", "num_classes": classes, "in_channels": 3, "weights_sha256": "ab" * 32,
                    "accuracy": {"top1": 61.25, "top5": 90.0}},
        "dataset": {"name": "toy", "split": "train", "size": samples, "num_classes": classes, "subset": None,
                    "fingerprint": "cd" * 32, "classes": names},
        "eval_dataset": {"name": "toy", "split": "test", "size": len(eval_labels), "fingerprint": "ef" * 32},
        "views": {"policy": "pool", "count": slots, "seed": 3, "family": {"kind": "crop", "size": 32, "padding": 4}},
        "dtype": dtype, "code_version": "test", "created": "2025-01-01T00:00:00+00:00",
    }
    store = create_or_open(path, provenance, layout, labels, eval_labels)
    rng = np.random.default_rng(0)
    for unit in store.units():
        if (unit.slot, unit.chunk) in skip:
            continue
        if unit.is_eval:
            a, b = layout.eval_range(unit.chunk)
            store.write_unit(unit, eval_logits[a:b])
        else:
            a, b = layout.chunk_range(unit.chunk)
            views = np.stack([rng.integers(0, 9, b - a), rng.integers(1, 9, b - a), rng.integers(0, 2, b - a)], 1)
            store.write_unit(unit, logits[unit.slot, a:b], views=views, input_crc=np.zeros(b - a, np.uint32))
    store.mark_complete_if_done()
    return store


def expected(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Reference statistics of views [V, C] with labels [V], float64, written from the definitions."""
    x = logits.astype(np.float64)
    order = np.argsort(-x, axis=1, kind="stable")  # ties: lower class index first, like argmax
    rank = np.array([np.flatnonzero(o == y)[0] for o, y in zip(order, labels)])
    mask = np.array([(row >= row[y]).sum() for row, y in zip(x, labels)])
    p = np.exp(x - x.max(1, keepdims=True))
    conf = (p / p.sum(1, keepdims=True)).max(1)
    wrong = rank > 0
    classes = x.shape[1]
    per_views = np.array([(labels == c).sum() for c in range(classes)])
    per_errors = np.array([(wrong & (labels == c)).sum() for c in range(classes)])
    return {
        "views": len(labels), "top1": 100 * np.mean(rank == 0), "top5": 100 * np.mean(rank < 5),
        "wrong": 100 * np.mean(wrong), "mask_counts": [int((mask == k).sum()) for k in range(1, classes + 1)],
        "mask_mean": mask.mean(), "size1": 100 * np.mean(mask == 1), "conf": conf.mean(),
        "class_views": per_views, "class_errors": per_errors,
    }


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """3 slots x 40 samples x 8 classes of small integer logits: many ties, chunks of 16, 16, 8."""
    rng = np.random.default_rng(1)
    logits = rng.integers(-3, 4, (3, 40, CLASSES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 40)
    logits[:, np.arange(40), labels] += 2.0  # a teacher that is mostly right
    eval_logits = rng.normal(size=(20, CLASSES)).astype(np.float32)
    eval_labels = rng.integers(0, CLASSES, 20)
    path = tmp_path_factory.mktemp("toy") / "store.zarr"
    make_store(path, logits, labels, eval_logits, eval_labels, names=NAMES)
    return {"path": path, "logits": logits, "labels": labels, "eval_logits": eval_logits,
            "eval_labels": eval_labels, "report": inspect_store(path)}


def test_statistics_match_numpy(toy):
    rep, cached = toy["report"], toy["report"]["cached_views"]
    stored = toy["logits"].astype(np.float16).astype(np.float32)  # what the fp16 store holds
    ref = expected(stored.reshape(-1, CLASSES), np.tile(toy["labels"], 3))
    assert ref["mask_counts"][1] > 0 and 0 < ref["wrong"] < 100  # ties and errors are exercised
    assert cached["views"] == ref["views"] == 120
    assert cached["top1_pct"] == pytest.approx(ref["top1"])
    assert cached["top5_pct"] == pytest.approx(ref["top5"])
    assert cached["wrong_pct"] == pytest.approx(ref["wrong"])
    assert cached["mask_size"]["counts"] == ref["mask_counts"]
    assert cached["mask_size"]["mean"] == pytest.approx(ref["mask_mean"])
    assert cached["mask_size"]["size1_pct"] == pytest.approx(ref["size1"])
    assert cached["mean_confidence"] == pytest.approx(ref["conf"], rel=1e-5)
    assert sum(b["views"] for b in cached["reliability"]) == 120
    assert cached["nonfinite_views"] == 0 and cached["argmax_mismatches"] == 0

    per_slot = [expected(stored[s], toy["labels"])["top1"] for s in range(3)]
    assert cached["per_slot_top1_pct"] == pytest.approx(per_slot)

    test = expected(toy["eval_logits"], toy["eval_labels"])
    assert rep["test_split"]["views"] == 20
    assert rep["test_split"]["top1_pct"] == pytest.approx(test["top1"])
    assert rep["test_split"]["top5_pct"] == pytest.approx(test["top5"])


def test_worst_classes(toy):
    stored = toy["logits"].astype(np.float16).astype(np.float32)
    ref = expected(stored.reshape(-1, CLASSES), np.tile(toy["labels"], 3))
    rate = ref["class_errors"] / np.maximum(ref["class_views"], 1)
    worst = toy["report"]["worst_classes"]
    assert worst, "the toy teacher makes mistakes"
    assert [w["error_pct"] for w in worst] == sorted((w["error_pct"] for w in worst), reverse=True)
    assert worst[0]["error_pct"] == pytest.approx(100 * rate.max())
    for w in worst:
        c = w["class"]
        assert w["name"] == NAMES[c]
        assert (w["errors"], w["views"]) == (ref["class_errors"][c], ref["class_views"][c])
    assert len(worst) == min(10, int((ref["class_errors"] > 0).sum()))


def test_report_metadata(toy):
    rep = toy["report"]
    assert rep["array"]["shape"] == [3, 40, CLASSES] and rep["array"]["dtype"] == "float16"
    assert rep["array"]["chunks"] == [1, 16, CLASSES] and "crc32c" in rep["array"]["codecs"]
    comp = rep["completeness"]
    assert comp["complete"] and comp["missing_units"] == 0
    assert (comp["train_units_done"], comp["train_units_total"]) == (9, 9)
    assert [s["done"] for s in comp["slots"]] == [3, 3, 3]
    files = [f for f in toy["path"].rglob("*") if f.is_file()]
    assert rep["disk"]["files"] == len(files)
    assert rep["disk"]["total_bytes"] == sum(f.stat().st_size for f in files)
    assert rep["disk"]["per_array"]["logits"] >= 120 * CLASSES * 2
    ps = rep["provenance_summary"]
    assert ps["teacher"]["arch"] == "toy" and ps["teacher"]["weights_sha256"] == "ab" * 6
    assert ps["dataset"]["fingerprint"] == "cd" * 6 and ps["store_id"] == rep["store_id"]
    views = zarr.open_group(str(toy["path"]), mode="r")["views"][:].reshape(-1, 3)
    assert rep["view_param_means"] == pytest.approx(views.mean(0).tolist())


def test_ece_by_hand(tmp_path):
    """conf 0.75 with 3/4 right, conf 0.9 with 2/4 right: ECE = (4*0 + 4*0.4) / 8 = 20%."""
    ln3, ln9 = np.log(3.0), np.log(9.0)
    rows = [[0.0, ln3]] * 4 + [[ln9, 0.0]] * 4
    logits = np.array([rows], dtype=np.float32)
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 1])
    make_store(tmp_path / "s.zarr", logits, labels, logits[0, :2], labels[:2], dtype="float32", chunk=8)
    cached = inspect_store(tmp_path / "s.zarr")["cached_views"]
    assert cached["ece_pct"] == pytest.approx(20.0, abs=1e-4)
    assert cached["mean_confidence"] == pytest.approx(0.825, abs=1e-6)
    assert cached["wrong_pct"] == pytest.approx(37.5)
    assert cached["mask_size"]["counts"] == [5, 3]
    used = {b["bin"]: b for b in cached["reliability"] if b["views"]}
    assert set(used) == {11, 13}  # 0.75 in (11/15, 12/15], 0.9 in (13/15, 14/15]
    assert used[11]["accuracy"] == pytest.approx(0.75) and used[13]["accuracy"] == pytest.approx(0.5)
    assert used[13]["confidence"] == pytest.approx(0.9, abs=1e-6)


def test_incomplete_store_counts_done_units_only(tmp_path):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 40, CLASSES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 40)
    path = tmp_path / "s.zarr"
    store = make_store(path, logits, labels, logits[0, :10], labels[:10], skip={(1, 0), (1, 2), (-1, 0)})
    # Data of an unfinished unit is on disk but not marked done: it must not count.
    store.group["logits"][1, 0:16] = np.tile(np.where(np.arange(CLASSES) == 0, 50.0, 0.0), (16, 1))
    rep = inspect_store(path)
    comp = rep["completeness"]
    assert not comp["complete"] and comp["missing_units"] == 3
    assert (comp["train_units_done"], comp["eval_units_done"]) == (4, 0)
    assert [s["done"] for s in comp["slots"]] == [3, 1]
    done_views = np.concatenate([logits[0], logits[1, 16:32]]).astype(np.float16).astype(np.float32)
    ref = expected(done_views, np.concatenate([labels, labels[16:32]]))
    assert rep["cached_views"]["views"] == comp["views_done"] == 56
    assert rep["cached_views"]["nonfinite_views"] == 0 and rep["cached_views"]["argmax_mismatches"] == 0
    assert rep["cached_views"]["top1_pct"] == pytest.approx(ref["top1"])
    assert rep["cached_views"]["mask_size"]["counts"] == ref["mask_counts"]
    assert rep["test_split"]["views"] == 0 and rep["test_split"]["top1_pct"] is None

    result = CliRunner().invoke(main, ["inspect", "--store", str(path)])
    assert result.exit_code == 0, result.output
    assert "INCOMPLETE: 3 of 7 write units missing" in result.output
    assert "1 (1/3)" in result.output  # slot 1 has 1 of 3 chunks


@pytest.mark.parametrize("block_bytes", [1, reading.BLOCK_BYTES])
def test_each_chunk_read_once_in_bounded_blocks(toy, monkeypatch, block_bytes):
    """One pass: every logits chunk is read exactly once, in blocks of at most BLOCK_BYTES
    (or one chunk); the blocking does not change a single number."""
    monkeypatch.setattr(reading, "BLOCK_BYTES", block_bytes)
    reads: list[tuple[int, ...]] = []
    original = CheckedArray.__getitem__

    def spy(self, selection):
        block = original(self, selection)
        if self.array.path == "logits":
            reads.extend(chunk_keys(selection, self.array.chunks))
            assert block.nbytes <= max(block_bytes, np.prod(self.array.chunks) * self.dtype.itemsize)
        return block

    monkeypatch.setattr(CheckedArray, "__getitem__", spy)
    report = inspect_store(toy["path"])
    assert sorted(reads) == [(s, c, 0) for s in range(3) for c in range(3)]
    assert report["cached_views"] == toy["report"]["cached_views"]
    assert report["test_split"] == toy["report"]["test_split"]


def test_cli_text_json_and_plot(toy, tmp_path):
    runner = CliRunner()
    rep = toy["report"]
    text = runner.invoke(main, ["inspect", "--store", str(toy["path"])])
    assert text.exit_code == 0, text.output
    cached = rep["cached_views"]
    for needle in (f"{cached['top1_pct']:.2f}%", f"{cached['wrong_pct']:.2f}%", f"{cached['ece_pct']:.2f}%",
                   "complete", "toy", rep["store_id"], "cls", "MCD mask size"):
        assert needle in text.output
    assert len(text.output.splitlines()) < 120

    js = runner.invoke(main, ["inspect", "--store", str(toy["path"]), "--json"])
    assert js.exit_code == 0, js.output
    parsed = json.loads(js.output)
    assert parsed["cached_views"]["top1_pct"] == pytest.approx(cached["top1_pct"])
    assert parsed["cached_views"]["mask_size"]["counts"] == cached["mask_size"]["counts"]
    assert parsed["worst_classes"] == rep["worst_classes"]
    assert parsed["provenance"]["dataset"]["classes"] == NAMES

    png = tmp_path / "sub" / "inspect.png"
    plot = runner.invoke(main, ["inspect", "--store", str(toy["path"]), "--plot", str(png)])
    assert plot.exit_code == 0, plot.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, ["inspect", "--store", *args])
    assert result.exit_code != 0
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_corrupted_chunk_is_one_line_error(toy, tmp_path):
    import shutil

    path = tmp_path / "bad.zarr"
    shutil.copytree(toy["path"], path)
    chunk = path / "logits" / "c" / "0" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    line = _one_line_error([str(path)])
    assert "logits chunk (0, 1, 0)" in line and "corrupted" in line
    with pytest.raises(StoreError, match=r"logits chunk \(0, 1, 0\)"):
        inspect_store(path)


@pytest.mark.parametrize("kind", ["missing", "empty", "plain-group", "array", "no-layout"])
def test_foreign_directory_is_one_line_error(tmp_path, kind):
    path = tmp_path / "thing"
    if kind == "empty":
        path.mkdir()
    elif kind == "plain-group":
        zarr.open_group(str(path), mode="w").attrs["hello"] = 1
    elif kind == "array":
        zarr.create_array(str(path), shape=(4,), dtype="float32")
    elif kind == "no-layout":
        zarr.open_group(str(path), mode="w").attrs["format"] = {"name": "rld-logit-store", "version": 1}
    line = _one_line_error([str(path)])
    assert str(path) in line


def test_nonfinite_and_argmax_mismatch_are_flagged(tmp_path):
    """A NaN row counts as non-finite and nowhere else; a wrong stored argmax is reported."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(1, 32, CLASSES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 32)
    logits[0, 3, 2] = np.nan
    store = make_store(tmp_path / "s.zarr", logits, labels, logits[0, :4], labels[:4], dtype="float32")
    argmax = store.group["argmax"][0, :]
    argmax[7] = (logits[0, 7].argmax() + 1) % CLASSES
    store.group["argmax"][0, :] = argmax
    rep = inspect_store(tmp_path / "s.zarr")
    cached = rep["cached_views"]
    keep = np.arange(32) != 3
    assert cached["nonfinite_views"] == 1 and cached["views"] == 31
    assert cached["top1_pct"] == pytest.approx(expected(logits[0, keep], labels[keep])["top1"])
    assert cached["argmax_mismatches"] == 1
    assert "WARNING" in format_report(rep)


def test_dumped_store_matches_the_teacher(tmp_path, teacher, synth):
    """End to end: on a store written by `dump`, the test-split top-1 is the teacher's own
    recorded accuracy, and every stored argmax agrees with the stored logits."""
    from pipeline.dump import dump
    from pipeline.inference import default_family
    from pipeline.views import ViewSpec

    train_set, test_set = synth
    spec = ViewSpec(default_family(train_set), "per-epoch", 2, seed=5)
    dump(teacher, train_set, test_set, spec, tmp_path / "s.zarr", dtype="float16", batch_size=64,
         chunk_samples=32, progress=False)
    rep = inspect_store(tmp_path / "s.zarr")
    assert rep["completeness"]["complete"] and rep["completeness"]["marked_complete"]
    assert rep["cached_views"]["views"] == 2 * len(train_set)
    assert rep["cached_views"]["argmax_mismatches"] == 0 and rep["cached_views"]["nonfinite_views"] == 0
    # theirs is a float32 mean (100 * k / n rounded to float32: < 1e-5 off for n = 40)
    assert rep["test_split"]["top1_pct"] == pytest.approx(teacher.accuracy["top1"], abs=1e-4)
    assert rep["provenance_summary"]["teacher"]["arch"] == teacher.arch
