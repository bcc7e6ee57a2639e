"""Ensemble stores: the members' logits combined view by view, refused when they do not line
up, resumable, inspectable, and read by students like any store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from helpers import STUDENT, cli
from pipeline.dump import dump
from pipeline.ensemble import EnsembleError, build_ensemble
from pipeline.store import LogitStore, create_or_open, plan_layout
from pipeline.teacher import load_teacher
from pipeline.views import ViewSpec

SMALL = "synthetic:classes=4,train=24,test=10"
SPECS = {"per-epoch": "per-epoch:2", "pool": "pool:2", "exhaustive": "exhaustive"}
# A combination is computed in float32 and stored in the store's dtype. Bound: the dtype's
# rounding of the result (float16: half an ulp, 2^-11 relative) plus float32 arithmetic on
# logits of |z| < 30 (a few float32 ulps of 30: 3 * 30 * 2^-24 < 1e-5).
FLOAT32_ARITH = 1e-5
HALF_ULP = {"float16": 2.0 ** -11, "float32": 2.0 ** -24}
# Numpy arithmetic on stored logits, whatever kernels made them: no CPU kernel decides these outcomes.
pytestmark = pytest.mark.once


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, teacher_file) -> list[Path]:
    """The session teacher and two others: its weights with seeded noise (they disagree on some views)."""
    folder = tmp_path_factory.mktemp("ensemble-teachers")
    paths = [Path(teacher_file)]
    for seed in (1, 2):
        teacher = load_teacher(teacher_file)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in teacher.model.parameters():
                p.add_(0.5 * p.std().nan_to_num() * torch.randn(p.shape, generator=generator))
        teacher.save(folder / f"t{seed}.pt")
        paths.append(folder / f"t{seed}.pt")
    return paths


def dump_member(path: Path, teacher: Path, views: str, *, dtype: str = "float16", view_seed: int = 3,
                dataset: str = SMALL) -> Path:
    """A store of 24 samples in chunks of 10 (an edge chunk of 4); exhaustive's 162 slots in one
    chunk each, which keeps its write units (and so the test's time) three times fewer."""
    from pipeline.data import load_splits

    train, test = load_splits(dataset)
    spec = ViewSpec.parse(views, "crop", seed=view_seed)
    dump(load_teacher(teacher), train, test, spec, path, dtype=dtype, chunk_samples=None if views == "exhaustive" else 10,
         progress=False)
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory, teachers) -> dict[str, list[Path]]:
    """Three members per view policy; the per-epoch ones mix float16 and float32."""
    folder = tmp_path_factory.mktemp("members")
    out = {}
    for policy, views in SPECS.items():
        dtypes = ("float16", "float32", "float16") if policy == "per-epoch" else ("float16",) * 3
        out[policy] = [dump_member(folder / f"{policy}-{i}.zarr", t, views, dtype=d)
                       for i, (t, d) in enumerate(zip(teachers, dtypes))]
    return out


def reference(paths: list[Path], weights: list[float], space: str, array: str) -> np.ndarray:
    """The combination in float64, from the members' stored logits."""
    z = np.stack([LogitStore.open(p).group[array][:].astype(np.float64) for p in paths])
    w = np.asarray(weights, np.float64) / sum(weights)
    w = w.reshape((-1,) + (1,) * (z.ndim - 1))
    if space == "logits":
        return (w * z).sum(0)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.log((w * p).sum(0))


def assert_combination(store: LogitStore, paths: list[Path], weights: list[float], space: str) -> None:
    for array, dtype in (("logits", store.layout.dtype), ("eval/logits", "float32")):
        ref = reference(paths, weights, space, array)
        got = store.group[array][:].astype(np.float64)
        bound = HALF_ULP[dtype] * np.abs(ref) + FLOAT32_ARITH
        worst = float((np.abs(got - ref) - bound).max())
        assert worst <= 0, f"{array}: off the combination by {worst} beyond the rounding bound"


