"""The student's training step: eager, or replayed as a CUDA graph (`TrainConfig.compile`).

A step is forward, loss, backward, SGD step, and the epoch's running sums of the loss terms
and correct predictions. Nothing in it waits for the host: the objective runs without its
per-step value checks (training checks each epoch's sums for NaN/inf instead) and the sums
stay on the device until the epoch ends.

On a GPU a CIFAR student at batch 64 is launch-bound: hundreds of small kernels, each a
few microseconds of Python and driver time, for well under a millisecond of GPU work.
`CapturedStep` records the step once as a CUDA graph (PyTorch's "whole-network capture":
static input buffers, warm-up on a side stream, then `torch.cuda.graph`) and from then on
launches it with one call. The graph replays exactly the kernels eager mode launches, so
it computes what eager mode computes; what eager mode would read afresh each step is
handled like this:
- the epoch's warm-up weights of the distillation terms live in a device tensor the graph
  reads (`Objective.scales`), updated at each epoch's start: same float32 values as eager;
- the learning rate is a Python float inside the recorded SGD kernels, so the step is
  recorded again when it changes (1 + len(milestones) times a run);
- a batch of another size (the epoch's last, partial batch) runs eagerly, on the same
  weights and optimizer state;
- the graph holds the addresses of weights, BatchNorm buffers and momentum buffers; if any
  is reallocated (nothing in the loop does so), the step is recorded again.

Not captured, and refused by `resolve_compile`: fp16 autocast (GradScaler checks for inf
gradients on the host every step) and DDP (gradient all-reduces inside a graph need NCCL
set-up this project does not test). On a CPU there is nothing to capture: the student
trains eagerly, with a one-line message.
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch
from torch import Tensor, nn

from pipeline.errors import ConfigError
from pipeline.losses import Objective
from pipeline.runtime import autocast


def resolve_compile(compile: bool, device: torch.device, amp: str, world_size: int) -> bool:
    """Whether to capture the step: `compile` on CUDA; on a CPU a message and False.

    Refuses (ValueError) what a captured step cannot do: fp16 autocast and DDP.
    """
    if not compile:
        return False
    if device.type != "cuda":
        print(f"CUDA graph capture needs a CUDA device; training eagerly on {device.type}", file=sys.stderr)
        return False
    if amp == "fp16":
        raise ConfigError("CUDA graph capture does not support fp16 autocast: its GradScaler checks the gradients "
                          "for inf on the host every step, which a CUDA graph cannot do; use bf16 autocast (the CUDA "
                          "default) or none", setting="amp")
    if world_size > 1:
        raise ConfigError("CUDA graph capture does not support DDP (several GPUs per student): train each student "
                          "on one GPU (several students may share one), or without capture", setting="cuda_graph")
    return True


class TrainStep:
    """One eager SGD step of the student, and the epoch's running sums of its terms.

    `sums` holds, per epoch, each term times its batch size (in `names` order) and then the
    number of correct top-1 predictions, as a float32 device tensor.
    """

    def __init__(self, net: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, device: torch.device, amp: str, *, autocast_cache: bool = True):
        self.net, self.objective, self.optimizer, self.scaler = net, objective, optimizer, scaler
        self.device, self.amp, self.autocast_cache = device, amp, autocast_cache
        self.names = objective.term_names
        self.sums = torch.zeros(len(self.names) + 1, device=device)
        self.scales: tuple[float, ...] = objective.scales(1)
        self.lr = 0.0

    def start_epoch(self, epoch: int, lr: float) -> None:
        """Set the learning rate and the loss weights of `epoch` (from 1), and zero the sums."""
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.scales = self.objective.scales(epoch)
        self.sums.zero_()

    def __call__(self, x: Tensor, y: Tensor, teacher_logits: Tensor | None, share: float) -> dict[str, Tensor]:
        """One step on inputs `x`, labels `y`; the loss is scaled by `share` (see `train`)."""
        return self._step(x, y, teacher_logits, share, self.scales)

    def _step(self, x: Tensor, y: Tensor, teacher_logits: Tensor | None, share: float,
              scales: Sequence[float] | Tensor) -> dict[str, Tensor]:
        with autocast(self.device, self.amp, cache=self.autocast_cache):
            student_logits = self.net(x)
        terms = self.objective.terms(student_logits.float(), teacher_logits, y, scales)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"] * share).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            self.sums[:-1].add_(torch.stack([terms[k].detach() for k in self.names]) * len(x))
            self.sums[-1].add_((student_logits.argmax(1) == y).sum())
        return terms


class CapturedStep(TrainStep):
    """`TrainStep` recorded once as a CUDA graph and replayed (see the module docstring).

    Full batches of `batch_size` are replayed; the first `WARMUP_STEPS` of them run eagerly
    on a side stream, as PyTorch requires before a capture (cuDNN/cuBLAS set-up, optimizer
    state). Any other batch size runs eagerly.
    """

    WARMUP_STEPS = 3

    def __init__(self, net: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, device: torch.device, amp: str, batch_size: int):
        if scaler.is_enabled():
            raise ValueError("a captured step cannot use a GradScaler (fp16 autocast)")
        super().__init__(net, objective, optimizer, scaler, device, amp, autocast_cache=False)
        self.batch_size = batch_size
        self.scales_tensor = torch.ones(len(self.scales), device=device)  # the graph's copy of `scales`
        self.warmed_up = 0
        self.captures = 0  # how many times the step was recorded (for tests and logs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.recorded_for: tuple | None = None  # (lr, addresses) the graph was recorded with
        self.inputs: dict[str, Tensor] = {}  # static buffers the graph reads
        self.outputs: dict[str, Tensor] = {}  # the graph's terms, overwritten by each replay
        self._side_stream: torch.cuda.Stream | None = None

    def start_epoch(self, epoch: int, lr: float) -> None:
        super().start_epoch(epoch, lr)
        self.scales_tensor.copy_(torch.tensor(self.scales, dtype=torch.float32))
        if self.graph is not None and self.recorded_for != self._recording_key():
            self._release()  # a new learning rate (or moved weights): record again

    def __call__(self, x: Tensor, y: Tensor, teacher_logits: Tensor | None, share: float) -> dict[str, Tensor]:
        if len(x) != self.batch_size or share != 1.0:
            return super().__call__(x, y, teacher_logits, share)  # e.g. the epoch's last, partial batch
        if self.graph is None and self.warmed_up < self.WARMUP_STEPS:
            self.warmed_up += 1
            return self._warm_up(x, y, teacher_logits)
        self._load(x, y, teacher_logits)
        if self.graph is None:
            self.graph, self.outputs = self._capture()
            self.recorded_for = self._recording_key()
            self.captures += 1
        self.graph.replay()
        return self.outputs

    def _load(self, x: Tensor, y: Tensor, teacher_logits: Tensor | None) -> None:
        """Copy this batch into the static buffers the graph reads (made on first use)."""
        batch = {"x": x, "y": y, "t": teacher_logits}
        for name, value in batch.items():
            if value is None:
                continue
            if name not in self.inputs:
                self.inputs[name] = torch.empty_like(value)  # keeps x's channels_last strides
            self.inputs[name].copy_(value)

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, dict[str, Tensor]]:
        """Record one step on the static buffers; nothing runs until the graph is replayed."""
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's pool
        graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread may allocate pinned memory meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = self._step(self.inputs["x"], self.inputs["y"], self.inputs.get("t"), 1.0, self.scales_tensor)
        return graph, outputs

    def _warm_up(self, x: Tensor, y: Tensor, teacher_logits: Tensor | None) -> dict[str, Tensor]:
        """A real, eager step on a side stream (PyTorch's recipe before capturing a graph)."""
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        self._side_stream.wait_stream(main)
        with torch.cuda.stream(self._side_stream):
            terms = self._step(x, y, teacher_logits, 1.0, self.scales)
        main.wait_stream(self._side_stream)
        return terms

    def _recording_key(self) -> tuple:
        """What the recorded kernels hold fixed: the learning rate and every state tensor's address."""
        tensors = [*self.net.parameters(), *self.net.buffers()]
        tensors += [s for state in self.optimizer.state.values() for s in state.values() if isinstance(s, Tensor)]
        return (self.lr, tuple(t.data_ptr() for t in tensors))

    def _release(self) -> None:
        self.graph, self.outputs, self.recorded_for = None, {}, None
