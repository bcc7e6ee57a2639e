"""The training loop: students from the store equal students of an online teacher; runs resume
exactly; the loss terms, their weights and every epoch's views are the ones asked for."""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil

import numpy as np
import pytest
import torch

from helpers import POLICIES, SYNTH, cfg, max_weight_delta
from pipeline import train as train_module
from pipeline.dump import dump
from pipeline.errors import RunExists
from pipeline.inference import default_family
from pipeline.methods import METHODS, get_method
from pipeline.recipe import TrainConfig
from pipeline.signals import OnlineSignal, StoreSignal, ViewsOnly
from pipeline.store import LogitStore, StoreError
from pipeline.teacher import load_teacher
from pipeline.train import epoch_order, train
from pipeline.views import ViewSpec, batch_indices


@pytest.fixture(scope="module")
def stores(tmp_path_factory, teacher, synth, store32):
    """policy -> (float32 store, the training set it covers), for every view policy.

    The exhaustive store covers the first 16 samples only: 162 views of 96 would take the
    teacher ~15 s on one core.
    """
    train_set, test_set = synth
    root = tmp_path_factory.mktemp("stores")
    out = {"per-epoch": (store32, train_set)}
    for policy, images in (("pool", train_set), ("exhaustive", train_set.select(np.arange(16), None))):
        spec = ViewSpec.parse("pool:3" if policy == "pool" else policy, "crop", seed=7)
        dump(teacher, images, test_set, spec, root / f"{policy}.zarr", dtype="float32", progress=False)
        out[policy] = (LogitStore.open(root / f"{policy}.zarr"), images)
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_store_gathers_each_samples_view_of_the_epoch(stores, policy):
    """An epoch's plan holds, for every sample, its view's stored parameters, logits and crc."""
    store, images = stores[policy]
    signal = StoreSignal(store)
    n = len(images)
    for epoch, seed in ((0, 1), (2, 1), (2, 4)):
        slots = signal.spec.slots_for_epoch(epoch, n, seed)
        plan = signal.plan(epoch, seed, n)
        for i in range(n):
            slot = int(slots[i])
            assert np.array_equal(plan.params[i], store.read_slot("views", slot)[i])
            assert torch.equal(plan.logits[i], torch.from_numpy(store.read_logits(slot)[i]))
            assert plan.crc[i] == store.read_slot("input_crc", slot)[i]
    if policy == "per-epoch":
        assert signal.spec.slots_for_epoch(2, n, 1).tolist() == [2] * n
    else:  # each sample draws a slot from the student's seed and the epoch
        draws = [tuple(signal.spec.slots_for_epoch(e, n, s)) for e in (0, 1) for s in (1, 2)]
        assert len(set(draws)) == 4
        if policy == "pool":
            assert set(draws[0]) == {0, 1, 2}
        else:
            assert len(set(draws[0])) > n // 2  # 16 draws among 162 slots


