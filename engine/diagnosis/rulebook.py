"""What the diagnostic rules share: findings, the run history they read, the lr grid, small statistics.

Diagnosis is the notes' "when you see this, do that" as rules that watch every run.

A rule is a small pure function ``(cfg, history, stats) -> Finding | None`` (see engine.diagnosis.rules):

- ``cfg``: the run's Config (thresholds in ``cfg.diagnose``);
- ``history``: the metric lines so far, in order — a plain list of metrics.jsonl dicts, or the
  incremental :class:`History` the :class:`Watcher` keeps (a list is turned into one);
- ``stats``: optional model statistics, e.g. ``{"dead_fraction": {layer: fraction},
  "memory": {"used": bytes, "total": bytes}}``.

A :class:`Finding` names its rule (a stable public id, like a linter's), a severity, the notes'
section (or the source of a generic rule), an English message with the notes' Chinese phrase,
the evidence (the numbers that made it fire) and a remedy::

    {"set": {dotted key: new value}, "resume_from_step": int | None, "text": str}

``resume_from_step`` is the last good step before the evidence window: resume from the newest
checkpoint at or before it. ``None`` means nothing needs rewinding (apply the change to the
running run if its keys are live, else to a new run).

Losses are judged on the *raw* sum ``loss_map + loss_offset + loss_shape``: the logged ``loss``
is weighted by the learnable log-weights (Σ exp(−s_i)·L_i + s_i), which can fall while every
branch is flat. Windows use medians, so single noisy steps never fire a rule.

This module holds the vocabulary the rules share (Finding, History, the lr grid, small statistics);
the rules themselves are engine.diagnosis.rules, and engine.diagnosis.watcher runs them over a live or finished run.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Literal

from .. import config as C
from .. import grid
from ..run.events import Diagnosis
from ..metric_keys import BRANCH_LOSSES

Severity = Literal["info", "warning", "error"]
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}
BRANCHES = BRANCH_LOSSES  # the rules judge the raw per-branch losses

def lower_lr(lr: float) -> float:
    """One step down the notes' half-decade lr grid (10.1, engine.grid): 0.01 → 0.003, 0.003 → 0.001, 0.002 → 0.001
    (an off-grid value snaps to the grid below)."""
    return grid.lower(lr)


@dataclass
class Finding:
    rule: str
    severity: Severity
    section: str
    message: str
    evidence: dict[str, Any]
    remedy: dict[str, Any]
    step: int

    def to_event(self) -> Diagnosis:
        return Diagnosis(rule=self.rule, severity=self.severity, section=self.section, message=self.message,
                         evidence=dict(self.evidence), remedy=dict(self.remedy), step=self.step)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def remedy(set_: dict[str, Any] | None = None, resume_from_step: int | None = None, text: str = "",
           command: str = "", proof: str = "") -> dict:
    """What a finding proposes: config changes (``set``), where a child starts, in words, and for a remedy that is a
    workflow rather than a config change the command that does it (``{run}``: the run folder). ``proof``: the val
    metric (a COCO key, e.g. AP75) a short trial of the change must raise against the unchanged run before the
    remedy is applied (engine.workflows.arm_trial)."""
    out = {"set": dict(set_ or {}), "resume_from_step": resume_from_step, "text": text}
    if command:
        out["command"] = command
    if proof:
        out["proof"] = proof
    return out


# --- robust statistics -------------------------------------------------------------------------

def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def median(xs: Iterable[float]) -> float | None:
    xs = [x for x in xs if finite(x)]
    return statistics.median(xs) if xs else None


def rel_drop(before: float | None, after: float | None) -> float | None:
    """(before − after) / |before|: +0.25 means it fell 25%; negative means it rose."""
    if before is None or after is None or before == 0:
        return None
    return (before - after) / abs(before)


def raw_loss(line: dict[str, Any]) -> float | None:
    vals = [line.get(k) for k in BRANCHES]
    if not all(isinstance(v, (int, float)) for v in vals):
        return line.get("loss") if isinstance(line.get("loss"), (int, float)) else None
    return float(sum(vals))


def r(x: float | None, digits: int = 4) -> float | None:
    """Round for evidence (JSON-friendly, stable to compare)."""
    if x is None or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


# --- the incremental history ---------------------------------------------------------------------

class _Decimated:
    """A bounded, evenly spaced sample of a stream: keeps every ``stride``-th value, at most 2×cap."""

    __slots__ = ("cap", "stride", "n", "values")

    def __init__(self, cap: int = 256):
        self.cap, self.stride, self.n, self.values = cap, 1, 0, []

    def add(self, x: float) -> None:
        if self.n % self.stride == 0:
            self.values.append(x)
            if len(self.values) >= 2 * self.cap:
                self.values = self.values[::2]
                self.stride *= 2
        self.n += 1

    def median(self) -> float | None:
        return median(self.values)


EPOCH_KEYS = ("raw", "loss", *BRANCHES, "grad_norm", "ema_l2")


@dataclass
class EpochSummary:
    """Per-epoch medians of the train lines, kept for the whole run at O(1) memory per epoch."""
    epoch: int
    first_step: int
    last_step: int = 0
    lines: int = 0
    lr_first: float | None = None
    lr_last: float | None = None
    _samples: dict[str, _Decimated] = field(default_factory=lambda: {k: _Decimated() for k in EPOCH_KEYS})
    _medians: dict[str, float | None] = field(default_factory=dict)  # cache: a complete epoch never changes

    def add(self, line: dict[str, Any]) -> None:
        self._medians.clear()
        self.last_step = int(line.get("step", self.last_step))
        self.lines += 1
        lr = line.get("lr")
        if finite(lr):
            self.lr_first = lr if self.lr_first is None else self.lr_first
            self.lr_last = lr
        for k in EPOCH_KEYS:
            v = raw_loss(line) if k == "raw" else line.get(k)
            if finite(v):
                self._samples[k].add(float(v))

    def median(self, key: str) -> float | None:
        if key not in self._medians:
            self._medians[key] = self._samples[key].median()
        return self._medians[key]

    def samples(self, key: str) -> list[float]:
        return list(self._samples[key].values)


class History:
    """What the rules read: recent train lines, per-epoch medians, every eval, and run-wide flags.

    Built incrementally by ``add(line)``; memory is bounded by ``diagnose.keep_lines`` plus one
    small summary per epoch, so a check costs the same at step 100 and at step 1,000,000.
    """

    def __init__(self, keep_lines: int = 2000, negative_tol: float = 1e-6):
        self.negative_tol = negative_tol
        self.train: deque[dict[str, Any]] = deque(maxlen=keep_lines)
        self.val: list[dict[str, Any]] = []
        self.epochs: dict[int, EpochSummary] = {}
        self.train_lines = 0
        self.first_train: dict[str, Any] | None = None
        self.negative: dict[str, Any] | None = None  # first line with a negative branch loss
        self.nonfinite: dict[str, Any] | None = None  # first non-finite value (metrics or an error event)
        self.last_step = 0
        self.max_lr: float | None = None

    @classmethod
    def of(cls, lines: "Iterable[dict[str, Any]] | History", cfg: C.Config | None = None) -> "History":
        if isinstance(lines, History):
            return lines
        h = cls.for_config(cfg or C.Config())
        for line in lines:
            h.add(line)
        return h

    @classmethod
    def for_config(cls, cfg: C.Config) -> "History":
        return cls(cfg.diagnose.keep_lines, cfg.diagnose.negative_tol)

    # --- feeding -------------------------------------------------------------------------------
    def add(self, line: dict[str, Any]) -> None:
        kind = line.get("kind")
        if kind == "error":
            if self.nonfinite is None and "non-finite" in str(line.get("error", "")):
                self.nonfinite = {"step": int(line.get("step", self.last_step)), "split": "train",
                                  "keys": [], "source": "error event", "error": str(line.get("error"))}
            return
        split = line.get("split") or {"step": "train", "eval": "val"}.get(kind)
        if split not in ("train", "val") or "step" not in line:
            return
        step = int(line["step"])
        if split == "train" and step <= self.last_step and self.train_lines:
            self._rewind(step)
        self._flags(line, split, step)
        if split == "val":
            self.val.append(line)
            return
        self.last_step = step
        self.train_lines += 1
        if self.first_train is None:
            self.first_train = line
        self.train.append(line)
        if finite(line.get("lr")) and (self.max_lr is None or line["lr"] > self.max_lr):
            self.max_lr = line["lr"]
        epoch = int(line.get("epoch", 0))
        if epoch not in self.epochs:
            self.epochs[epoch] = EpochSummary(epoch, step)
        self.epochs[epoch].add(line)

    def _flags(self, line: dict[str, Any], split: str, step: int) -> None:
        keys = ("loss", *BRANCHES) + (("grad_norm",) if split == "train" else ())
        bad = [k for k in keys if isinstance(line.get(k), (int, float)) and not math.isfinite(line[k])]
        if bad and self.nonfinite is None:
            self.nonfinite = {"step": step, "split": split, "keys": bad, "source": "metrics"}
        neg = {k: line[k] for k in BRANCHES if finite(line.get(k)) and line[k] < -self.negative_tol}
        if neg and self.negative is None:
            self.negative = {"step": step, "split": split, "values": neg}

    def _rewind(self, step: int) -> None:
        """A resume trimmed the lines after its checkpoint: forget what was logged at or after ``step``."""
        kept = [m for m in self.train if m["step"] < step]
        self.val = [m for m in self.val if m["step"] < step]
        for e in [e for e, s in self.epochs.items() if s.last_step >= step]:
            del self.epochs[e]
        for e in {int(m.get("epoch", 0)) for m in kept} - set(self.epochs):  # rebuild partial epochs
            s = EpochSummary(e, min(m["step"] for m in kept if int(m.get("epoch", 0)) == e))
            for m in kept:
                if int(m.get("epoch", 0)) == e:
                    s.add(m)
            self.epochs[e] = s
        self.train_lines -= len(self.train) - len(kept)
        self.train = deque(kept, maxlen=self.train.maxlen)
        self.last_step = kept[-1]["step"] if kept else 0
        for attr in ("negative", "nonfinite"):
            flag = getattr(self, attr)
            if flag is not None and flag["step"] >= step:
                setattr(self, attr, None)

    # --- reading ---------------------------------------------------------------------------------
    @property
    def current_epoch(self) -> int:
        return max(self.epochs) if self.epochs else 0

    def complete_epochs(self, start: int = 0) -> list[EpochSummary]:
        """Epochs from ``start`` on that are over, in order: a later epoch has begun, or the current epoch was
        just evaluated (the trainer evaluates at epoch ends, so the check at that eval judges the epoch it ends
        instead of one eval interval later)."""
        cur = self.current_epoch
        done = cur + 1 if self.epoch_ended() else cur
        return [self.epochs[e] for e in sorted(self.epochs) if start <= e < done]

    def epoch_ended(self) -> bool:
        """The latest train line is the last of its epoch: an eval line was logged at its step."""
        if not self.val or not self.train_lines:
            return False
        v = self.val[-1]
        return int(v.get("step", -1)) == self.last_step and int(v.get("epoch", -1)) == self.current_epoch

    def recent(self, n: int) -> list[dict[str, Any]]:
        if n >= len(self.train):
            return list(self.train)
        return list(self.train)[-n:]

    @property
    def last_train(self) -> dict[str, Any] | None:
        return self.train[-1] if self.train else None


# --- the rule table (engine.diagnosis.rules and engine.diagnosis.error_rules register into it) ------------------------------

RuleFn = Callable[[C.Config, "History | list[dict[str, Any]]", "dict[str, Any] | None"], "Finding | None"]

PLAYBOOK = "Tuning Playbook"


@dataclass(frozen=True)
class Rule:
    id: str
    fn: RuleFn
    section: str
    key: str | None  # evidence key whose material change re-fires the rule; None: only a new remedy does


RULES: dict[str, Rule] = {}


def rule(rule_id: str, section: str, key: str | None = None):
    """Register a rule; the function may take a list of metrics lines or a History."""

    def wrap(fn):
        def run(cfg: C.Config, history, stats: dict[str, Any] | None = None) -> Finding | None:
            return fn(cfg, History.of(history, cfg), stats or {})

        run.__name__ = run.__qualname__ = fn.__name__
        run.__doc__ = fn.__doc__
        RULES[rule_id] = Rule(rule_id, run, section, key)
        return run

    return wrap


__all__ = ["Finding", "History", "RULES", "Rule", "rule", "PLAYBOOK", "lower_lr", "remedy", "finite", "median", "rel_drop", "raw_loss",
           "SEVERITY_RANK", "BRANCHES"]
