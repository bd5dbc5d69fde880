"""Where a run computes: the device chosen from train.device, and StopRun, the way a run ends early with a
reason (a device that is not there, a non-finite loss, a full disk), and the memory a process holds on it."""

from __future__ import annotations

import torch


class StopRun(Exception):
    """Raised inside the loop to end it early with a reason (non-finite loss, OOM)."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StopRun(f"train.device = {name!r} but CUDA is not available here; use train.device = auto or cpu")
    return torch.device(name)


def memory_mib(device: torch.device) -> tuple[float, float]:
    """(held, total) MiB for the system strip: memory the caching allocator reserved on a GPU (what
    nvidia-smi shows per process), or this process's resident set and the machine's RAM on the CPU."""
    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return torch.cuda.memory_reserved(device) / 2**20, total / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20, psutil.virtual_memory().total / 2**20
