"""Data-parallel training on ``torch.distributed``, launched by ``torchrun``: the trainer's one helper for it.

A process started by torchrun (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in its environment) joins the
group with ``Dist.from_env()``: NCCL on CUDA, Gloo on the CPU. Every other process gets ``Dist()``, one rank
of one, whose every method is a no-op, so the trainer reads the same top to bottom either way.

What the trainer asks of it:
* who it is: ``rank``, ``world``, ``is_main`` (rank 0 alone writes the run folder and reads its control channel);
* ``mean_`` — logged losses averaged over ranks (a non-finite loss on any rank makes the mean non-finite, so
  every rank stops at the same step);
* ``control`` — at a step boundary rank 0's commands and pause flag, and any rank's stop request, for all;
* ``from_main`` — a picklable object (config, run folder, checkpoint state, eval metrics) from rank 0;
* ``gather`` — every rank's object on every rank (evaluation results);
* ``per_rank`` — one number from each rank, in rank order (the system strip's memory of every rank).
Objects travel on a Gloo group beside the main one, so control traffic never waits on the GPU stream.

SyncBatchNorm: torch's own on CUDA; on the CPU (Gloo, tests) ``CpuSyncBatchNorm``, the same global batch
statistics through a differentiable all-reduce (torch's class and DDP refuse CPU tensors).
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def devices(value: int | str) -> int:
    """train.devices as a process count: ``auto`` is every visible GPU, 1 without CUDA."""
    if value == "auto":
        return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    return int(value)


def launched() -> bool:
    """True in a process started by torchrun (or another launcher setting torch's environment variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


class RankLost(RuntimeError):
    """A collective failed: another rank died or stopped answering within train.dist_timeout_s."""


class Dist:
    """One process: rank 0 of 1, every collective a no-op."""

    rank = 0
    world = 1
    local_rank = 0
    active = False  # a process group exists (world may still be 1: `torchrun --nproc-per-node 1`)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env(device_type: str = "auto", timeout_s: float = 600.0) -> "Dist":
        """The group of this torchrun process, joined once per process; ``Dist()`` when not launched."""
        if not launched():
            return Dist()
        if _Group.current is not None:
            return _Group.current
        return _Group(device_type, timeout_s)

    def device(self, name: str) -> torch.device:
        return torch.device(name)

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def control(self, commands: list, stop: bool, paused: bool, clock: float = 0.0) -> tuple[list, bool, bool, float]:
        return commands, stop, paused, clock

    def from_main(self, obj: Any) -> Any:
        return obj

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def per_rank(self, x: float) -> list[float]:
        return [x]

    def barrier(self) -> None:
        pass

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "one process"


class _Group(Dist):
    current: "_Group | None" = None

    def __init__(self, device_type: str, timeout_s: float):
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device_type.startswith("cuda") or (device_type == "auto" and torch.cuda.is_available())
        self.backend = "nccl" if cuda else "gloo"
        self.timeout = datetime.timedelta(seconds=timeout_s)
        if cuda:
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(self.backend, timeout=self.timeout,
                                    device_id=torch.device("cuda", self.local_rank) if cuda else None)
        # objects (commands, configs, checkpoint state, eval results) go over Gloo: CPU tensors, no GPU sync
        self.cpu = dist.new_group(backend="gloo", timeout=self.timeout) if self.backend != "gloo" else None
        self.active = True
        _Group.current = self

    def device(self, name: str) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, dist.ReduceOp.SUM)
        return t.div_(self.world)

    def control(self, commands: list, stop: bool, paused: bool, clock: float = 0.0) -> tuple[list, bool, bool, float]:
        """One step boundary for every rank: rank 0's commands, pause flag and clock (its training seconds), any
        rank's stop request (a signal reaches each process on its own)."""
        main = self.is_main
        flags = torch.tensor([float(stop), float(paused and main), float(len(commands) if main else 0),
                              clock if main else 0.0], dtype=torch.float64)
        dist.all_reduce(flags, dist.ReduceOp.MAX, group=self.cpu)
        stop, paused, n, clock = bool(flags[0]), bool(flags[1]), int(flags[2]), float(flags[3])
        if n:
            commands = self.from_main(commands if main else None)
        return (commands if n else []), stop, paused, clock

    def from_main(self, obj: Any) -> Any:
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.cpu)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.cpu)
        return out

    def per_rank(self, x: float) -> list[float]:
        out = torch.zeros(self.world, dtype=torch.float64)
        out[self.rank] = x
        dist.all_reduce(out, dist.ReduceOp.SUM, group=self.cpu)
        return out.tolist()

    def barrier(self) -> None:
        dist.barrier(group=self.cpu)

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.local_rank] if self.backend == "nccl" else None
        return DDP(model, device_ids=ids)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        _Group.current = None

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world} ({self.backend})"


@contextmanager
def main_first(d: Dist):
    """Rank 0 runs the block before the others (it may create shared files, e.g. the synthetic cache)."""
    if not d.is_main:
        d.barrier()
    yield
    if d.is_main:
        d.barrier()


# --- SyncBatchNorm ----------------------------------------------------------------------------------

class _AllReduceSum(torch.autograd.Function):
    """Σ over ranks, differentiable: the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, dist.ReduceOp.SUM)
        return grad


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(t)


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """SyncBatchNorm for the CPU (Gloo), which torch's class and DDP refuse: batch statistics of the global
    batch through a differentiable all-reduce (two passes: the mean, then the squared deviations from it).
    Same parameters and buffers as BatchNorm2d; in eval mode, or with one rank, it is BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dtype, x = x.dtype, x.float()  # statistics in float32 under bf16 autocast (train.precision)
        c = x.shape[1]
        dims, shape = [0, 2, 3], [1, c, 1, 1]
        s = all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() // c])]))
        n = s[-1]
        mean = s[:c] / n
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), m)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> tuple[nn.Module, int]:
    """Every BatchNorm → SyncBatchNorm (torch's on CUDA, CpuSyncBatchNorm on the CPU); the same parameters and
    buffers, so checkpoints load either way. Returns (model, the number converted)."""
    if device_type != "cpu":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model, sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    n = 0
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = CpuSyncBatchNorm
            n += 1
    return model, n


def use_sync_bn(setting: str, world: int, batch_size: int) -> bool:
    """train.sync_bn: on / off, or auto = on when several ranks train with a small per-device batch."""
    if setting == "auto":
        return world > 1 and batch_size < SMALL_BATCH
    return setting == "on"


SMALL_BATCH = 16  # per device: below this, BatchNorm statistics of one device's batch are noisy
