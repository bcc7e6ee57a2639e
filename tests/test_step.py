"""The training step replayed as a CUDA graph (pipeline/step.py): refused where it cannot be,
equal to the eager step where it runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import STUDENT, cfg, cli, max_weight_delta, update_distance
from pipeline import train as train_module
from pipeline.dump import dump
from pipeline.recipe import TrainConfig
from pipeline.signals import StoreSignal
from pipeline.step import CapturedStep, resolve_compile
from pipeline.store import LogitStore
from pipeline.teacher import load_teacher
from pipeline.train import train
from pipeline.views import ViewSpec


# ---------------------------------------------------------------------------------------
# --compile: the training step captured as a CUDA graph (pipeline/step.py)


def test_compile_is_refused_where_a_graph_cannot_capture_the_step():
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert resolve_compile(True, cuda, "bf16", 1) and resolve_compile(True, cuda, "off", 1)
    assert not resolve_compile(False, cuda, "fp16", 4)
    with pytest.raises(ValueError, match=r"CUDA graph capture does not support fp16 autocast: .*use bf16 autocast"):
        resolve_compile(True, cuda, "fp16", 1)
    with pytest.raises(ValueError, match=r"CUDA graph capture does not support DDP"):
        resolve_compile(True, cuda, "bf16", 2)


def test_compile_on_a_cpu_says_so_in_one_line_and_trains_the_eager_student(tmp_path, store32):
    args = [*STUDENT, "--store", str(store32.path)]
    plain = cli(*args, "--out", str(tmp_path / "plain"))
    compiled = cli(*args, "--cuda-graph", "--out", str(tmp_path / "compiled"))
    assert plain.exit_code == 0 and compiled.exit_code == 0, compiled.output
    assert compiled.stderr.splitlines() == ["CUDA graph capture needs a CUDA device; training eagerly on cpu"]
    assert "--cuda-graph" not in plain.stderr
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["config"]["compile"] is True
    assert max_weight_delta(tmp_path / "plain" / "final.pt", tmp_path / "compiled" / "final.pt") == 0.0


def test_a_run_resumes_with_or_without_compile(tmp_path, synth, store32):
    train_set, test_set = synth
    train(cfg(compile=True), train_set, test_set, StoreSignal(store32), tmp_path / "run", progress=False, stop_after=1)
    train(cfg(), train_set, test_set, StoreSignal(store32), tmp_path / "run", progress=False)  # no RunExists
    train(cfg(), train_set, test_set, StoreSignal(store32), tmp_path / "whole", progress=False)
    assert max_weight_delta(tmp_path / "run" / "final.pt", tmp_path / "whole" / "final.pt") == 0.0


def _graph_on_a_cpu(self: CapturedStep):
    """Stands in for CapturedStep._capture on a CPU, with a CUDA graph's semantics: the
    capture runs nothing and fixes the learning rate; each replay runs the step on the
    static input buffers and the scales tensor as they are then, with the recorded
    learning rate, and writes its terms into the tensors the capture returned."""
    self.optimizer.zero_grad(set_to_none=True)
    recorded_lr = [group["lr"] for group in self.optimizer.param_groups]
    outputs = {name: torch.zeros(()) for name in self.names}

    def replay():
        current = [group["lr"] for group in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, recorded_lr):
            group["lr"] = lr
        terms = self._step(self.inputs["x"], self.inputs["y"], self.inputs.get("t"), 1.0, self.scales_tensor)
        for group, lr in zip(self.optimizer.param_groups, current):
            group["lr"] = lr
        for name, value in terms.items():
            outputs[name].copy_(value.detach())

    _graph_on_a_cpu.captures.append(self.lr)
    return type("Graph", (), {"replay": staticmethod(replay)})(), outputs


def test_captured_step_logic_trains_the_eager_student_with_a_stand_in_graph(tmp_path, synth, store32, monkeypatch):
    """CapturedStep's bookkeeping, checked on a CPU: warm-up steps, static input buffers,
    the epoch's loss weights read from a tensor, a new capture when the lr changes, the
    last partial batch eager. With a stand-in graph (same semantics: recorded lr, static
    buffers) the student is bitwise the eager one; a stale lr (no new capture at the
    milestone) or an input left out of the buffers would change it."""
    train_set, test_set = synth
    monkeypatch.setattr(train_module, "resolve_compile", lambda compile, device, amp, world_size: compile)
    monkeypatch.setattr(CapturedStep, "_capture", _graph_on_a_cpu)
    monkeypatch.setattr(CapturedStep, "_warm_up", lambda self, x, y, t: self._step(x, y, t, 1.0, self.scales))
    _graph_on_a_cpu.captures = []
    # 96 samples in batches of 40: 2 full batches and one of 16 per epoch; warm-up weight
    # 1/2 then 1 (warmup 2); lr 0.05, then 0.005 from epoch 3.
    steps = {"eager": [], "captured": []}
    for name, compile in (("eager", False), ("captured", True)):
        train(cfg(batch_size=40, compile=compile), train_set, test_set, StoreSignal(store32), tmp_path / name,
              progress=False, on_step=lambda e, s, t, name=name: steps[name].append((e, s, t)))
    # Recorded twice: after 3 warm-up steps (at epoch 2's 2nd batch), and at epoch 3's new lr
    # (0.05 * 0.1 in float64: approx's default 1e-6 covers its last bit).
    assert _graph_on_a_cpu.captures == pytest.approx([0.05, 0.005])
    assert len(steps["captured"]) == 9 and steps["captured"] == steps["eager"]
    assert max_weight_delta(tmp_path / "eager" / "final.pt", tmp_path / "captured" / "final.pt") == 0.0


def _update_distances(tmp_path: Path, runs: dict[str, TrainConfig], signal, train_set, test_set) -> dict[str, float]:
    for name, run in runs.items():
        train(run, train_set, test_set, signal(), tmp_path / name, progress=False)
    ref = tmp_path / "eager" / "final.pt"
    return {name: update_distance(tmp_path / name / "final.pt", ref, tmp_path / "init" / "final.pt")
            for name in runs if name not in ("eager", "init")}


@pytest.mark.gpu
@pytest.mark.parametrize("numerics", ["float32-deterministic", "defaults"])
def test_captured_step_trains_the_eager_student_on_a_gpu(tmp_path, teacher_file, synth, numerics, monkeypatch):
    """300 steps (60 epochs of 96 samples in batches of 20: four full batches and a partial
    one each), RLD from a store, warm-up weights changing for 20 epochs, the lr dropping at
    epochs 30 and 45: the captured run's update must be as close to the eager run's as a
    second eager run is (the graph replays eager's own kernels on the same values).

    float32-deterministic: no TF32, deterministic cuDNN: eager is expected to repeat itself
    bit for bit, and so the captured run. defaults: bf16 autocast, channels_last, cuDNN's
    own algorithm choice. The control, a graph kept after the lr drops (a stale lr), must
    land far outside the tolerance. Not yet run on a GPU (the session that wrote it had none).
    """
    if numerics == "float32-deterministic":
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    amp, channels_last = ("off", False) if numerics == "float32-deterministic" else ("auto", True)
    train_set, test_set = synth
    store = tmp_path / "store.zarr"
    # A teacher of its own: a CUDA dump moves the model it is given to the GPU.
    dump(load_teacher(teacher_file), train_set, test_set, ViewSpec.parse("pool:5", "crop", seed=3), store,
         device=torch.device("cuda"), progress=False)
    base = dict(arch="resnet8", loss="rld", epochs=60, batch_size=20, milestones=(30, 45), seed=2, device="cuda",
                amp=amp, channels_last=channels_last)
    runs = {"eager": TrainConfig(**base), "init": TrainConfig(**{**base, "lr": 0.0, "epochs": 1}),
            "eager-again": TrainConfig(**base), "captured": TrainConfig(**base, compile=True)}
    signal = lambda: StoreSignal(LogitStore.open(store))  # noqa: E731
    distance = _update_distances(tmp_path, runs, signal, train_set, test_set)
    # Tolerance: eager's own run-to-run distance (x4: one sample of a chaotic quantity),
    # at least 1e-6, float32 rounding of one step's update, as slack where eager repeats exactly.
    tolerance = max(4 * distance["eager-again"], 1e-6)
    assert distance["captured"] <= tolerance, distance
    if numerics == "float32-deterministic":
        monkeypatch.setattr(CapturedStep, "_recording_key", lambda self: ("stale",))
        control = _update_distances(tmp_path, {"stale-lr": TrainConfig(**base, compile=True)}, signal, train_set, test_set)
        assert control["stale-lr"] > 30 * tolerance, (control, distance)


@pytest.mark.gpu
def test_compile_through_the_cli_on_a_gpu(tmp_path, store32):
    """`--cuda-graph` with every other default on CUDA (bf16, channels_last) trains and reports;
    fp16 autocast is refused in one line."""
    args = [*STUDENT, "--store", str(store32.path), "--device", "cuda", "--cuda-graph"]
    refused = cli(*args, "--amp", "fp16", "--out", str(tmp_path / "fp16"))
    assert refused.exit_code == 1 and "--amp: CUDA graph capture does not support fp16 autocast" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "fp16").exists()
    result = cli(*args, "--channels-last", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["compile"] is True and summary["device"].startswith("cuda")
    assert all(math.isfinite(r["loss_total"]) for r in json.loads((tmp_path / "run" / "metrics.json").read_text()))