@pytest.mark.parametrize("policy", POLICIES)
def test_offline_and_online_teacher_train_the_same_student(tmp_path, synth, stores, teacher, policy):
    """With the store's numerics the online teacher computes the stored logits bit for bit
    (float32 on a CPU), so the students are equal: every loss term of every step, every weight."""
    store, images = stores[policy]
    test_set = synth[1]
    steps = {"store": [], "online": []}
    train(cfg(), images, test_set, StoreSignal(store), tmp_path / "offline", progress=False,
          on_step=lambda e, s, t: steps["store"].append(t))
    online = OnlineSignal(teacher, ViewSpec.from_dict(store.attrs["views"]), store.numerics.on(torch.device("cpu")))
    train(cfg(), images, test_set, online, tmp_path / "online", progress=False,
          on_step=lambda e, s, t: steps["online"].append(t))
    assert len(steps["store"]) == 3 * -(-len(images) // 32)
    assert steps["store"] == steps["online"]
    assert max_weight_delta(tmp_path / "offline" / "final.pt", tmp_path / "online" / "final.pt") == 0.0
    summary = json.loads((tmp_path / "offline" / "summary.json").read_text())
    assert summary["signal"]["store_id"] == store.id
    # The teacher's accuracy a student reports comes from the store's test logits: the teacher's own.
    assert summary["teacher_test"]["top1"] == teacher.accuracy["top1"] == 100.0


@pytest.mark.parametrize("policy", POLICIES)
def test_resumed_run_ends_with_the_same_weights(tmp_path, synth, stores, policy):
    store, images = stores[policy]
    test_set = synth[1]
    train(cfg(), images, test_set, StoreSignal(store), tmp_path / "whole", progress=False)
    partial = train(cfg(), images, test_set, StoreSignal(store), tmp_path / "resumed", progress=False, stop_after=1)
    assert partial == {"stopped_after_epoch": 1} and (tmp_path / "resumed" / "checkpoint.pt").exists()
    train(cfg(), images, test_set, StoreSignal(store), tmp_path / "resumed", progress=False)
    assert max_weight_delta(tmp_path / "whole" / "final.pt", tmp_path / "resumed" / "final.pt") == 0.0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [r["loss_total"] for r in whole] == [r["loss_total"] for r in resumed]
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()


def test_a_student_distilled_from_the_teacher_alone_agrees_with_it(tmp_path, synth, stores, teacher):
    """KD with no label term: all the student learns is the teacher's logits of its own views.

    Measured on the test split (seeds 1-4): 100% agreement after 8 or 10 epochs (6: 75-100%);
    given each sample its neighbour's teacher logits instead, 0-25%: chance (4 classes) or
    worse. 70% leaves room for one class not yet learnt on another machine's rounding.
    """
    store, images = stores["pool"]
    run = cfg(loss="kd", loss_options={"ce_weight": 0.0}, epochs=10, batch_size=8, milestones=())
    summary = train(run, images, synth[1], StoreSignal(store), tmp_path / "kd", progress=False)
    assert teacher.accuracy["top1"] == 100.0
    assert summary["final"]["teacher_agreement"] >= 70.0, summary["final"]


def test_outputs_of_a_run(tmp_path, synth, store32):
    train_set, test_set = synth
    torch.set_num_threads(2)  # the caller's count, which the run's threads=1 must not outlive
    summary = train(cfg(), train_set, test_set, StoreSignal(store32), tmp_path / "run", progress=False)
    out = tmp_path / "run"
    # Without a validation split nothing is selected: no best.pt, every epoch measured on test.
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "curves.png", "final.pt", "metrics.csv", "metrics.json", "summary.json"]
    rows = json.loads((out / "metrics.json").read_text())
    # lr = 0.05 * 0.1 ** k in float64: approx's default 1e-6 covers 0.05 * 0.1 != 0.005
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["lr"] for r in rows] == pytest.approx([0.05, 0.05, 0.005])
    for key in ("loss_ce", "loss_scd", "loss_mcd", "loss_total", "train_top1", "test_top1", "test_top5",
                "teacher_agreement", "teacher_rank_corr", "images_per_s"):
        assert key in rows[0], key
    assert -1 <= rows[-1]["teacher_rank_corr"] <= 1 and summary["final"]["teacher_rank_corr"] == rows[-1]["teacher_rank_corr"]
    assert summary["config"]["threads"] == 1 and torch.get_num_threads() == 2  # recorded, and the caller's restored
    assert TrainConfig(arch="resnet8").threads == 2  # the workflow's default
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["epoch", "lr"] and "loss_mcd" in header
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["loss_options"] == {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0,
                                                 "alpha_temperature": 1.0, "warmup": 2.0, "logit_stand": False,
                                                 "mask": "ge"}
    assert summary["final"]["top1"] == rows[-1]["test_top1"] and summary["best"] is None
    student = load_teacher(out / "final.pt")  # a student can teach in turn
    assert student.arch == "resnet8" and student.accuracy["top1"] == rows[-1]["test_top1"]
    with pytest.raises(RunExists, match="already holds a finished run"):
        train(cfg(), train_set, test_set, StoreSignal(store32), out, progress=False)
    with pytest.raises(RunExists, match="differs in: lr"):
        (out / "summary.json").unlink()
        torch.save({"config": {**config["config"], "lr": 9.0}, "signal": {}}, out / "checkpoint.pt")
        train(cfg(), train_set, test_set, StoreSignal(store32), out, progress=False)


