"""A study's worker side: train one claimed trial, follow the study's control state, tell the result.

``run_claimed`` serves both the owner's trial processes (one per trial, on this machine) and
``nanxi-tune study worker STORAGE STUDY`` on any machine (``work``: claim, train, tell, until none is left).
The study's control state (paused / stopping) is read from the storage every ``POLL_S`` and applied to the
trial's trainer in this process, so a pause reaches a trial on another machine as it reaches one here.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ..run.events import Callback, Lineage, null_callback
from .study_prune import pruner
from .study import HEARTBEAT_S, Study, trial_config
from .study_results import summarize_trial
from .trial import train_trial

POLL_S = 0.5


def run_claimed(study: Study, trial, runs_root: Path, device: str | None = None,
                callback: Callback = null_callback, stop: threading.Event | None = None) -> str:
    """Train the RUNNING ``trial`` this process was given (resumed from its checkpoint if it has one) in
    ``runs_root``/trial-<value>; tell Optuna its mAP (finished), FAIL (failed), PRUNED (cut half-way: it
    cannot become the best), or leave it RUNNING with status "stopped" for a later owner to hand out again.
    ``stop`` (set from a signal handler) stops it with a checkpoint. Returns the trial's state."""
    spec = study.spec
    value = float(trial.user_attrs["value"])
    run_dir = Path(runs_root) / trial.user_attrs["run"]
    if trial.user_attrs.get("cut"):  # cut half-way, then killed before it was told: its result stands
        study.mark(trial, status="pruned", **{k: v for k, v in summarize_trial(run_dir).items() if v is not None})
        study.tell(trial, "pruned", None)
        return "pruned"
    cfg = trial_config(spec, value, device)
    where = device or cfg.train.device
    study.mark(trial, host=socket.gethostname(), pid=os.getpid(), device=where, run_dir=str(run_dir.resolve()),
               status="running", heartbeat=time.time())
    box: dict[str, Any] = {}
    done = threading.Event()
    watcher = threading.Thread(target=_follow_control, args=(study, trial, box, done, stop or threading.Event()), daemon=True,
                               name="nanxi-study-control")
    t0 = time.time()
    used = float(trial.user_attrs.get("seconds", 0.0))
    parent = str(study.folder) if study.folder else f"{spec.storage}#{spec.name}"
    lineage = Lineage(message=f"trial {spec.key} = {spec.label(value)} of {spec.kind} {spec.name}", parent=parent,
                      reason=spec.kind, details={"sweep_key": spec.key, "sweep_value": value, "study": spec.name})
    watcher.start()
    try:
        end = train_trial(run_dir, cfg, lineage=lineage, callback=callback,
                          on_trainer=lambda t: box.update(trainer=t),
                          cut_on_eval=pruner(study, trial, box) if spec.prune_epoch else None)
    finally:
        done.set()
        watcher.join(timeout=5)
    summary = summarize_trial(run_dir)
    status = {"finished": "finished", "failed": "failed"}.get(end.state, "stopped")
    if status == "stopped" and end.cut:
        status = "pruned"
    study.mark(trial, status=status, seconds=used + time.time() - t0, error=end.error, cut=end.cut,
               **{k: v for k, v in summary.items() if v is not None})
    if status == "finished":
        study.tell(trial, "finished", summary.get("mAP", 0.0))
    elif status in ("failed", "pruned"):
        study.tell(trial, status, None)
    return status


def _follow_control(study: Study, trial, box: dict[str, Any], done: threading.Event, stop: threading.Event) -> None:
    """The study's control state → this trial's trainer; the trial's heartbeat → the storage."""
    beat = 0.0
    paused = False
    while not done.wait(POLL_S):
        trainer = box.get("trainer")
        try:
            state = study.control()
            if time.time() - beat > HEARTBEAT_S:
                beat = time.time()
                study.mark(trial, heartbeat=beat)
        except Exception:  # noqa: BLE001 - a storage hiccup must not end the trial; try again
            continue
        if trainer is None:
            continue
        if state == "stopping" or stop.is_set():
            trainer.request_stop()
        elif state == "paused" and not paused:
            trainer.request_pause()
            paused = True
        elif state != "paused" and paused:
            trainer.request_continue()
            paused = False


def work(study: Study, runs_root: Path, device: str | None = None, callback: Callback = null_callback,
         say=lambda msg: None, stop: threading.Event | None = None) -> int:
    """A worker on any machine: claim the next trial, train it, tell, until none waits or the study stops.
    Returns the number of trials trained."""
    n = 0
    stop = stop or threading.Event()
    while not stop.is_set():
        state = study.control()
        if state in ("stopping", "stopped", "finished"):
            say(f"study {study.name} is {state}: the worker ends")
            return n
        if state == "paused":
            time.sleep(1.0)
            continue
        trial = study.claim()
        if trial is None:
            say(f"no trial left to claim in {study.name}")
            return n
        say(f"trial {trial.number}: {study.spec.key} = {study.spec.label(float(trial.user_attrs['value']))}")
        status = run_claimed(study, trial, runs_root / study.name, device, callback, stop)
        say(f"trial {trial.number}: {status}")
        n += 1
        if status == "stopped":
            return n
    return n
