"""Stage 1: the dump writes exactly the teacher's logits of exactly the right views, resumably."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import SUBPROCESS_ENV, SYNTH, cli, rld
from pipeline.data import to_model_input
from pipeline.dump import NonFiniteLogits, dump
from pipeline.inference import Numerics
from pipeline.store import LogitStore, ProvenanceMismatch
from pipeline.views import ViewSpec

ARRAYS = ("logits", "views", "argmax", "input_crc", "labels", "done", "eval/logits", "eval/labels", "eval/done")


def assert_same_store(a: Path, b: Path) -> None:
    sa, sb = LogitStore.open(a), LogitStore.open(b)
    assert sa.id == sb.id
    for name in ARRAYS:
        x, y = sa.group[name][:], sb.group[name][:]
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), f"{name} differs"


def teacher_logits(teacher, images, family, indices, params) -> np.ndarray:
    """The teacher on freshly built views, all in one batch, independently of the dump's batching."""
    views = torch.stack([family.apply(images.image(int(i)), p) for i, p in zip(indices, params)])
    with torch.no_grad():
        return teacher.model.eval()(to_model_input(views, images.mean, images.std)).numpy()


# With the default CPU numerics (float32, contiguous layout) the teacher computes a view the
# same way in any batch of two or more, so stored logits equal a fresh run bit for bit, and
# fp16 stores hold exactly their float32 logits rounded to fp16.


def test_the_teacher_computes_a_view_the_same_in_any_batch(teacher, synth):
    """What bitwise parity rests on: with the default CPU numerics a view's logits do not
    depend on the batch around it, a batch of one included (run next to a copy of itself)."""
    train, _ = synth
    x = to_model_input(train.images[:64], train.mean, train.std)
    numerics = Numerics()
    model = numerics.prepare(teacher.model, torch.device("cpu"))
    with torch.no_grad():
        whole = numerics.forward(model, x)
        for size in (1, 2, 7, 33):
            parts = torch.cat([numerics.forward(model, x[i : i + size]) for i in range(0, 64, size)])
            assert torch.equal(parts, whole), size


def test_per_epoch_store_holds_the_teachers_logits_of_each_epochs_views(tmp_path, teacher, synth):
    train, test = synth
    spec = ViewSpec.parse("per-epoch:3", "crop", seed=4)
    result = dump(teacher, train, test, spec, tmp_path / "s.zarr", dtype="float32", batch_size=25,
                  chunk_samples=32, progress=False)
    assert result.complete and result.units_written == 3 * 3 + 2  # 96 train and 40 test samples in chunks of 32
    store = LogitStore.open(tmp_path / "s.zarr")
    assert store.attrs["complete"] and store.labels().tolist() == train.labels.tolist()
    for slot in range(3):
        params = spec.params(np.arange(len(train)), slot)
        assert np.array_equal(store.read_slot("views", slot), params)
        expected = teacher_logits(teacher, train, spec.family, np.arange(len(train)), params)
        assert np.array_equal(store.read_logits(slot), expected)
        assert np.array_equal(store.read_slot("argmax", slot), expected.argmax(1))
    eval_logits, eval_labels = store.eval_logits()
    test_views = spec.family.test_batch(test.images)
    with torch.no_grad():
        expected = teacher.model(to_model_input(test_views, test.mean, test.std)).numpy()
    assert np.array_equal(eval_logits, expected)
    assert eval_labels.tolist() == test.labels.tolist()
    prov = store.attrs
    assert prov["teacher"]["weights_sha256"] == teacher.weights_sha256
    assert prov["dataset"]["fingerprint"] == train.fingerprint and prov["views"] == spec.to_dict()


@pytest.mark.parametrize("policy", ["pool:2", "exhaustive"])
def test_pool_and_exhaustive_replay_their_views(tmp_path, teacher, synth, policy):
    train, test = synth
    train = train.select(np.arange(8), None)
    spec = ViewSpec.parse(policy, "crop", seed=2)
    dump(teacher, train, test, spec, tmp_path / "s.zarr", dtype="float16", progress=False, batch_size=256)
    store = LogitStore.open(tmp_path / "s.zarr")
    assert store.layout.slots == spec.num_slots and store.layout.dtype == "float16"
    for slot in (0, spec.num_slots - 1):
        params = store.read_slot("views", slot)
        if policy == "exhaustive":
            assert (params == spec.family.enumerate()[slot]).all()
        assert np.array_equal(params, spec.params(np.arange(8), slot))
        expected = teacher_logits(teacher, train, spec.family, np.arange(8), params)
        assert np.array_equal(store.read_logits(slot), expected.astype(np.float16))


