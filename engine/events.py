"""Typed events the trainer emits to one callback. It never knows who listens.

Every event is a frozen dataclass with a ``kind``; ``to_json()`` gives the line written to
metrics.jsonl / events.jsonl.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

RunState = Literal["starting", "running", "paused", "stopping", "stopped", "finished", "failed"]


@dataclass(frozen=True)
class Event:
    kind = "event"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class StepMetrics(Event):
    """One training step: per-branch losses (weighted total and raw per branch)."""
    kind = "step"
    step: int
    epoch: int
    time: float
    loss: float
    loss_map: float
    loss_offset: float
    loss_shape: float
    lr: float
    grad_norm: float
    s_map: float
    s_offset: float
    s_shape: float
    images_per_s: float
    ema_l2: float
    total_steps: int
    split: str = "train"


@dataclass(frozen=True)
class EvalMetrics(Event):
    """An evaluation: COCO metrics of the EMA weights (and online ones when asked) and val losses."""
    kind = "eval"
    step: int
    epoch: int
    time: float
    mAP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    loss: float
    loss_map: float
    loss_offset: float
    loss_shape: float
    mode: str
    images: int
    online_mAP: float | None = None
    online_AP50: float | None = None
    split: str = "val"


@dataclass(frozen=True)
class StateChanged(Event):
    kind = "state"
    state: RunState
    step: int
    message: str = ""
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind = "checkpoint"
    path: str
    step: int
    epoch: int
    best: bool = False
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Diagnosis(Event):
    """A finding of a diagnostic rule (rules live in engine.diagnostics)."""
    kind = "diagnosis"
    rule: str
    severity: Literal["info", "warning", "error"]
    section: str
    message: str
    evidence: dict[str, Any]
    remedy: dict[str, Any]
    step: int
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Error(Event):
    """Something stopped the run; ``hint`` says what to try."""
    kind = "error"
    error: str
    hint: str
    step: int
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Log(Event):
    """A human-readable line (dataset warnings, resume notices)."""
    kind = "log"
    message: str
    level: Literal["info", "warning"] = "info"
    time: float = field(default_factory=time.time)


Callback = Callable[[Event], None]


def null_callback(_: Event) -> None:
    pass
