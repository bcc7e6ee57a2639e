"""DistributedDataParallel under torchrun, on CUDA (nccl) or CPU (gloo).

A run with W ranks must train the same student as one process with the same global batch.
Two things make that hold: every rank's loss is scaled by its share of the global batch
(so DDP's gradient average is the global-batch mean even for an uneven last batch), and
BatchNorm normalises with global-batch statistics. torch's SyncBatchNorm does the latter
on CUDA only, so on CPU `GlobalBatchNorm2d` does it with differentiable all-reduces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_world(device_type: str) -> World:
    """Join the process group torchrun describes in the environment; a lone process is World()."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: each rank's statistic feeds every rank's loss, so its
    gradient is the sum of all ranks' gradients (torch.distributed.nn's is deprecated)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank's batch (CPU-capable).

    Same parameters and buffers as nn.BatchNorm2d, so checkpoints are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # Two passes, like nn.BatchNorm2d: the mean, then the mean squared deviation from it.
        # One pass (E[x^2] - E[x]^2) cancels where |mean| >> std, in the forward and again in
        # its backward, by an amount that depends on the CPU's summation order: under SSE4.1
        # kernels it left a 2-step DDP update 2.5e-3 (relative) from the 1-process one even
        # with float64 sums; two passes, 1.7e-6. Sums accumulate in float64, as BatchNorm's do
        # on a CPU.
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims, dtype=torch.float64), count]))
        n = totals[-1]
        mean64 = totals[:-1] / n
        centered = x - mean64.to(x.dtype)[None, :, None, None]
        var64 = _AllReduceSum.apply((centered * centered).sum(dims, dtype=torch.float64)) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - momentum).add_((momentum * mean64).to(self.running_mean.dtype))
            self.running_var.mul_(1 - momentum).add_((momentum * var64 * n / (n - 1)).to(self.running_var.dtype))
        y = centered * torch.rsqrt(var64 + self.eps).to(x.dtype)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Swap every BatchNorm2d for its global-batch twin, keeping weights and buffers."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            twin = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            twin.load_state_dict(child.state_dict())
            setattr(model, name, twin.to(child.weight.device if child.affine else "cpu"))
        else:
            sync_batchnorm(child, device_type)
    return model


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor of totals across ranks (for metrics)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def rank_slice(batch: np.ndarray, world: World) -> np.ndarray:
    """This rank's contiguous part of a global batch of sample indices."""
    return np.array_split(np.asarray(batch), world.size)[world.rank]
