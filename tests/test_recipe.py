"""The recipe and its schedule (pipeline/recipe.py): milestones and warm-up follow the run's length."""

from __future__ import annotations

import json

import pytest

from helpers import STUDENT, cli
from stages._options import given_recipe
from pipeline.errors import ConfigError
from pipeline.recipe import TrainConfig, learning_rate, scale_milestones


def test_learning_rate_schedule_counts_epochs_from_one():
    c = TrainConfig(arch="resnet8").resolved()
    # float64 products of 0.1: approx's default 1e-6 covers their last-bit rounding
    assert [learning_rate(c, e) for e in (1, 150, 151, 181, 211, 240)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.0005, 0.00005, 0.00005])


@pytest.mark.parametrize(("epochs", "milestones", "warmup"), [
    (240, (150, 180, 210), 20.0),  # the paper's run: unchanged
    (20, (13, 15, 18), 20 / 12),   # 12.5, 15, 17.5 rounded half up: the evidence presets' hand-picked schedule
    (8, (5, 6, 7), 8 / 12),
    (2, (1,), 2 / 12),             # 1.25, 1.5, 1.75 -> 1, 2, 2: only epoch 1 is inside a 2-epoch run
    (1, (), 1 / 12),
])
def test_an_unset_schedule_is_the_papers_scaled_to_the_run(epochs, milestones, warmup):
    run = TrainConfig(arch="resnet8", loss="rld", epochs=epochs).resolved()
    assert run.milestones == milestones
    assert run.loss_options["warmup"] == pytest.approx(warmup, rel=1e-12)  # one float64 product and quotient
    assert "warmup" not in TrainConfig(arch="resnet8", loss="kd", epochs=epochs).resolved().loss_options


def test_a_schedule_that_is_set_is_kept_and_checked():
    run = TrainConfig(arch="resnet8", loss="dkd", epochs=20, milestones=(10,), loss_options={"warmup": 2.0}).resolved()
    assert run.milestones == (10,) and run.loss_options["warmup"] == 2.0
    assert TrainConfig(arch="resnet8", epochs=20, milestones=()).resolved().milestones == ()  # constant lr
    with pytest.raises(ConfigError, match=r"^milestones 150, 180, 210 are at or past the last epoch \(20\)"):
        TrainConfig(arch="resnet8", epochs=20, milestones=(150, 180, 210)).resolved()
    with pytest.raises(ConfigError, match=r"^milestones 20 are at or past the last epoch \(20\)"):
        TrainConfig(arch="resnet8", epochs=20, milestones=(10, 20)).resolved()
    with pytest.raises(ConfigError, match=r"^a warm-up of 30 epochs is longer than the run \(20\)"):
        TrainConfig(arch="resnet8", loss="rld", epochs=20, loss_options={"warmup": 30.0}).resolved()
    forced = TrainConfig(arch="resnet8", epochs=20, milestones=(150,), force_schedule=True).resolved()
    assert forced.milestones == (150,)


def test_scaled_milestones_lie_inside_the_run():
    for epochs in range(1, 300):
        scaled = scale_milestones(epochs)
        assert all(1 <= m < epochs for m in scaled) and list(scaled) == sorted(set(scaled))


def test_a_short_run_from_the_cli_prints_and_records_its_scaled_schedule(tmp_path, store32):
    """`--epochs 2` alone once kept 150/180/210 and a 20-epoch warm-up: the lr never decayed and
    RLD's terms never reached their weight. Now both follow the run, and the run says so."""
    args = ["student", "train", "--arch", "resnet8", "--epochs", "2", "--batch-size", "48", "--no-channels-last",
            "--quiet", "--store", str(store32.path), "--loss", "rld"]
    result = cli(*args, "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 's'}: 2 epochs, lr 0.05 x0.1 after epoch 1, distillation warmed up over 0.167 epochs" \
        in result.stdout
    config = json.loads((tmp_path / "s" / "config.json").read_text())["config"]
    assert config["milestones"] == [1] and config["loss_options"]["warmup"] == pytest.approx(2 / 12, rel=1e-12)
    rows = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.005])  # float64 products of 0.1

    refused = cli(*STUDENT, "--store", str(store32.path), "--milestones", "150,180,210", "--out", str(tmp_path / "r"))
    assert refused.exit_code == 1 and refused.stderr.strip() == (
        "Error: --milestones: milestones 150, 180, 210 are at or past the last epoch (2): the learning rate would "
        "never decay there; drop them, or force the schedule")
    forced = cli(*STUDENT, "--store", str(store32.path), "--milestones", "150", "--force-schedule",
                 "--out", str(tmp_path / "f"))
    assert forced.exit_code == 0, forced.output


def test_zero_is_a_recipe_setting_not_an_unset_option():
    values = {"lr": 0.0, "weight_decay": 0, "momentum": None, "milestones": (), "force_schedule": False, "seed": 0}
    assert given_recipe(values) == {"lr": 0.0, "weight_decay": 0, "milestones": (), "seed": 0}