def test_with_a_validation_split_best_is_chosen_on_validation_and_test_is_measured_at_the_end(tmp_path, synth, teacher,
                                                                                             monkeypatch):
    from pipeline.data import load_dataset
    from pipeline.inference import predict_test, topk_accuracy

    train_set, test_set = synth
    val_set = load_dataset(SYNTH, "val", val_split=4)
    spec = ViewSpec.parse("per-epoch:4", default_family(train_set), seed=0)
    seen = []  # the split each evaluation of the run is given, in order
    evaluate = train_module.predict_test

    def spy(model, images, *args, **kwargs):
        seen.append("val" if images is val_set else "test" if images is test_set else "other")
        return evaluate(model, images, *args, **kwargs)

    monkeypatch.setattr(train_module, "predict_test", spy)
    summary = train(cfg(loss="ce", loss_options={}, epochs=4, milestones=()), train_set, test_set, ViewsOnly(spec),
                    tmp_path / "run", val_set=val_set, progress=False)
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all("val_top1" in r for r in rows)
    assert [("test_top1" in r) for r in rows] == [False, False, False, True]  # the test split only at the end
    best = summary["best"]
    val = [r["val_top1"] for r in rows]
    assert best["epoch"] == val.index(max(val)) + 1 and best["val_top1"] == max(val)
    chosen = load_teacher(tmp_path / "run" / "best.pt")
    assert chosen.extra["epoch"] == best["epoch"] and chosen.extra["val"]["top1"] == best["val_top1"]
    # The reported test accuracy of the chosen weights is theirs, measured after the choice.
    measured = topk_accuracy(predict_test(chosen.model, test_set, spec.family, device=torch.device("cpu")), test_set.labels)
    # same weights and views; approx's default 1e-6 covers float32 percentages of 40 samples
    assert best["top1"] == pytest.approx(measured["top1"]) and chosen.accuracy["top1"] == best["top1"]
    # The validation split, every epoch, is what chose them; the test split is seen only after the
    # last epoch: by the final weights, then by the chosen ones.
    assert seen == ["val"] * 4 + ["test", "test"], seen
    on_val = topk_accuracy(predict_test(chosen.model, val_set, spec.family, device=torch.device("cpu")), val_set.labels)
    assert best["val_top1"] == pytest.approx(on_val["top1"])  # float32 percentages of 16 samples, as above
    assert summary["final"]["val_top1"] == val[-1] and summary["val_dataset"]["size"] == 16
    with pytest.raises(ValueError, match="needs val_split"):
        load_dataset(SYNTH, "val")


def test_best_is_the_first_epoch_of_the_best_validation_top1_also_across_a_resume(tmp_path, synth, monkeypatch):
    """Validation top-1 scripted per epoch as 50, 80, 80, 70 (the rest of each evaluation is
    real): best.pt is epoch 2, the first of the two best, as `val.index(max(val))` above; a run
    stopped after epoch 2 and resumed must still choose epoch 2, with the same weights."""
    from pipeline.data import load_dataset

    train_set, test_set = synth
    val_set = load_dataset(SYNTH, "val", val_split=4)
    script = {1: 50.0, 2: 80.0, 3: 80.0, 4: 70.0}
    evaluate = train_module._evaluate

    def scripted(run, images, prefix, model=None):
        metrics = evaluate(run, images, prefix, model)
        if prefix == "val":
            metrics["val_top1"] = script[run.epoch]
        return metrics

    monkeypatch.setattr(train_module, "_evaluate", scripted)
    views = ViewsOnly(ViewSpec.parse("per-epoch:4", default_family(train_set), seed=0))
    run = cfg(loss="ce", loss_options={}, epochs=4, milestones=())
    whole = train(run, train_set, test_set, views, tmp_path / "whole", val_set=val_set, progress=False)
    train(run, train_set, test_set, views, tmp_path / "resumed", val_set=val_set, progress=False, stop_after=2)
    resumed = train(run, train_set, test_set, views, tmp_path / "resumed", val_set=val_set, progress=False)
    assert whole["best"]["epoch"] == 2 and whole["best"]["val_top1"] == 80.0, whole["best"]
    assert resumed["best"] == whole["best"]
    assert load_teacher(tmp_path / "resumed" / "best.pt").extra["epoch"] == 2
    assert max_weight_delta(tmp_path / "whole" / "best.pt", tmp_path / "resumed" / "best.pt") == 0.0


