"""The recipe and its schedule (pipeline/recipe.py)."""

from __future__ import annotations


import pytest

from pipeline.recipe import TrainConfig, learning_rate


def test_learning_rate_schedule_counts_epochs_from_one():
    c = TrainConfig(arch="resnet8")
    # float64 products of 0.1: approx's default 1e-6 covers their last-bit rounding
    assert [learning_rate(c, e) for e in (1, 150, 151, 181, 211, 240)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.0005, 0.00005, 0.00005])
