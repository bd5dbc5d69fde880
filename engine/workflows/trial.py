"""Train one trial with a stop condition: the one way sweeps, studies and remedies train a trial.

A trial is an ordinary run folder. ``train_trial`` starts it — or resumes it from its last checkpoint, so a
trial stopped or killed goes on bit-exact — cuts it when ``stop_when`` names a reason, and says how it ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from ..run import rundir, runctl
from ..run.events import Callback, EvalMetrics, Event, StepMetrics, null_callback

StopWhen = Callable[[StepMetrics], str | None]  # a reason to cut the trial at this step, or None
CutOnEval = Callable[[EvalMetrics], str | None]  # a reason to cut the trial at this evaluation, or None


@dataclass(frozen=True)
class TrialEnd:
    state: str  # finished, stopped, failed
    step: int  # the step it ended at
    resumed: bool  # it went on from a checkpoint
    cut: str = ""  # why stop_when cut it ("" when it was not cut)
    error: str = ""  # a failed trial's error


def train_trial(run_dir: Path | str, cfg: C.Config, *, lineage: Event | None = None, stop_when: StopWhen | None = None,
                max_steps: int | None = None, callback: Callback = null_callback,
                on_trainer: Callable[[Any], None] | None = None, cut_on_eval: CutOnEval | None = None) -> TrialEnd:
    """Train ``cfg`` in ``run_dir`` (resumed from its last checkpoint when it has one) until it finishes, reaches
    ``max_steps``, is stopped (``on_trainer`` hands out the trainer: ``request_stop`` / ``request_pause`` from any
    thread) or a cut: ``stop_when`` at a step, ``cut_on_eval`` at an evaluation. ``lineage`` is the first line of a
    fresh trial's events (its parent). Raises runctl.RunBusy when a live process owns the folder."""
    from ..run.recorder import Recorder, append
    from ..train.trainer import Trainer

    run_dir = Path(run_dir)
    cut: list[str] = []
    box: dict[str, Any] = {}

    def on_event(event: Event) -> None:
        callback(event)
        if cut:
            return
        reason = None
        if stop_when is not None and isinstance(event, StepMetrics):
            reason = stop_when(event)
        elif cut_on_eval is not None and isinstance(event, EvalMetrics):
            reason = cut_on_eval(event)
        if reason:
            cut.append(reason)
            box["trainer"].request_stop()

    resumed = rundir.last_checkpoint(run_dir).exists()
    if resumed:
        trainer = Trainer.resume(run_dir, on_event, max_steps=max_steps)
    else:
        st = runctl.status(run_dir)
        if st.alive:
            raise runctl.RunBusy(run_dir, st.owner)
        run_dir.mkdir(parents=True, exist_ok=True)
        with Recorder(run_dir) as rec:  # a trial killed before its first checkpoint starts clean
            rec.reset()
        if lineage is not None:
            append(run_dir, lineage)
        trainer = Trainer(cfg, run_dir, on_event, max_steps=max_steps)
    box["trainer"] = trainer
    if on_trainer is not None:
        on_trainer(trainer)
    state = trainer.run()
    error = ""
    if state == "failed":
        errors = [e for e in rundir.read_events(run_dir) if e.get("kind") == "error"]
        error = str(errors[-1].get("error", "")) if errors else "failed"
    return TrialEnd(state, trainer.step, resumed, cut[0] if cut else "", error)
