"""Where a run computes: the device chosen from train.device, and StopRun, the way a run ends early with a
reason (a device that is not there, a non-finite loss, a full disk)."""

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
