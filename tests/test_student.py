"""What a student trains on (pipeline/student.py), and `rld student train` as a user or
Snakemake runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import STUDENT, SUBPROCESS_ENV, SYNTH, cli, max_weight_delta, rld
from pipeline.dump import dump
from pipeline.signals import OnlineSignal, StoreSignal
from pipeline.store import LogitStore, StoreError
from pipeline.teacher import load_teacher
from pipeline.views import ViewSpec


def test_a_store_student_takes_its_data_and_epochs_from_the_store(tmp_path, teacher):
    """A store of 2 views per sample of the first 5 training samples of each class left after
    holding out the last 4 for validation, and of the first 3 test samples: a student naming
    only the store trains on exactly those samples, selects on those 16 validation samples
    (the test subset comes from the store's test record, not its training record), and trains
    2 epochs unless told otherwise."""
    from pipeline.data import load_dataset, load_splits
    from pipeline.student import DataRequest, student_inputs

    train_set, test_set = load_splits(SYNTH, subset=5, test_subset=3, val_split=4)
    path = tmp_path / "sub.zarr"
    dump(teacher, train_set, test_set, ViewSpec.parse("per-epoch:2", "crop", seed=5), path, dtype="float32",
         progress=False)
    inputs = student_inputs("kd", DataRequest(), store_path=str(path))
    assert inputs.train_set.fingerprint == train_set.fingerprint and inputs.test_set.fingerprint == test_set.fingerprint
    assert inputs.val_set.fingerprint == load_dataset(SYNTH, "val", val_split=4).fingerprint
    assert (len(inputs.train_set), len(inputs.val_set), len(inputs.test_set), inputs.epochs) == (20, 16, 12, 2)
    assert isinstance(inputs.signal, StoreSignal) and inputs.signal.spec.seed == 5
    assert student_inputs("kd", DataRequest(), store_path=str(path), epochs=5).epochs == 5


def test_without_a_store_the_views_are_seeded_by_the_student_seed_unless_given():
    """Students of seeds 0, 1, 2 see views of their own (as they would from per-seed stores);
    --view-seed overrides, and an epoch count is the paper's 240 unless given."""
    from pipeline.student import DEFAULT_EPOCHS, DataRequest, student_inputs

    data = DataRequest(dataset=SYNTH)
    default = student_inputs("ce", data, seed=3, epochs=2)
    assert (default.signal.spec.seed, default.signal.spec.policy, default.signal.spec.num_slots, default.epochs) == (
        3, "per-epoch", 2, 2)
    pool = student_inputs("ce", data, seed=3, views="pool:4")
    assert (pool.signal.spec.seed, pool.signal.spec.num_slots, pool.epochs) == (3, 4, DEFAULT_EPOCHS)
    assert student_inputs("ce", data, seed=3, views="pool:4", view_seed=7).signal.spec.seed == 7


def test_an_online_teacher_must_be_the_teacher_of_the_store(tmp_path, teacher_file, store32):
    """--online-teacher with --logits computes the store's logits again; another teacher's
    (here the same one with one bias changed) would silently distil from other logits."""
    from pipeline.student import DataRequest, student_inputs

    other = load_teacher(teacher_file)
    with torch.no_grad():
        other.model.fc.bias[0] += 1.0
    other.save(tmp_path / "other.pt")
    with pytest.raises(StoreError, match=r"teacher\.weights_sha256: store has"):
        student_inputs("kd", DataRequest(), store_path=str(store32.path), online_teacher=str(tmp_path / "other.pt"))
    same = student_inputs("kd", DataRequest(), store_path=str(store32.path), online_teacher=str(teacher_file))
    assert isinstance(same.signal, OnlineSignal)


# ---------------------------------------------------------------------------------------
# Through the CLI, as a user or Snakemake runs it


def test_cli_refuses_bad_requests_in_one_line(tmp_path, store32, teacher_file):
    def fails(*args, match):
        result = cli(*args)
        assert result.exit_code == 1, result.output
        assert match in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr

    logits = ["--store", str(store32.path)]
    fails("student", "train", "--arch", "resnet9", *logits, "--out", str(tmp_path / "a"), match="Valid names: resnet8, resnet14")
    fails(*STUDENT, *logits, "--loss", "kd", "--beta", "2", "--out", str(tmp_path / "b"),
          match="--beta does not apply to --loss kd; its options: --ce-weight, --kd-weight")
    fails(*STUDENT, "--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "c"), match="no such logit store")
    fails(*STUDENT, *logits, "--subset", "5", "--out", str(tmp_path / "d"), match="dataset.subset: store has null, requested 5")
    fails(*STUDENT, *logits, "--dataset", "synthetic:classes=5,train=96,test=40", "--out", str(tmp_path / "e"),
          match="dataset.num_classes: store has 4, requested 5")
    fails(*STUDENT, *logits, "--augment", "crop:size=32,padding=2", "--out", str(tmp_path / "f"), match="views.family")
    fails(*STUDENT, "--loss", "rld", "--dataset", SYNTH, "--out", str(tmp_path / "g"), match="needs a teacher")
    fails(*STUDENT, *logits, "--same-t", "--alpha-temperature", "2", "--out", str(tmp_path / "h"),
          match="--same-t sets the SCD temperature to -T; give it or --alpha-temperature, not both")
    fails(*STUDENT, *logits, "--amp", "fp16", "--device", "cpu", "--out", str(tmp_path / "i"),
          match="fp16 autocast is for CUDA; use bf16 on CPU")
    assert not any((tmp_path / n).exists() for n in "abcdefghi")
    # teacher import only evaluates: it has no training or view-building options to ignore
    result = cli("teacher", "import", "--arch", "resnet8", "--weights", str(teacher_file), "--dataset", SYNTH,
                 "--channels-last", "--out", str(tmp_path / "t.pt"))
    assert result.exit_code == 2 and "No such option '--channels-last'" in result.stderr


def test_same_t_gives_the_scd_part_the_temperature_given_with_T(tmp_path, store32):
    """--same-t is the official code's flag: SCD uses the MCD temperature, the one -T gives."""
    result = cli(*STUDENT, "--store", str(store32.path), "--loss", "rld", "--same-t", "-T", "2", "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    options = json.loads((tmp_path / "s" / "config.json").read_text())["config"]["loss_options"]
    assert options["temperature"] == 2.0 and options["alpha_temperature"] == 2.0, options


def test_cli_defaults_make_store_and_online_teacher_students_bitwise_equal(tmp_path, teacher_file):
    """What README and --help promise for the defaults on a CPU: a student of an fp16 store
    and one whose --online-teacher adopts that store's numerics and dtype end bitwise equal."""
    store = tmp_path / "s.zarr"
    dumped = cli("dump", "--teacher", str(teacher_file), "--dataset", SYNTH, "--views", "per-epoch:2", "--quiet",
                 "--store", str(store))
    assert dumped.exit_code == 0, dumped.output
    inference = LogitStore.open(store).attrs["inference"]
    assert {k: inference[k] for k in ("device", "amp", "channels_last")} == {"device": "cpu", "amp": "off", "channels_last": False}
    assert LogitStore.open(store).layout.dtype == "float16"
    student = ["student", "train", "--arch", "resnet8", "--epochs", "2", "--batch-size", "40", "--quiet", "--store", str(store)]
    for name, extra in (("offline", []), ("online", ["--teacher", str(teacher_file)])):
        result = cli(*student, *extra, "--out", str(tmp_path / name))
        assert result.exit_code == 0, result.output
    assert max_weight_delta(tmp_path / "offline" / "final.pt", tmp_path / "online" / "final.pt") == 0.0
    signal = json.loads((tmp_path / "online" / "config.json").read_text())["signal"]
    assert signal["kind"] == "online" and signal["dtype"] == "float16" and signal["numerics"]["channels_last"] is False


@pytest.mark.slow
def test_cli_student_resumes_after_sigkill_with_identical_weights(tmp_path, store32):
    args = [*STUDENT, "--store", str(store32.path)]
    args[args.index("--epochs") + 1] = "3"
    rld(*args, "--out", str(tmp_path / "whole"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "stages.cli", *args, "--out", str(killed)],
                            env={**os.environ, **SUBPROCESS_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # bounds a hung run only: the loop ends at the first checkpoint
    while time.time() < deadline and not (killed / "checkpoint.pt").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the kill should land mid-run"
    rld(*args, "--out", str(killed))
    assert max_weight_delta(tmp_path / "whole" / "final.pt", killed / "final.pt") == 0.0
