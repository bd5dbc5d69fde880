"""Typed events the trainer emits to one callback. It never knows who listens.

Every event is a frozen dataclass with a ``kind``; ``to_json()`` gives the line written to
metrics.jsonl / events.jsonl (by engine.run.recorder, their one writer), ``from_json`` reads it back.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Literal


class RunState(enum.StrEnum):
    """A run's state: what the trainer records (STARTING … FAILED) and what a client sees (engine.run.runctl adds NEW:
    nothing recorded yet, DEAD: its owner went away without recording a stop). A str: JSON holds the value."""
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"
    DEAD = "dead"

    @property
    def active(self) -> bool:
        return self in (RunState.STARTING, RunState.RUNNING, RunState.PAUSED, RunState.STOPPING)


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
    # MiB held by each rank (GPU: reserved by the allocator; CPU: resident set) and the device's total
    memory_mib: tuple[float, ...] = ()
    memory_total_mib: float = 0.0
    memory_of: str = ""  # "cuda" or "cpu"


# Fields of a step line that measure the machine, not the training: two identical runs differ only in these.
MEASURED = ("time", "images_per_s", "memory_mib", "memory_total_mib")


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
    errors: dict | None = None  # engine.evaluation.errors.ErrorBreakdown's JSON: what costs AP50, per error kind and class


@dataclass(frozen=True)
class StateChanged(Event):
    kind = "state"
    state: RunState
    step: int
    message: str = ""
    time: float = field(default_factory=time.time)

    def __post_init__(self):  # a plain string (a JSON line, a caller) becomes the enum; a bad one raises ValueError
        object.__setattr__(self, "state", RunState(self.state))

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "state": self.state.value}


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
    """A finding of a diagnostic rule (rules live in engine.diagnosis.rulebook)."""
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


@dataclass(frozen=True)
class PlanChanged(Event):
    """The run's length or lr decay moved (train.time_budget_min re-planned on the measured speed, or a live
    edit): the monitor shows ``text``, the journal keeps it."""
    kind = "plan"
    step: int
    total_steps: int
    milestones: list
    text: str
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class CommandAck(Event):
    """The trainer's answer to a command of the control channel (engine.run.runctl): applied at ``step`` or
    refused with the reason. ``changes`` lists a live edit's [key, old, new]."""
    kind = "ack"
    id: str
    op: str
    applied: bool
    step: int
    message: str
    sender: str = ""
    changes: list = field(default_factory=list)
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Traceback(Event):
    """The Python traceback of an unexpected failure (after its Error event), for whoever fixes the cause."""
    kind = "traceback"
    text: str
    time: float = field(default_factory=time.time)


# Notes that readers (and the TUI's log) take as "log" lines: each is a Log with fields of its own, told apart in
# a line by its ``tag`` field, so the line shapes that journal, records and remedy read stay as they were.

@dataclass(frozen=True, kw_only=True)
class Lineage(Log):
    """A run's first events line when it is the child of another: a sweep or study trial (reason "sweep", details
    sweep_key / sweep_value) or a remedy's child (reason: the rule; details: finding, set, from_step, start_step,
    start, trial). ``details`` are merged into the line; ``from_json`` gathers them back."""
    tag = "parent"
    parent: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        line = super().to_json()
        extra = line.pop("details")
        return line | {k: v for k, v in extra.items() if k not in line}


@dataclass(frozen=True, kw_only=True)
class RemedyClosed(Log):
    """A finding's remedy applied (a child run made) or dismissed: engine.workflows.remedy.open_findings drops it then."""
    tag = "remedy_action"
    remedy_action: Literal["applied", "dismissed"]
    rule: str
    finding_step: int


@dataclass(frozen=True, kw_only=True)
class TunePostResult(Log):
    """The post-processing search of engine.workflows.tune_post: best and default points, where the best was applied."""
    tag = "tune_post"
    tune_post: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class HangUp(Log):
    """The terminal went away (``signal``, e.g. SIGHUP) and the TUI stopped its in-process run with a checkpoint."""
    tag = "signal"
    signal: str
    level: Literal["info", "warning"] = "warning"


LOG_TYPES: tuple[type[Log], ...] = (Lineage, RemedyClosed, TunePostResult, HangUp)
KINDS: dict[str, type[Event]] = {c.kind: c for c in (StepMetrics, EvalMetrics, StateChanged, CheckpointSaved,
                                                     Diagnosis, Error, Log, PlanChanged, CommandAck, Traceback)}


def from_json(d: dict[str, Any]) -> Event | None:
    """A line of metrics.jsonl / events.jsonl as its typed event (None for lines of no known kind). Fields a line
    lacks take their defaults; fields a class lacks are dropped (a Lineage keeps them as its details)."""
    cls = KINDS.get(d.get("kind", "step" if d.get("split") == "train" else "eval" if d.get("split") == "val"
                          else ""))
    if cls is None:
        return None
    if cls is Log:
        cls = next((c for c in LOG_TYPES if c.tag in d), Log)
    names = {f.name for f in fields(cls)}
    args = {k: v for k, v in d.items() if k in names}
    if "details" in names:
        args["details"] = {k: v for k, v in d.items() if k not in names and k != "kind"}
    try:
        return cls(**args)
    except (TypeError, ValueError):  # a line from an older version missing a required field, an unknown state
        return None


Callback = Callable[[Event], None]


def null_callback(_: Event) -> None:
    pass