@pytest.mark.parametrize("policy", list(SPECS))
def test_an_ensemble_store_holds_the_mean_of_its_members_logits(tmp_path, members, teachers, policy):
    paths = members[policy]
    result = build_ensemble(paths, tmp_path / "ens.zarr", progress=False)
    store = LogitStore.open(tmp_path / "ens.zarr")
    assert result.complete and store.complete
    # members of several dtypes give float32; one dtype is kept
    assert store.layout.dtype == ("float32" if policy == "per-epoch" else "float16")
    assert_combination(store, paths, [1, 1, 1], "logits")

    first = LogitStore.open(paths[0])
    for array in ("views", "input_crc", "labels", "eval/labels"):
        assert np.array_equal(store.group[array][:], first.group[array][:]), array
    argmax = store.group["argmax"][:]
    ref = reference(paths, [1, 1, 1], "logits", "logits")
    top2 = np.sort(ref, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-2  # ties within the dtype's rounding may go either way
    assert np.array_equal(argmax[clear], ref.argmax(-1)[clear]) and clear.mean() > 0.9

    teacher = store.attrs["teacher"]
    recorded = [(m["store_id"], m["teacher"]["weights_sha256"]) for m in teacher["ensemble"]["members"]]
    assert recorded == [(LogitStore.open(p).id, load_teacher(t).weights_sha256) for p, t in zip(paths, teachers)]
    eval_ref = reference(paths, [1, 1, 1], "logits", "eval/logits")
    assert teacher["accuracy"]["top1"] == pytest.approx(100 * (eval_ref.argmax(1) == first.eval_logits()[1]).mean())
    assert store.attrs["views"] == first.attrs["views"] and store.attrs["dataset"] == first.attrs["dataset"]


def test_probability_averaging_with_weights_through_the_cli(tmp_path, members):
    paths = members["pool"]
    out = tmp_path / "ens.zarr"
    result = cli("ensemble", *map(str, paths), "--space", "probs", "--weights", "2,1,1", "--dtype", "float32",
                 "--quiet", "--store", str(out))
    assert result.exit_code == 0, result.output
    store = LogitStore.open(out)
    assert "ensemble of 3 stores (probs), test top-1" in result.output and store.id in result.output
    assert store.layout.dtype == "float32"
    assert_combination(store, paths, [2, 1, 1], "probs")
    assert store.attrs["teacher"]["ensemble"]["weights"] == pytest.approx([0.5, 0.25, 0.25])
    # other weights or another space make another store
    again = build_ensemble(paths, tmp_path / "other.zarr", space="logits", weights=[2, 1, 1], dtype="float32",
                           progress=False)
    assert again.store.id != store.id


def test_the_same_command_again_is_a_no_op_and_another_combination_is_refused(tmp_path, members):
    paths = members["per-epoch"]
    first = build_ensemble(paths, tmp_path / "ens.zarr", progress=False)
    again = build_ensemble(paths, tmp_path / "ens.zarr", progress=False)
    assert again.units_written == 0 and again.store.id == first.store.id
    with pytest.raises(Exception, match="teacher.weights_sha256"):
        build_ensemble(paths, tmp_path / "ens.zarr", space="probs", progress=False)


def test_a_killed_build_resumes_with_only_the_missing_units(tmp_path, members, monkeypatch):
    import pipeline.ensemble as ensemble

    paths = members["per-epoch"]
    calls = {"n": 0}
    real = ensemble.combine

    def dies_on_the_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ensemble, "combine", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        build_ensemble(paths, tmp_path / "ens.zarr", progress=False)
    partial = LogitStore.open(tmp_path / "ens.zarr")
    done_before = len(partial.units()) - len(partial.pending())
    assert 0 < done_before < len(partial.units()) and not partial.complete
    monkeypatch.setattr(ensemble, "combine", real)
    resumed = build_ensemble(paths, tmp_path / "ens.zarr", progress=False)
    assert resumed.complete and resumed.units_written == len(partial.units()) - done_before

    whole = build_ensemble(paths, tmp_path / "whole.zarr", progress=False).store
    for array in ("logits", "views", "argmax", "input_crc", "eval/logits"):
        assert np.array_equal(resumed.store.group[array][:], whole.group[array][:]), array


# ---------------------------------------------------------------------------------------
# Refusals: before anything is written, naming the field and both values


def test_members_of_other_views_or_data_are_refused_naming_the_field(tmp_path, members, teachers):
    other_seed = dump_member(tmp_path / "seed4.zarr", teachers[1], "per-epoch:2", view_seed=4)
    other_data = dump_member(tmp_path / "train20.zarr", teachers[1], "per-epoch:2",
                             dataset="synthetic:classes=4,train=20,test=10")
    first = members["per-epoch"][0]
    cases = [
        (other_seed, f"views.seed: {first} has 3, {other_seed} has 4"),
        (other_data, "dataset.size: "),
        (members["pool"][1], f"views.policy: {first} has per-epoch, {members['pool'][1]} has pool"),
    ]
    for member, message in cases:
        out = tmp_path / "never.zarr"
        with pytest.raises(EnsembleError, match="the members hold different views or data") as err:
            build_ensemble([first, member], out, progress=False)
        assert message in str(err.value)
        assert not out.exists()


def fake_store(path: Path, *, classes: int = 5, complete: bool = True, **dataset) -> Path:
    """A store written directly (no teacher): classes and dataset fields of our choosing."""
    provenance = {
        "teacher": {"arch": "resnet8", "num_classes": classes, "in_channels": 3, "weights_sha256": path.name * 4},
        "dataset": {"name": "synthetic", "split": "train", "size": 6, "num_classes": classes, "subset": None,
                    "val_split": None, "fingerprint": "f" * 64, **dataset},
        "eval_dataset": {"fingerprint": "e" * 64},
        "views": {"policy": "per-epoch", "count": 2, "seed": 0, "family": {"kind": "crop", "size": 32, "padding": 4}},
        "dtype": "float32",
    }
    layout = plan_layout(slots=2, samples=6, classes=classes, param_count=3, param_dtype="int16", dtype="float32",
                         eval_samples=4, chunk_samples=4)
    store = create_or_open(path, provenance, layout, np.arange(6) % classes, np.arange(4) % classes)
    units = store.units() if complete else store.units()[:-2]
    for unit in units:
        a, b = layout.eval_range(unit.chunk) if unit.is_eval else layout.chunk_range(unit.chunk)
        logits = np.random.default_rng(b).normal(size=(b - a, classes)).astype(np.float32)
        if unit.is_eval:
            store.write_unit(unit, logits)
        else:
            store.write_unit(unit, logits, views=np.zeros((b - a, 3), np.int16), input_crc=np.arange(a, b, dtype=np.uint32))
    return path


@pytest.mark.parametrize(("change", "message"), [
    ({"classes": 6}, "dataset.num_classes: {a} has 5, {b} has 6; layout.classes: {a} has 5, {b} has 6"),
    ({"subset": 3}, "dataset.subset: {a} has null, {b} has 3"),
    ({"val_split": {"size": 2, "draw": "random", "seed": 0}}, "dataset.val_split: {a} has null, {b} has {{"),
])
def test_another_class_count_subset_or_validation_split_is_refused(tmp_path, change, message):
    a = fake_store(tmp_path / "a.zarr")
    b = fake_store(tmp_path / "b.zarr", **change)
    with pytest.raises(EnsembleError) as err:
        build_ensemble([a, b], tmp_path / "ens.zarr", progress=False)
    assert message.format(a=a, b=b) in str(err.value)
    assert not (tmp_path / "ens.zarr").exists()


def test_an_incomplete_member_is_refused_naming_its_missing_units(tmp_path):
    a = fake_store(tmp_path / "a.zarr")
    b = fake_store(tmp_path / "b.zarr", complete=False)
    result = cli("ensemble", str(a), str(b), "--store", str(tmp_path / "ens.zarr"))
    assert result.exit_code == 1
    assert f"{b} is incomplete: 2 of 5 write units missing (slot 1 chunk 0, slot 1 chunk 1;" in result.output
    assert not (tmp_path / "ens.zarr").exists()


def test_requests_that_make_no_ensemble_are_refused(tmp_path):
    a, b = fake_store(tmp_path / "a.zarr"), fake_store(tmp_path / "b.zarr")
    for paths, out, kwargs, message in [
        ([a], tmp_path / "e.zarr", {}, "an ensemble needs at least 2 member stores, got 1"),
        ([a, a], tmp_path / "e.zarr", {}, "are the same store"),
        ([a, b], a, {}, "is one of the members"),
        ([a, b], tmp_path / "e.zarr", {"weights": [1]}, "1 weights for 2 members"),
        ([a, b], tmp_path / "e.zarr", {"weights": [1, 0]}, "weights must be positive numbers"),
        ([a, b], tmp_path / "e.zarr", {"space": "median"}, "space must be one of"),
        ([a, tmp_path / "nope.zarr"], tmp_path / "e.zarr", {}, "no such logit store"),
    ]:
        with pytest.raises(Exception, match=message):
            build_ensemble(paths, out, progress=False, **kwargs)
        assert not (tmp_path / "e.zarr").exists()
    bad = cli("ensemble", str(a), str(b), "--weights", "1,x", "--store", str(tmp_path / "e.zarr"))
    assert bad.exit_code == 2 and "give numbers separated by commas" in bad.output


def test_members_whose_views_differ_despite_their_provenance_are_refused(tmp_path, members):
    a, b = members["per-epoch"][:2]
    tampered = tmp_path / "b.zarr"
    shutil.copytree(b, tampered)
    views = zarr.open_array(str(tampered / "views"), mode="r+")
    views[1, 12] = views[1, 12] + 1  # slot 1, second chunk (samples 10-19): row 2 of that unit
    with pytest.raises(EnsembleError, match=r"views of slot 1 chunk 1 differ between .* \(first at sample row 2 of the unit\)"):
        build_ensemble([a, tampered], tmp_path / "ens.zarr", progress=False)


# ---------------------------------------------------------------------------------------
# Reading an ensemble store: inspect, students, verify


def test_inspect_shows_the_ensemble_and_each_member_and_their_agreement(tmp_path, members):
    paths = members["pool"]
    build_ensemble(paths, tmp_path / "ens.zarr", progress=False)
    report = json.loads(cli("inspect", "--store", str(tmp_path / "ens.zarr"), "--json").stdout)
    ens = report["ensemble"]
    assert ens["cached_views"]["top1_pct"] == pytest.approx(report["cached_views"]["top1_pct"])
    assert ens["test_split"]["top1_pct"] == pytest.approx(report["test_split"]["top1_pct"])
    own = [json.loads(cli("inspect", "--store", str(p), "--json").stdout) for p in paths]
    for member, alone in zip(ens["members"], own):
        assert member["problem"] is None and member["store_id"] == alone["store_id"]
        assert member["cached_views"]["top1_pct"] == pytest.approx(alone["cached_views"]["top1_pct"])
        assert member["cached_views"]["wrong_pct"] == pytest.approx(100 - alone["cached_views"]["top1_pct"])
        assert member["test_split"]["top1_pct"] == pytest.approx(alone["test_split"]["top1_pct"])
    # agreement, recomputed from the members' stored argmax
    tops = [LogitStore.open(p).group["argmax"][:] for p in paths]
    pair = next(p for p in ens["agreement"]["pairs"] if p["a"] == ens["members"][0]["name"] and p["b"] == ens["members"][1]["name"])
    assert pair["cached_views_pct"] == pytest.approx(100 * (tops[0] == tops[1]).mean())
    all_agree = (tops[0] == tops[1]) & (tops[1] == tops[2])
    assert ens["agreement"]["all_members_cached_views_pct"] == pytest.approx(100 * all_agree.mean())
    assert 0 < all_agree.mean() < 1  # the perturbed teachers disagree somewhere, else this checks nothing

    text = cli("inspect", "--store", str(tmp_path / "ens.zarr")).stdout
    assert "ensemble of 3 stores: mean of logits, weights 0.333 0.333 0.333" in text and "all members" in text
    # a member that moved is reported, not fatal
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "ens.zarr", moved / "ens.zarr")
    text = cli("inspect", "--store", str(moved / "ens.zarr")).stdout
    assert "not found at" in text


