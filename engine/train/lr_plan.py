"""A schedule that fits the budget: the steps a run has time for, and the piecewise decay placed on them.

Off (``train.time_budget_min = 0``): the plan is the config's — total = train.max_steps or epochs ×
steps_per_epoch, milestones at ``train.milestones`` fractions of it — and never moves.
On: the budget is time_budget_min, capped by ``budget.max_days`` (the notes' ceiling). From the measured
seconds per step (smoothed, evaluations included, so they are paid for too) the plan projects the steps
that fit, puts the end and the milestones there, and re-plans as the speed changes, like Ultralytics'
``time=``. Bounds: the end is never before the current step; a milestone already reached stays where it
was (the lr never climbs back); train.max_steps, when set, caps the projection.

The trainer calls ``lr_at(step)`` before each step and ``observe(step, elapsed_s)`` after it, with
elapsed_s the run's training seconds so far (across resumes: continue from ``plan.elapsed_s``). The plan's
``state_dict()`` is plain data and belongs in the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

from .. import config as C

VERSION = 1
BAND = 0.01  # the end may land this fraction of the budget early before a re-plan moves it


def lr_at(cfg: C.Config, step: int, total_steps: int) -> float:
    """lr = base_lr × batch_size / base_batch_size (linear scaling), piecewise decay at fractions of
    ``total_steps``, optional warmup — the fixed plan, as a function."""
    return lr_for(cfg, step, milestone_steps(cfg, total_steps))


def milestone_steps(cfg: C.Config, total_steps: int) -> list[int]:
    """The first step at which each decay applies: step ≥ fraction × total ⇔ step ≥ ceil(fraction × total)."""
    return sorted(math.ceil(m * total_steps) for m in cfg.train.milestones)


def lr_for(cfg: C.Config, step: int, milestones: list[int]) -> float:
    lr = cfg.lr
    if cfg.train.schedule == "piecewise":
        lr *= cfg.train.gamma ** sum(step >= m for m in milestones)
    if cfg.train.warmup_steps and step < cfg.train.warmup_steps:
        lr *= (step + 1) / cfg.train.warmup_steps
    return lr


def clean_from(cfg: C.Config, total_steps: int) -> int:
    """The first step of augment.clean_last's stretch without augmentation (``total_steps`` when it is off)."""
    return math.ceil((1.0 - cfg.augment.clean_last) * total_steps)


def budget_seconds(cfg: C.Config) -> float:
    """The run's time budget in seconds (0 = off), never above budget.max_days."""
    if not cfg.train.time_budget_min:
        return 0.0
    return min(cfg.train.time_budget_min * 60.0, cfg.budget.max_days * 86400.0)


def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h" if s < 172800 else f"{s / 86400:.2f} days"


