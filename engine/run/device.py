"""Where a run computes: the device chosen from train.device, and the memory a process holds on it."""

from __future__ import annotations

import functools
from typing import Callable

import torch

from .stop import StopRun


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StopRun(f"train.device = {name!r} but CUDA is not available here; use train.device = auto or cpu")
    return torch.device(name)


@functools.cache
def compute_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """train.precision on a device: bfloat16 for the convolutions (autocast), or None for float32 throughout.
    auto = bfloat16 where the device computes it natively (a GPU that supports it; a CPU with AVX512-BF16 or AMX,
    where a BCCD training step ran 1.57× faster, bench/step_breakdown.py), else float32: emulated bfloat16 is slower."""
    if precision == "fp32" or device_type not in ("cpu", "cuda"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device_type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if native else None


def memory_format(channels_last: bool) -> torch.memory_format:
    """train.channels_last as the layout the model and its batches are held in."""
    return torch.channels_last if channels_last else torch.contiguous_format


def place(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``model`` on ``device`` in the run's layout (train.channels_last): evaluating in the layout it trained in
    gives the run's own figures, to the last rounding."""
    return model.to(device, memory_format=memory_format(channels_last))


def memory_mib(device: torch.device) -> tuple[float, float]:
    """(held, total) MiB for the system strip: memory the caching allocator reserved on a GPU (what
    nvidia-smi shows per process), or this process's resident set and the machine's RAM on the CPU."""
    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return torch.cuda.memory_reserved(device) / 2**20, total / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20, psutil.virtual_memory().total / 2**20


def reserved_memory(device: torch.device) -> dict:
    """What the rules read of the device's memory (the CUDA caching allocator's peak against the card); {} on the
    CPU."""
    if device.type != "cuda":
        return {}
    _free, total = torch.cuda.mem_get_info(device)
    return {"memory": {"used": torch.cuda.max_memory_reserved(device), "total": total}}


def group_memory(device: torch.device, per_rank: Callable[[float], list[float]]) -> dict:
    """Every rank's memory for the system strip (``per_rank``: one small collective at a logged step)."""
    held, total = memory_mib(device)
    return {"memory_mib": tuple(round(m, 1) for m in per_rank(held)), "memory_total_mib": round(total, 1),
            "memory_of": device.type}