def test_interrupted_dump_resumes_to_the_same_store(tmp_path, teacher, synth):
    train, test = synth
    spec = ViewSpec.parse("per-epoch:2", "crop", seed=1)
    kwargs = dict(dtype="float32", chunk_samples=32, progress=False, batch_size=20)
    dump(teacher, train, test, spec, tmp_path / "whole.zarr", **kwargs)

    def die_after_three(unit, count=[0]):  # noqa: B006
        count[0] += 1
        if count[0] == 3:
            raise KeyboardInterrupt

    try:
        dump(teacher, train, test, spec, tmp_path / "killed.zarr", after_unit=die_after_three, **kwargs)
    except KeyboardInterrupt as err:
        kept = err  # as a notebook keeps its last error, and with it the dump's frames
    else:
        raise AssertionError("the dump did not stop")
    # A caller that goes on in the same process (the next stage, a notebook) still trains:
    # the stopped dump left no inference mode behind.
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled() and kept.__traceback__
    partial = LogitStore.open(tmp_path / "killed.zarr")
    missing = len(partial.pending())
    # Three units were durable when it died; the background writer holds up to two more
    # (UnitWriter's depth), which it may already have finished on a slow or loaded machine.
    assert not partial.complete and 3 <= len(partial.units()) - missing <= 3 + 2
    resumed = dump(teacher, train, test, spec, tmp_path / "killed.zarr", **kwargs)
    assert resumed.complete and resumed.units_written == missing
    assert_same_store(tmp_path / "whole.zarr", tmp_path / "killed.zarr")


def test_a_resume_with_other_numerics_is_refused_naming_the_field(tmp_path, teacher, synth):
    """Autocast, memory format and device type change the logits: a store never mixes them."""
    train, test = synth
    spec = ViewSpec.parse("per-epoch:2", "crop", seed=1)
    path = tmp_path / "s.zarr"

    def die_after_three(unit, count=[0]):  # noqa: B006
        count[0] += 1
        if count[0] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dump(teacher, train, test, spec, path, dtype="float32", chunk_samples=32, progress=False, after_unit=die_after_three)
    done = LogitStore.open(path).done_mask()
    for change, message in (({"amp": "bf16"}, "inference.amp: store has off, requested bf16"),
                            ({"channels_last": True}, "inference.channels_last: store has false, requested true")):
        with pytest.raises(ProvenanceMismatch, match=message):
            dump(teacher, train, test, spec, path, dtype="float32", chunk_samples=32, progress=False, **change)
    store = LogitStore.open(path)
    assert all(np.array_equal(a, b) for a, b in zip(store.done_mask(), done))  # nothing written
    assert store.attrs["inference"]["amp"] == "off" and store.attrs["inference"]["channels_last"] is False
    assert store.attrs["inference"]["device"] == "cpu" and store.attrs["inference"]["torch"] == torch.__version__


@pytest.mark.gpu
def test_a_cuda_dump_records_its_numerics_and_verifies_with_them(tmp_path, teacher_file, synth):
    """On CUDA the defaults are bf16 autocast and channels_last; the store records them and a
    re-run with them (rld verify, on CUDA) agrees within the bf16 tolerance."""
    from pipeline.teacher import load_teacher
    from pipeline.verify import verify_store

    train, test = synth
    cuda = torch.device("cuda")
    own = load_teacher(teacher_file)  # moved to the GPU in place: not the session's teacher
    dump(own, train, test, ViewSpec.parse("per-epoch:2", "crop", seed=1), tmp_path / "s.zarr", device=cuda,
         progress=False)
    store = LogitStore.open(tmp_path / "s.zarr")
    assert store.numerics.to_dict() == {"device": "cuda", "amp": "bf16", "channels_last": True}
    report = verify_store(store, own, train, samples=192, device=cuda)
    assert report.ok and report.input_mismatches == 0 and report.tolerance == 0.25, report


DUMP_ARGS = ["--dataset", SYNTH, "--views", "per-epoch:4", "--view-seed", "3", "--dtype", "float32",
             "--chunk-samples", "16", "--batch-size", "16", "--quiet"]