def test_each_epoch_replays_its_own_views_in_its_own_order(tmp_path, synth, store32, monkeypatch):
    """Epoch e (from 0) visits every sample once, in epoch_order(seed, e), with the view of
    slot e of a per-epoch store; no two epochs share an order."""
    train_set, test_set = synth
    n = len(train_set)
    visits: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    check = train_module.check_inputs

    def record(plan, indices, crc, epoch):
        visits.setdefault(epoch, []).append((np.asarray(indices).copy(), plan.params[indices].copy()))
        return check(plan, indices, crc, epoch)

    monkeypatch.setattr(train_module, "check_inputs", record)
    train(cfg(), train_set, test_set, StoreSignal(store32), tmp_path / "run", progress=False)
    assert sorted(visits) == [0, 1, 2]
    orders = {}
    for epoch, batches in visits.items():
        order = np.concatenate([i for i, _ in batches])
        assert np.array_equal(order, epoch_order(1, epoch, n)) and sorted(order) == list(range(n))
        params = np.concatenate([p for _, p in batches])
        assert np.array_equal(params, store32.read_slot("views", epoch)[order]), f"epoch {epoch + 1} replays other views"
        orders[epoch] = tuple(order)
    assert len(set(orders.values())) == 3


def test_a_stale_checkpoint_is_refused_or_with_restart_stale_discarded(tmp_path, synth):
    train_set, test_set = synth
    views = ViewsOnly(ViewSpec.parse("per-epoch:3", default_family(train_set), seed=0))
    run = cfg(loss="ce", loss_options={}, epochs=3)
    train(run, train_set, test_set, views, tmp_path / "a", progress=False, stop_after=1)
    changed = cfg(loss="ce", loss_options={}, epochs=3, lr=0.1)
    with pytest.raises(RunExists, match="differs in: lr"):
        train(changed, train_set, test_set, views, tmp_path / "a", progress=False)
    summary = train(changed, train_set, test_set, views, tmp_path / "a", progress=False, restart_stale=True)
    train(changed, train_set, test_set, views, tmp_path / "fresh", progress=False)
    assert summary["config"]["lr"] == 0.1 and len(json.loads((tmp_path / "a" / "metrics.json").read_text())) == 3
    assert max_weight_delta(tmp_path / "a" / "final.pt", tmp_path / "fresh" / "final.pt") == 0.0


@pytest.mark.parametrize("loss", METHODS)
def test_each_loss_lowers_its_loss(tmp_path, synth, store32, loss):
    train_set, test_set = synth
    options = {"warmup": 1} if get_method(loss).has_warmup else {}
    # LR's MSE on raw logits (this teacher's have std 8: a first loss of ~200) and MLKD's 15
    # terms overshoot at lr 0.05 in 3-step epochs; they get smaller, more numerous steps.
    recipe = {"batch_size": 8, "lr": 0.01} if loss in ("lr", "mlkd") else {}
    train(cfg(loss=loss, loss_options=options, milestones=(), **recipe), train_set, test_set, StoreSignal(store32),
          tmp_path / loss, progress=False)
    rows = json.loads((tmp_path / loss / "metrics.json").read_text())
    # Measured last/first epoch: ce 0.76, kd 0.54, dkd 0.39, rld 0.30, la 0.51, rc 0.38, and
    # lr 0.71 / 0.76 / 0.54, mlkd 0.24 / 0.26 / 0.34 under AVX-512 / AVX2 / SSE4.1 kernels; a
    # loss that does not train stays near 1 (epoch-to-epoch noise of these short epochs: a few %).
    assert rows[-1]["loss_total"] < 0.9 * rows[0]["loss_total"], [r["loss_total"] for r in rows]


