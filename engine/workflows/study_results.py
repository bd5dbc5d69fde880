"""A study's trials as results: Optuna's states and scores, a live trial's step from its run folder, the best."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run import rundir, runctl
from ..grid import slid_window
from .study import Study, ran_here
from ..metric_keys import BRANCH_LOSSES


@dataclass
class TrialResult:
    value: float
    status: str = "pending"  # pending, running, paused, stopped, finished, failed, pruned
    run_dir: str = ""
    mAP: float | None = None
    AP50: float | None = None
    train_loss: float | None = None  # last logged (weighted) train loss
    raw_loss: float | None = None  # last loss_map + loss_offset + loss_shape
    steps: int = 0
    seconds: float = 0.0
    error: str = ""
    number: int = -1  # the Optuna trial's number
    device: str = ""

    def score(self) -> float:
        """What "best" ranks: mAP, a failed trial (diverged) counts as below any finished one."""
        return self.mAP if (self.status == "finished" and self.mAP is not None) else -1.0


def summarize_trial(run_dir: Path) -> dict[str, Any]:
    """mAP/AP50 of the last evaluation, the last train losses, steps — read from the trial's metrics.jsonl."""
    metrics = rundir.read_metrics(run_dir)
    vals = [m for m in metrics if m.get("split") == "val"]
    trains = [m for m in metrics if m.get("split") == "train"]
    out: dict[str, Any] = {"steps": max((m.get("step", 0) for m in metrics), default=0)}
    if vals:
        out["mAP"], out["AP50"] = float(vals[-1]["mAP"]), float(vals[-1]["AP50"])
    if trains:
        t = trains[-1]
        out["train_loss"] = float(t["loss"])
        if all(isinstance(t.get(k), (int, float)) for k in BRANCH_LOSSES):
            out["raw_loss"] = float(t["loss_map"] + t["loss_offset"] + t["loss_shape"])
    return out


_STATE = {"WAITING": "pending", "COMPLETE": "finished", "FAIL": "failed", "PRUNED": "pruned"}
DONE = ("finished", "failed", "pruned")  # a trial with its result: never trained again


def rows(study: Study) -> list[TrialResult]:
    """Every trial of ``study``, by value: Optuna's state and scores, a live trial's step from its run folder."""
    out = []
    owner_alive: bool | None = None  # the study owner's liveness, read once and only when a trial needs it
    for t in study.trials():
        a = t.user_attrs
        status = _STATE.get(t.state.name) or str(a.get("status", "running"))
        run_dir = a.get("run_dir") or (str(study.folder / a["run"]) if study.folder else "")
        r = TrialResult(float(a.get("value", 0.0)), status, run_dir, a.get("mAP"), a.get("AP50"), a.get("train_loss"),
                        a.get("raw_loss"), int(a.get("steps", 0) or 0), float(a.get("seconds", 0.0) or 0.0),
                        str(a.get("error", "") or ""), t.number, str(a.get("device", "") or ""))
        if t.state.name == "COMPLETE" and t.values:
            r.mAP = float(t.values[0])
        if status in ("running", "stopped") and run_dir and Path(run_dir).is_dir():
            st = runctl.status(Path(run_dir))
            if st.alive:
                r.status = "paused" if st.state == runctl.RunState.PAUSED else "running"
                r.steps = max(r.steps, st.step, rundir.last_step(Path(run_dir)))
            else:
                r.steps = max(r.steps, summarize_trial(Path(run_dir))["steps"])
        if r.status == "running" and ran_here(a) and study.folder is not None:
            if owner_alive is None:
                owner_alive = runctl.status(study.folder).alive
            if not owner_alive:  # its process died with the owner: it starts again, or resumes from a checkpoint
                r.status = "stopped" if run_dir and rundir.last_checkpoint(Path(run_dir)).exists() else "pending"
        out.append(r)
    return sorted(out, key=lambda r: r.value)


def best_row(results: list[TrialResult]) -> TrialResult | None:
    done = [r for r in results if r.status in DONE]
    if not done or max(r.score() for r in done) < 0:
        return None
    return max(done, key=lambda r: (r.score(), -(r.raw_loss if r.raw_loss is not None else math.inf)))


def next_window_of(results: list[TrialResult]) -> list[float] | None:
    """The slid window when every trial is done and the best sits at an edge of the values (None otherwise)."""
    b = best_row(results)
    if b is None or not all(r.status in DONE for r in results) or len(results) < 2:
        return None
    return slid_window([r.value for r in results], b.value)


def table(study: Study) -> list[dict[str, Any]]:
    """Rows for tables and charts: value, mAP, AP50, losses, status, steps, seconds, device, best (bool)."""
    results = rows(study)
    b = best_row(results)
    spec = study.spec
    return [{"value": r.value, "label": spec.label(r.value), "mAP": r.mAP, "AP50": r.AP50, "train_loss": r.train_loss,
             "raw_loss": r.raw_loss,
             "status": r.status, "steps": r.steps, "seconds": r.seconds, "error": r.error, "device": r.device,
             "number": r.number, "best": b is not None and r.value == b.value, "run_dir": r.run_dir}
            for r in results]