class LrPlan:
    def __init__(self, cfg: C.Config, steps_per_epoch: int):
        if steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be at least 1")
        self.steps_per_epoch = steps_per_epoch
        self.step = 0
        self.elapsed_s = 0.0
        self.replans = 0
        self.planned = False  # budget mode: a projection from measured speed exists
        self._t = self._n = 0.0  # decayed sums of seconds and steps: seconds per step = _t / _n
        self._mark: tuple[int, float] | None = None  # start of the interval being measured
        self.cfg = cfg
        self._key: tuple | None = None  # what the end and the milestones were placed from
        self.budget_s = 0.0
        self.total_steps = 0
        self.milestones: list[int] = []
        self.reconfigure(cfg)

    # --- the plan ------------------------------------------------------------------------------
    @property
    def on(self) -> bool:
        return self.budget_s > 0

    @property
    def seconds_per_step(self) -> float | None:
        return self._t / self._n if self._n > 0 else None

    def _configured(self) -> int:
        return self.cfg.train.max_steps or self.cfg.train.epochs * self.steps_per_epoch

    def _interval_s(self) -> float:
        return min(30.0, max(0.5, self.budget_s / 300))  # 3 s for 15 minutes

    def _horizon_s(self) -> float:
        return min(3600.0, max(10.0, self.budget_s / 6))  # memory of the speed estimate

    def reconfigure(self, cfg: C.Config) -> bool:
        """Take a (live-edited) config; True when the end or a milestone moved."""
        old = (self.total_steps if self._key else None, list(self.milestones))
        key = (sorted(cfg.train.milestones), cfg.train.max_steps, cfg.train.epochs, budget_seconds(cfg))
        same = key == self._key
        self.cfg, self._key = cfg, key
        self.budget_s = budget_seconds(cfg)
        if self.on and self.planned and same:
            return False  # lr, gamma, warmup: read live by lr_at; the end and the milestones stay
        if not self.on:
            self.total_steps = self._configured()
            self.milestones = milestone_steps(cfg, self.total_steps)
        elif not self.planned:
            # until the speed is measured: the config's length, no decay yet (it would land on a guess)
            self.total_steps = self._configured()
            self.milestones = []
        else:
            self._project(force=True)
        return (self.total_steps, self.milestones) != old

    def _place(self, total: int) -> list[int]:
        fractions = sorted(self.cfg.train.milestones)
        reached = [m for m in self.milestones if m <= self.step][:len(fractions)]  # applied already: they stay
        fresh = [max(math.ceil(f * total), self.step) for f in fractions[len(reached):]]
        return reached + fresh

    def _project(self, force: bool = False) -> bool:
        """Re-plan when the projected end leaves [budget − band, budget]; aim at the band's middle, so speed
        noise does not shuffle the milestones every interval."""
        sps = self.seconds_per_step
        if sps is None:
            return False
        band = max(BAND * self.budget_s, sps)
        end = self.elapsed_s + (self.total_steps - self.step) * sps
        behind = self.total_steps < self.step
        if not (force or behind) and self.planned and self.budget_s - band <= end <= self.budget_s:
            return False
        fit = self.step + int(max(0.0, self.budget_s - band / 2 - self.elapsed_s) / sps + 1e-6)  # 1e-6: float dust
        if self.cfg.train.max_steps:
            fit = min(fit, self.cfg.train.max_steps)
        fit = max(fit, self.step)  # never an end behind us
        if self.planned and fit == self.total_steps and not force:
            return False
        self.total_steps = fit
        self.milestones = self._place(fit)
        self.planned = True
        return True

    def observe(self, step: int, elapsed_s: float) -> bool:
        """Record that ``step`` steps are done after ``elapsed_s`` training seconds; True when re-planned."""
        self.step, self.elapsed_s = int(step), float(elapsed_s)
        if not self.on:
            return False
        if self._mark is None:  # the first step after a start or resume is slow (warm caches): not a speed
            self._mark = (self.step, self.elapsed_s)
            return False
        dn, dt = self.step - self._mark[0], self.elapsed_s - self._mark[1]
        due = dt >= self._interval_s() or (not self.planned and self.step >= self.total_steps - 1)
        if dn < 1 or dt < 0 or not due:
            return False
        decay = math.exp(-dt / self._horizon_s())
        self._t, self._n = self._t * decay + dt, self._n * decay + dn
        self._mark = (self.step, self.elapsed_s)
        first = not self.planned
        changed = self._project()
        self.replans += changed and not first
        return changed

    def lr_at(self, step: int) -> float:
        return lr_for(self.cfg, step, self.milestones)

    # --- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "budget_s": self.budget_s, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "milestones": list(self.milestones), "step": self.step,
                "elapsed_s": self.elapsed_s, "planned": self.planned, "replans": self.replans,
                "speed_sums": [self._t, self._n]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != VERSION:
            raise ValueError(f"lr plan state version {state.get('version')!r}; this build reads {VERSION}")
        self.total_steps, self.milestones = int(state["total_steps"]), [int(m) for m in state["milestones"]]
        self.step, self.elapsed_s = int(state["step"]), float(state["elapsed_s"])
        self.planned, self.replans = bool(state["planned"]), int(state["replans"])
        self._t, self._n = (float(v) for v in state["speed_sums"])
        self._mark = None  # the resumed process measures afresh; the speed estimate carries over

    # --- for people --------------------------------------------------------------------------
    def describe(self) -> str:
        """One line for the monitor and the journal."""
        decay = ""
        if self.cfg.train.schedule == "piecewise" and self.milestones:
            decay = f"; lr ×{self.cfg.train.gamma:g} at step {', '.join(str(m) for m in self.milestones)}"
        if not self.on:
            how = ("train.max_steps" if self.cfg.train.max_steps else
                   f"{self.cfg.train.epochs} epochs × {self.steps_per_epoch}")
            return f"fixed plan: {self.total_steps} steps ({how}){decay}"
        head = f"budget {_fmt_s(self.budget_s)}"
        if not self.planned:
            return f"{head}: measuring the step time (plan so far: {self.total_steps} steps, no decay yet)"
        sps = self.seconds_per_step or 0.0
        end = self.elapsed_s + (self.total_steps - self.step) * sps
        epochs = self.total_steps / self.steps_per_epoch
        return (f"{head}: {sps:.3g} s/step → {self.total_steps} steps (≈{epochs:.3g} epochs, ends at "
                f"{_fmt_s(end)}){decay}; re-planned {self.replans}×")