def test_the_loop_weighs_distillation_by_min_epoch_over_warmup_from_epoch_one(tmp_path, synth, store32, monkeypatch):
    """The absolute distillation weight of every epoch of a real run, epochs counted from 1:
    w = 0.4, 0.8, 1 with a warm-up of 2.5 epochs. Each step's total is rebuilt from the
    public loss functions on the step's own inputs, so a loop that counts its epochs from 0
    or 2, or passes the objective another epoch's scales, fails here."""
    from pipeline.losses import Objective, rld_terms

    calls = []
    terms = Objective.terms

    def spy(self, student, teacher, target, scales):
        out = terms(self, student, teacher, target, scales)
        calls.append((student.detach().clone(), teacher.clone(), target.clone(), tuple(scales), out["total"].item()))
        return out

    monkeypatch.setattr(Objective, "terms", spy)
    train_set, test_set = synth
    options = {"warmup": 2.5, "alpha": 0.5, "beta": 3.0}
    train(cfg(loss_options=options, milestones=()), train_set, test_set, StoreSignal(store32), tmp_path / "run",
          progress=False)
    steps_per_epoch = math.ceil(len(train_set) / 32)
    assert len(calls) == 3 * steps_per_epoch
    for i, (s, t, y, scales, total) in enumerate(calls):
        w = min((i // steps_per_epoch + 1) / 2.5, 1.0)
        assert scales == (w, w * 0.5, w * 3.0), i
        parts = rld_terms(s, t, y, temperature=4.0, alpha_temperature=1.0)
        rebuilt = torch.nn.functional.cross_entropy(s, y) + w * (0.5 * parts["scd"] + 3.0 * parts["mcd"])
        # float32 sums of a handful of terms in another order: ~1e-7 relative; 1e-5 is far
        # below the 25% a one-epoch shift of w changes the distillation part by
        assert total == pytest.approx(rebuilt.item(), rel=1e-5), i


def test_training_is_deterministic_per_seed(tmp_path, synth):
    train_set, test_set = synth
    views = ViewsOnly(ViewSpec.parse("per-epoch:2", default_family(train_set), seed=0))
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(cfg(loss="ce", loss_options={}, epochs=2, milestones=(1,), seed=seed), train_set, test_set, views, tmp_path / name, progress=False)
    assert max_weight_delta(tmp_path / "a" / "final.pt", tmp_path / "b" / "final.pt") == 0.0
    assert max_weight_delta(tmp_path / "a" / "final.pt", tmp_path / "c" / "final.pt") > 0


def test_an_epochs_loss_weighs_each_steps_mean_by_its_batch_size(tmp_path, synth):
    """96 samples in batches of 40, 40 and 16: the epoch's loss is the mean over its samples,
    sum(step mean x batch size) / 96, not a mean of the step means."""
    train_set, test_set = synth
    steps = []
    train(cfg(loss="ce", loss_options={}, epochs=1, milestones=(), batch_size=40), train_set, test_set,
          ViewsOnly(ViewSpec.parse("per-epoch:1", default_family(train_set), seed=0)), tmp_path / "run",
          progress=False, on_step=lambda epoch, step, terms: steps.append(terms["total"]))
    row = json.loads((tmp_path / "run" / "metrics.json").read_text())[0]
    expected = (40 * steps[0] + 40 * steps[1] + 16 * steps[2]) / 96
    # the run sums float32 products of 3 steps (a few ulps, ~3e-7 relative): 1e-6 covers them
    assert len(steps) == 3 and row["loss_total"] == pytest.approx(expected, rel=1e-6)


def test_a_store_needs_the_teacher_for_distillation(tmp_path, synth):
    train_set, test_set = synth
    with pytest.raises(ValueError, match="needs a teacher"):
        train(cfg(), train_set, test_set, ViewsOnly(ViewSpec.parse("per-epoch:3")), tmp_path / "x", progress=False)


def test_training_refuses_views_whose_crc_differs_anywhere_in_an_epoch(tmp_path, synth, store32):
    """One sample in the last batch of epoch 2 whose stored input crc32 differs from the view
    the student builds: training stops there, naming it, with epoch 1 checkpointed."""
    train_set, test_set = synth
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store32.path, copy)
    last = batch_indices(96, 32, epoch_order(1, 1, 96))[-1]
    sample = int(last[-1])
    crc = LogitStore.open(copy, mode="r+").group["input_crc"]
    crc[1, sample] = crc[1, sample] ^ 1
    with pytest.raises(StoreError, match=rf"epoch 2: the view of sample {sample} differs .*1 of 32 in this batch"):
        train(cfg(), train_set, test_set, StoreSignal(LogitStore.open(copy)), tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_persistent_workers_train_bitwise_the_student_of_the_main_process(tmp_path, synth, store32):
    """Views built by 2 workers that live across epochs, fed each epoch's plan, give the
    student of views built in the main process: every step's loss terms, every weight."""
    train_set, test_set = synth
    steps = {0: [], 2: []}
    workers_per_epoch: dict[int, set[int]] = {}
    before = {p.pid for p in multiprocessing.active_children()}

    def record(workers):
        def on_step(epoch, step, terms):
            steps[workers].append(terms)
            if workers:
                workers_per_epoch.setdefault(epoch, {p.pid for p in multiprocessing.active_children()} - before)
        return on_step

    for workers in (0, 2):
        train(cfg(num_workers=workers), train_set, test_set, StoreSignal(store32), tmp_path / f"w{workers}",
              progress=False, on_step=record(workers))
    assert len(steps[0]) == 9 and steps[2] == steps[0]
    assert max_weight_delta(tmp_path / "w0" / "final.pt", tmp_path / "w2" / "final.pt") == 0.0
    # The same two worker processes served all three epochs.
    assert len(workers_per_epoch[1]) == 2 and workers_per_epoch[1] == workers_per_epoch[2] == workers_per_epoch[3]


def test_a_nan_in_the_students_loss_fails_the_epoch_naming_it(tmp_path, synth, store32):
    """No step checks values (that would be a host sync per step): the epoch's summed losses
    are checked. NaN teacher logits that no store check saw (an online teacher's, say) in
    one sample of epoch 2 stop training at the end of epoch 2; a diverging student in epoch 1."""
    train_set, test_set = synth

    class NaNAtEpoch2(StoreSignal):
        def plan(self, epoch, seed, num_samples):
            plan = super().plan(epoch, seed, num_samples)
            if epoch == 1:
                plan.logits[17] = float("nan")
            return plan

    with pytest.raises(RuntimeError, match=r"^epoch 2: non-finite training loss \((ce nan, )?scd nan, mcd nan, total nan\): "
                                           r"the student diverged .* or a step's input or teacher logits held NaN/inf; "
                                           r"checkpoint.pt keeps epoch 1$"):
        train(cfg(), train_set, test_set, NaNAtEpoch2(store32), tmp_path / "nan", progress=False)
    assert torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    with pytest.raises(RuntimeError, match=r"^epoch 1: non-finite training loss \(.*total (nan|inf)\): .*"
                                           r"no epoch was checkpointed$"):
        train(cfg(lr=1e30), train_set, test_set, StoreSignal(store32), tmp_path / "diverged", progress=False)
    assert not (tmp_path / "diverged" / "checkpoint.pt").exists()


def test_nan_in_cached_logits_stops_training_when_its_epoch_is_planned(tmp_path, synth, store32):
    """The store's logits are checked once per epoch, when the epoch's slice is read."""
    train_set, test_set = synth
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store32.path, copy)
    LogitStore.open(copy, mode="r+").group["logits"][2, 40, 3] = float("nan")
    with pytest.raises(StoreError, match=r"non-finite teacher logits for sample 40 at epoch 3$"):
        train(cfg(), train_set, test_set, StoreSignal(LogitStore.open(copy)), tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_student_refuses_an_incomplete_store(tmp_path, store32):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store32.path, copy)
    LogitStore.open(copy, mode="r+").group["done"][1, 0] = 0
    with pytest.raises(StoreError, match="incomplete: 1 of"):
        StoreSignal(LogitStore.open(copy))


def test_a_resumed_run_says_where_it_resumes(tmp_path, synth, store32, capsys):
    train_set, test_set = synth
    train(cfg(), train_set, test_set, StoreSignal(store32), tmp_path / "run", progress=False, stop_after=1)
    assert "resuming" not in capsys.readouterr().err
    train(cfg(), train_set, test_set, StoreSignal(store32), tmp_path / "run", progress=False)
    assert capsys.readouterr().err.splitlines() == [f"{tmp_path / 'run'}: resuming after epoch 1 of 3 (checkpoint.pt)"]