@pytest.mark.slow
def test_sigkilled_dump_process_resumes_and_equals_an_uninterrupted_run(tmp_path, teacher_file):
    cli("dump", "--teacher", str(teacher_file), *DUMP_ARGS, "--store", str(tmp_path / "whole.zarr"))
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "stages.cli", "dump", "--teacher", str(teacher_file), *DUMP_ARGS,
                             "--store", str(killed)], env={**os.environ, **SUBPROCESS_ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Polls until the first unit is durable; the deadline only bounds a hung dump (a loaded
    # CI machine can take a minute to import torch and start the teacher).
    deadline = time.time() + 600
    while time.time() < deadline and not any((killed / "done" / "c").glob("*/*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.exists(), "the dump wrote no unit within 600 s"
    store = LogitStore.open(killed)
    assert 0 < len(store.pending()) < len(store.units()), "the kill should land mid-dump"
    rld("dump", "--teacher", str(teacher_file), *DUMP_ARGS, "--store", str(killed))
    assert_same_store(tmp_path / "whole.zarr", killed)


@pytest.mark.slow
def test_two_shard_processes_fill_one_store_like_one_process(tmp_path, teacher_file):
    cli("dump", "--teacher", str(teacher_file), *DUMP_ARGS, "--store", str(tmp_path / "one.zarr"))
    shared = tmp_path / "two.zarr"
    procs = [subprocess.Popen([sys.executable, "-m", "stages.cli", "dump", "--teacher", str(teacher_file), *DUMP_ARGS,
                               "--shard", f"{i}/2", "--store", str(shared)], env={**os.environ, **SUBPROCESS_ENV},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert LogitStore.open(shared).complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zarr", "two.zarr"]
    assert_same_store(tmp_path / "one.zarr", shared)


def test_dump_refuses_a_store_made_from_other_views_or_data(tmp_path, teacher, synth):
    train, test = synth
    spec = ViewSpec.parse("per-epoch:1", "crop", seed=1)
    dump(teacher, train, test, spec, tmp_path / "s.zarr", progress=False)
    with pytest.raises(ProvenanceMismatch, match="views.seed: store has 1, requested 2"):
        dump(teacher, train, test, ViewSpec.parse("per-epoch:1", "crop", seed=2), tmp_path / "s.zarr", progress=False)
    smaller = train.select(np.arange(50), 5)
    with pytest.raises(ProvenanceMismatch, match="dataset.subset") as err:
        dump(teacher, smaller, test, spec, tmp_path / "s.zarr", progress=False)
    assert "dataset.fingerprint" in str(err.value) and "dataset.size" in str(err.value)
    result = cli("dump", "--teacher", str(tmp_path / "nope.pt"), *DUMP_ARGS, "--store", str(tmp_path / "x.zarr"))
    assert result.exit_code == 1 and "no such teacher file" in result.stderr


def test_non_finite_teacher_logits_stop_the_dump_naming_sample_and_view(tmp_path, teacher_file, synth):
    from pipeline.teacher import load_teacher

    train, test = synth
    broken = load_teacher(teacher_file)
    original = broken.model.forward

    def forward(x):
        out = original(x)
        out[3, 1] = float("nan")  # one logit of row 3 of every batch: the rest of the row stays finite
        return out

    broken.model.forward = forward
    spec = ViewSpec.parse("per-epoch:1", "crop")
    with pytest.raises(NonFiniteLogits, match="test sample 3"):
        dump(broken, train, test, spec, tmp_path / "s.zarr", progress=False, batch_size=64)
    store = LogitStore.open(tmp_path / "s.zarr", mode="r+")
    assert not store.done_mask()[1].any()
    store.group["eval/done"][:] = 1  # pretend the test split is done: the train views fail too
    with pytest.raises(NonFiniteLogits, match="sample 3, view slot 0"):
        dump(broken, train, test, spec, tmp_path / "s.zarr", progress=False, batch_size=64)


def test_max_gb_guard_and_predicted_size_are_printed(tmp_path, teacher_file):
    result = cli("dump", "--teacher", str(teacher_file), *DUMP_ARGS, "--max-gb", "0.00001",
                 "--store", str(tmp_path / "big.zarr"))
    assert result.exit_code == 1 and "exceeds --max-gb" in result.stderr
    # 4 float32 logits + 3 int16 view parameters + argmax and crc32 = 30 bytes a view
    assert "4 views x 96 samples x 4 classes float32 = 13.2 kB predicted (30 B per view), 27 write units" in result.stdout
    assert not (tmp_path / "big.zarr").exists()


def test_verify_accepts_a_faithful_store_and_catches_tampering(tmp_path, teacher_file):
    store_path = tmp_path / "s.zarr"
    cli("dump", "--teacher", str(teacher_file), *DUMP_ARGS, "--store", str(store_path))
    ok = cli("verify", "--store", str(store_path), "--teacher", str(teacher_file), "--samples", "40")
    assert ok.exit_code == 0 and "OK" in ok.stdout and "argmax agreement 100.00%" in ok.stdout
    store = LogitStore.open(store_path, mode="r+")
    # 0.01: above a float32 store's tolerance (1e-3, float32 rounding), below an fp16 store's
    # (2e-2): a float32 store is held to float32 rounding.
    store.group["logits"][2, 0:16] = store.group["logits"][2, 0:16] + 0.01
    bad = cli("verify", "--store", str(store_path), "--teacher", str(teacher_file), "--samples", "64")
    assert bad.exit_code == 1 and "FAILED" in bad.stdout


def test_verify_reports_every_input_crc_mismatch(tmp_path, teacher_file):
    """Five views whose recorded input crc32 differs from the view re-built from their parameters
    (the logits untouched): verify re-runs all 384 views, counts the five and fails."""
    store_path = tmp_path / "s.zarr"
    cli("dump", "--teacher", str(teacher_file), *DUMP_ARGS, "--store", str(store_path))
    crc = LogitStore.open(store_path, mode="r+").group["input_crc"]
    for slot, sample in ((0, 95), (1, 3), (1, 50), (2, 17), (3, 0)):
        crc[slot, sample] = crc[slot, sample] ^ 0x10
    bad = cli("verify", "--store", str(store_path), "--teacher", str(teacher_file), "--samples", "384", "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert report["views_checked"] == 384 and report["input_mismatches"] == 5 and report["ok"] is False
    assert report["max_abs_delta"] == 0.0  # float32 store, same numerics: the logits are bitwise the teacher's


def test_verify_rebuilds_views_from_the_stored_parameters(tmp_path, teacher_file):
    """Three views whose stored parameters were altered (logits and input crc32 untouched): the
    views a student would replay are not the ones the teacher saw, and verify, which rebuilds
    each view from its stored parameters, counts the three."""
    store_path = tmp_path / "s.zarr"
    cli("dump", "--teacher", str(teacher_file), *DUMP_ARGS, "--store", str(store_path))
    views = LogitStore.open(store_path, mode="r+").group["views"]
    for slot, sample in ((0, 10), (2, 40), (3, 95)):
        params = views[slot, sample]
        params[0] = (params[0] + 1) % 9  # the crop one row lower (or back at the top)
        views[slot, sample] = params
    bad = cli("verify", "--store", str(store_path), "--teacher", str(teacher_file), "--samples", "384", "--json")
    report = json.loads(bad.stdout)
    assert bad.exit_code == 1 and report["input_mismatches"] == 3 and report["ok"] is False, report


def test_cli_round_trip_dump_inspect_verify(tmp_path, teacher_file, teacher):
    store = str(tmp_path / "s.zarr")
    dumped = cli("dump", "--teacher", str(teacher_file), *DUMP_ARGS, "--store", store)
    assert dumped.exit_code == 0 and "complete" in dumped.stdout
    report = json.loads(cli("inspect", "--store", store, "--json", "--require-complete").stdout)
    assert report["completeness"]["complete"] is True
    # The test-split accuracy inspect computes from the store is the teacher's own (the
    # teacher's is a float32 mean, inspect's float64: approx's default 1e-6 relative).
    assert report["test_split"]["top1_pct"] == pytest.approx(teacher.accuracy["top1"])
    verified = cli("verify", "--store", store, "--teacher", str(teacher_file), "--samples", "32", "--json")
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"] is True


def test_a_store_with_a_validation_split_holds_the_rest_and_verifies(tmp_path, teacher_file):
    """`rld dump --val-split 4` stores the 80 training samples left after holding out the last
    4 of each class (what its students train on), and `rld verify` reloads those same samples
    from the store's record to re-run the teacher on them."""
    from pipeline.data import load_dataset

    store = tmp_path / "s.zarr"
    dumped = cli("dump", "--teacher", str(teacher_file), "--dataset", SYNTH, "--val-split", "4", "--views", "per-epoch:1",
                 "--dtype", "float32", "--quiet", "--store", str(store))
    assert dumped.exit_code == 0, dumped.output
    recorded = LogitStore.open(store).attrs["dataset"]
    assert (recorded["val_split"], recorded["size"]) == ({"size": 4, "draw": "random", "seed": 0}, 80)
    assert recorded["fingerprint"] == load_dataset(SYNTH, "train", val_split=4).fingerprint
    verified = cli("verify", "--store", str(store), "--teacher", str(teacher_file), "--samples", "16", "--json")
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"] is True, verified.output


def test_a_stores_numerics_on_a_cpu_keep_its_autocast_and_layout_except_fp16():
    """An online teacher on a CPU adopts a CUDA store's numerics as far as a CPU has them: bf16
    autocast and the memory format carry over; fp16 autocast, which this project refuses on a
    CPU (resolve_amp), becomes float32."""
    cpu = torch.device("cpu")
    assert Numerics("cuda", "fp16", True).on(cpu) == Numerics("cpu", "off", True)
    assert Numerics("cuda", "bf16", False).on(cpu) == Numerics("cpu", "bf16", False)
    assert Numerics.from_dict({"device": "cuda", "amp": "fp16"}).on(cpu) == Numerics("cpu", "off", False)
