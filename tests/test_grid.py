"""Grids of students in the config expand to named students, options only where they apply."""

from __future__ import annotations

import pytest

from pipeline.grid import expand_students


def test_a_loss_seed_and_beta_grid_expands_to_named_students():
    students = expand_students({
        "r8": {"arch": "resnet8x4", "store": "s", "loss": ["ce", "kd", "dkd", "rld"], "seed": [0, 1],
               "loss_options": {"beta": [2, 8.0], "warmup": 2}},
        "alone": {"arch": "resnet8x4", "loss": "ce"},
    })
    ce_kd = [f"r8-{loss}-s{seed}" for loss in ("ce", "kd") for seed in (0, 1)]
    dkd_rld = [f"r8-{loss}-beta{b}-s{seed}" for loss in ("dkd", "rld") for b in (2, 8) for seed in (0, 1)]
    assert sorted(students) == sorted(ce_kd + dkd_rld + ["alone"])
    assert students["r8-rld-beta8-s1"] == {"arch": "resnet8x4", "store": "s", "loss": "rld", "seed": 1,
                                           "loss_options": {"beta": 8.0, "warmup": 2}}
    # beta and warmup do not apply to ce or kd, so they are not passed to them.
    assert students["r8-kd-s0"]["loss_options"] == {} and students["r8-ce-s1"]["loss_options"] == {}
    assert students["alone"] == {"arch": "resnet8x4", "loss": "ce"}


def test_a_single_listed_key_names_only_that_part():
    students = expand_students({"x": {"arch": "resnet8", "loss": "kd", "seed": [3, 4]}})
    assert sorted(students) == ["x-s3", "x-s4"] and students["x-s4"]["seed"] == 4


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"x": {"arch": "a", "loss": ["ce", "kd"], "loss_options": {"beta": [2, 4]}}}, "beta applies to none of the losses"),
        # an entry without lists is checked too: its student would fail only when its job runs
        ({"x": {"arch": "a", "loss": "ce", "loss_options": {"beta": 2}}}, r"x\.loss_options\.beta applies to none of the losses \['ce'\]"),
        ({"x": {"arch": "a", "loss": "rld", "seed": []}}, "students.x.seed is an empty list"),
        ({"x": {"arch": "a", "loss": "rld", "seed": [1, 1]}}, "lists a value twice"),
        # 2 and 2.0 are two YAML values but one name part (beta2)
        ({"x": {"arch": "a", "loss": "rld", "loss_options": {"beta": [2, 2.0]}}}, r"x\.loss_options\.beta lists a value twice: \[2, 2\.0\]"),
        ({"x": {"arch": "a", "loss": "kd", "seed": [0]}, "x-s0": {"arch": "a", "loss": "ce"}}, "'x-s0' is produced twice"),
    ],
)
def test_bad_grids_fail_naming_the_entry(entries, message):
    with pytest.raises(ValueError, match=message):
        expand_students(entries)


def test_every_listed_key_names_its_part_in_the_documented_order():
    """loss, arch, store, then options alphabetically (whatever their order in the config), then
    seed: a grid over stores must not give two students one name, and reordering a config's
    keys must not rename (and so retrain) its students."""
    students = expand_students({"x": {"arch": ["resnet8", "resnet14"], "store": ["pe", "pool"], "loss": ["kd", "rld"],
                                      "seed": [0], "loss_options": {"warmup": [1, 2], "beta": [2, 4]}}})
    assert len(students) == 2 * 2 * (1 + 4)
    assert students["x-kd-resnet14-pool-s0"] == {"arch": "resnet14", "store": "pool", "loss": "kd", "seed": 0,
                                                 "loss_options": {}}
    assert students["x-rld-resnet8-pe-beta4-warmup1-s0"]["loss_options"] == {"warmup": 1, "beta": 4}
    assert sorted(expand_students({"y": {"arch": "a", "loss": "kd", "store": ["pe", "pool"]}})) == ["y-pe", "y-pool"]