def test_a_student_distils_from_an_ensemble_store_and_verify_points_to_the_members(tmp_path, members, teachers):
    build_ensemble(members["per-epoch"], tmp_path / "ens.zarr", progress=False)
    store = LogitStore.open(tmp_path / "ens.zarr")
    result = cli(*STUDENT, "--loss", "rld", "--store", str(tmp_path / "ens.zarr"), "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["signal"]["store_id"] == store.id and summary["signal"]["teacher"]["arch"] == "ensemble"
    assert summary["teacher_test"]["top1"] == pytest.approx(store.attrs["teacher"]["accuracy"]["top1"])
    report = cli("report", str(tmp_path / "s"), "--out", str(tmp_path / "report"))
    assert report.exit_code == 0, report.output
    # the report names an ensemble teacher by its store, as the workflow names stores
    assert "| s | ens (" in (tmp_path / "report" / "summary.md").read_text()

    refused = cli("verify", "--store", str(tmp_path / "ens.zarr"), "--teacher", str(teachers[0]))
    assert refused.exit_code == 1 and "is an ensemble store" in refused.output and "verify each member" in refused.output


# ---------------------------------------------------------------------------------------
# Workflow configs: an ensemble's members are other stores of the config


@pytest.mark.parametrize(("stores", "message"), [
    ({"ens": {"ensemble": ["a", "x"]}}, "config: stores.ens.ensemble member 'x' is not one of stores: ['a', 'b', 'ens']"),
    ({"ens": {"ensemble": ["a", "ens"]}}, "config: stores.ens is an ensemble that contains itself"),
    ({"ens": {"ensemble": ["a", "e2"]}, "e2": {"ensemble": ["b", "ens"]}}, "is an ensemble that contains itself"),
    ({"ens": {"ensemble": ["a", "a"]}}, "config: stores.ens.ensemble lists a store twice: ['a', 'a']"),
    ({"ens": {"ensemble": ["a", "b"], "weights": [1]}}, "config: stores.ens.weights has 1 values for 2 members"),
    ({"ens": {"ensemble": ["a", "b"], "teacher": "t", "views": "pool:2"}},
     "config: stores.ens: an ensemble combines its members' logits; teacher, views belong to a store a teacher fills"),
    ({"a": {"teacher": "t", "views": "pool:2", "weights": [1, 2]}}, "config: stores.a: space and weights combine an ensemble's members"),
    ({"a": {"teacher": "t"}}, "config: stores.a: give a teacher and its views, or an ensemble of stores"),
    ({"a": {"teacher": "u", "views": "pool:2"}}, "config: stores.a.teacher 'u' is not one of teachers: ['t']"),
])
def test_a_config_whose_stores_do_not_add_up_is_refused_in_one_line(stores, message):
    from pipeline.config import check_stores
    from pipeline.errors import ConfigError

    base = {"a": {"teacher": "t", "views": "pool:2"}, "b": {"teacher": "t", "views": "pool:2"}}
    with pytest.raises(ConfigError) as err:
        check_stores({**base, **stores}, {"t": {"arch": "resnet8"}})
    assert message in str(err.value)


def test_ensembles_of_stores_and_of_ensembles_are_accepted():
    from pipeline.config import check_stores

    check_stores({"a": {"teacher": "t", "views": "pool:2"}, "b": {"teacher": "t", "views": "pool:2"},
                  "ab": {"ensemble": ["a", "b"], "space": "probs", "weights": [2, 1]},
                  "abb": {"ensemble": ["ab", "b"]}}, {"t": {}})
