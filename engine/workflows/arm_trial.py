"""A remedy proven against the run it would change: from the rewind checkpoint, with the run's own data order and
the same number of steps, one short trial with the change and one without (the control). Each is scored on the val
set by the metric the finding names (its online weights: after a short trial the EMA still holds mostly where it
started). The remedy is applied only when its trial beats the control — the lr remedy's seven stars, for a change
that has one value to try."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from ..diagnosis.rulebook import finite
from ..run.job import Job
from .lr_trial import FOREVER, prepare_run, trial_length
from .rewind import RemedyStopped, Rewind
from .trial import train_trial

ARMS = ("control", "remedy")  # without the change, with it: trials/<arm>/


@dataclass
class Arm:
    name: str  # control or remedy
    status: str = "new"  # done, failed, stopped
    score: float | None = None  # the proof metric on val (higher is better)
    mAP: float | None = None  # evidence only
    steps: int = 0


@dataclass
class ArmProof:
    metric: str  # a COCO key of the val evaluation, e.g. AP75
    from_step: int
    steps: int
    arms: list[Arm] = field(default_factory=list)

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)

    def won(self) -> bool:
        """The change scored strictly higher than the unchanged run."""
        c, r = self.arm("control"), self.arm("remedy")
        return bool(c and r and finite(r.score) and (not finite(c.score) or r.score > c.score))

    def summary(self) -> str:
        def said(a: Arm | None) -> str:
            return f"{a.score:.3f}" if a is not None and finite(a.score) else (a.status if a else "not run")
        return (f"{self.metric} {said(self.arm('remedy'))} with the change vs {said(self.arm('control'))} without, "
                f"{self.steps} steps each from step {self.from_step}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "won": self.won()}


def prove(parent: Path, cfg: C.Config, changes: dict[str, Any], rewind: Rewind, root: Path, metric: str,
          steps: int | None = None, callback: Callable[[Arm], None] = lambda a: None,
          job: Job | None = None) -> ArmProof:
    """Both arms from ``rewind`` in ``root``/control and ``root``/remedy; ``cfg`` is the parent's config."""
    steps = trial_length(parent, rewind.step, steps)
    proof = ArmProof(metric, rewind.step, steps)
    for name in ARMS:
        if job is not None and job.stopped.is_set():
            raise RemedyStopped(f"the remedy's trial was stopped by request; nothing was applied and {parent.name} "
                                "is as it was")
        arm_cfg = C.with_updates(cfg, changes, "remedy trial") if name == "remedy" else cfg
        proof.arms.append(run_arm(parent, arm_cfg, rewind, steps, root / name, name, metric, job))
        callback(proof.arms[-1])
    return proof


def run_arm(parent: Path, cfg: C.Config, rewind: Rewind, steps: int, path: Path, name: str, metric: str,
            job: Job | None = None) -> Arm:
    """``steps`` steps of ``cfg`` from ``rewind`` in ``path``, then its online weights scored on val by ``metric``."""
    tcfg = C.with_updates(cfg, {"eval.interval": FOREVER, "diagnose.enabled": False}, f"remedy trial ({name})")
    prepare_run(path, tcfg, rewind, parent)
    end = train_trial(path, tcfg, max_steps=rewind.step + steps, on_trainer=job.attach if job is not None else None)
    arm = Arm(name, steps=max(0, end.step - rewind.step))
    if end.state == "failed":
        arm.status = "failed"
    elif job is not None and job.stopped.is_set():
        arm.status = "stopped"
    else:
        from ..evaluation.evaluate_run import evaluate_online

        held = evaluate_online(path)
        arm.status, arm.score, arm.mAP = "done", float(held[metric]), float(held["mAP"])
        if not math.isfinite(arm.score):
            arm.status = "failed"
    return arm
