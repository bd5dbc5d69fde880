"""Apply a finding's remedy: rewind to the checkpoint before the evidence, change the config, go on as a child run.

The child is a new run directory that records its parent and the finding that caused it (its first events line
and ``remedy.json``). When every changed key is live, the child starts from the parent's checkpoint at or
before ``remedy.resume_from_step`` — the one the trainer pinned when the finding fired (engine.diagnosis.pins), else the
newest ring checkpoint at or before it — with weights, optimiser, EMA and RNG: the run continues, only the config
differs. A remedy that said "resume from step N" never silently starts from scratch: when no checkpoint at or
before N is left, ``apply`` refuses (RemedyError) unless the trainer recorded at firing time that none was left,
or the caller passes ``allow_scratch``. A change of a non-live key starts a new run from scratch, as it says.

An lr remedy is proven before it is applied (the notes' seven stars, 七星连珠法, run downward from the current
lr): from the rewind checkpoint, with the run's own data order, each value down the half-decade grid trains a
short trial (``trial_steps``); a trial whose loss rises far above its start (``BLOWUP``) is cut at once — that lr
cannot work. Each finished trial is scored on held-out data, the run's val set, by the raw val loss of its online
weights: short trials ranked by their own train loss favour large lrs (a real set run at 300× its lr chose 10× the
healthy lr that way and reached 0.55 of the healthy run's mAP). The descent stops once ``PATIENCE`` trials in a row
score worse than the best (one noisy upturn does not end it). Held-out scores of short trials still favour large
lrs, so a best-scored value next to a diverging one gives way to the next one down (``lr_trial.backed_off``); the
child continues from the end of the applied value's trial (those steps are not redone); every trial's curve is the
evidence, in remedy.json and the child's first events line.

``open_findings`` lists a run's findings still open (the latest per rule, neither applied nor dismissed);
``dismiss`` closes one and releases its pinned checkpoint. Resume the child with ``Trainer.resume(child)`` when
it holds a checkpoint, else ``Trainer(cfg, child)``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from ..diagnosis import pins
from ..run import recorder, rundir
from ..diagnosis.rulebook import SEVERITY_RANK
from ..run.events import Lineage, RemedyClosed, RunState
from ..run.job import Job
from .arm_trial import Arm, ArmProof, prove  # noqa: F401 - remedy.Arm: what callbacks hear
from .lr_trial import LR, TrialRun, lr_trial, prepare_run, trial_length, trial_values
from .rewind import RemedyError, RemedyStopped, Rewind, rewind_point, checkpoint_step

REMEDY_JSON = "remedy.json"


# --- findings: open, applied, dismissed ----------------------------------------------------------------------------

def open_findings(run_dir: Path) -> list[dict[str, Any]]:
    """The run's open findings, most severe first (then the latest): per rule the last one reported, unless it was
    applied or dismissed after it fired."""
    latest: dict[str, dict[str, Any]] = {}
    for e in rundir.read_events(Path(run_dir)):
        if e.get("kind") == "diagnosis" and e.get("rule"):
            latest[e["rule"]] = e
        elif e.get("kind") == "log" and e.get("remedy_action") and e.get("rule") in latest:
            if int(e.get("finding_step", -1)) >= int(latest[e["rule"]].get("step", 0)):
                del latest[e["rule"]]
    return sorted(latest.values(), key=lambda f: (-SEVERITY_RANK.get(f.get("severity"), 0), -int(f.get("step", 0))))


def applicable(finding: dict[str, Any]) -> bool:
    return bool((finding.get("remedy") or {}).get("set"))


def _close(run_dir: Path, finding: dict[str, Any], action: str, message: str) -> None:
    """Record that ``finding`` was applied or dismissed (the parent's events.jsonl) and release its pin."""
    recorder.append(run_dir, RemedyClosed(message, remedy_action=action, rule=str(finding.get("rule")),
                                          finding_step=int(finding.get("step", 0))))
    pins.release(run_dir, str(finding.get("rule")))


def dismiss(run_dir: Path, finding: dict[str, Any]) -> None:
    """Close ``finding`` without applying it; its pinned checkpoint goes."""
    _close(run_dir, finding, "dismissed", f"{finding.get('rule')} dismissed")


# --- apply -----------------------------------------------------------------------------------------------------------

def apply(run_dir: Path, finding: dict[str, Any], root: Path | None = None, *, trial: bool = True,
          trial_steps: int | None = None, allow_scratch: bool = False,
          callback: Callable[[Any], None] = lambda t: None, child: Path | None = None) -> Path:
    """Create the child run for ``finding`` (a Diagnosis event as a dict) and return its directory.

    An lr change is proven first by ``lr_trial`` (``trial=False`` applies the finding's own value); the child then
    continues from the end of the best trial. A live change whose finding names a ``proof`` metric is tried against
    the unchanged run (engine.workflows.arm_trial) and applied only when it wins; the child continues from the end
    of its trial. ``callback`` hears each lr trial (Trial) or arm (Arm). The finding is closed in the parent (its
    pin released).

    While the trials train, this process owns the child's folder (engine.run.job): ``nanxi-tune ctl CHILD pause|
    continue|stop`` reach the trial in progress, and a stop ends the descent (RemedyStopped) with nothing applied
    and the child's folder removed. ``child``: the folder to use (new or empty), else runs/<run>-<rule>.
    """
    run_dir = Path(run_dir)
    rule = str(finding.get("rule", "remedy"))
    rem = finding.get("remedy") or {}
    changes = dict(rem.get("set") or {})
    if not changes:
        raise RemedyError(f"{rule}: this finding has no config change to apply "
                          f"({rem.get('text') or 'see its message'})")
    parent_cfg = C.load(run_dir / rundir.CONFIG)
    C.with_updates(parent_cfg, changes, f"remedy {rule}")  # a bad value is refused before anything is written
    where = rewind_point(run_dir, finding, allow_scratch)
    if child is None:
        child = rundir.new_run_dir(root or run_dir.parent, f"{run_dir.name}-{rule}")
    elif (Path(child) / rundir.CONFIG).exists():
        raise RemedyError(f"{child} already holds a run; pick a new folder for the child")
    child = Path(child)
    proof: TrialRun | None = None
    arms: ArmProof | None = None
    start = where
    kind = trial_kind(changes, rem, where) if trial else None
    try:
        if kind == "lr":
            others = {k: v for k, v in changes.items() if k != LR}
            base = C.with_updates(parent_cfg, others, f"remedy {rule}") if others else parent_cfg
            proof = _in_job(child, "remedy's lr trial descent", run_dir, lambda job: lr_trial(
                run_dir, base, where, child / "trials", trial_steps, callback, job), lambda p: f"lr {p.applied}")
            if proof.applied is None:
                tried = ", ".join(f"{t.value:g} {t.status}" for t in proof.trials)
                raise RemedyError(f"{rule}: no lr below {parent_cfg.train.base_lr:g} trained from step {where.step} "
                                  f"without blowing up ({tried}); the run is broken before that step: start it "
                                  "again with a lower train.base_lr")
            changes[LR] = proof.applied
        elif kind == "proof":
            arms = _in_job(child, "remedy's trial", run_dir, lambda job: prove(
                run_dir, parent_cfg, changes, where, child / "trials", str(rem["proof"]), trial_steps,
                callback, job), lambda a: a.summary())
            if not arms.won():
                raise RemedyError(f"{rule}: not proven, nothing was applied ({run_dir.name} is as it was): "
                                  f"{arms.summary()}. Apply it untried with --no-trial")
        cfg = C.with_updates(parent_cfg, changes, f"remedy {rule}")
        C.save(cfg, child / rundir.CONFIG)
        winner = (child / "trials" / f"lr-{proof.applied:g}" if proof is not None else
                  child / "trials" / "remedy" if arms is not None else None)
        if winner is not None:
            steps = proof.trial_steps if proof is not None else arms.steps
            start = _continue_from(child, winner, where, f", then its trial's {steps} steps")
        else:
            prepare_run(child, cfg, where, run_dir)
    except BaseException:
        shutil.rmtree(child, ignore_errors=True)
        raise
    said = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in changes.items())
    message = f"child of {run_dir.name} for {rule}: {said}, {start.note}"
    if proof is not None:
        message += f" (seven stars downward: {trial_summary(proof)})"
    if arms is not None:
        message += f" (proven: {arms.summary()})"
    record = {"parent": str(run_dir), "reason": rule, "finding": finding, "set": changes, "from_step": where.step,
              "start_step": start.step, "start": start.note, "trial": proof.to_json() if proof else None,
              "proof": arms.to_json() if arms else None}
    (child / REMEDY_JSON).write_text(json.dumps(record, indent=1, allow_nan=True), encoding="utf-8")
    recorder.append(child, Lineage(message, parent=record["parent"], reason=rule,
                                   details={k: v for k, v in record.items() if k not in ("parent", "reason")}))
    _close(run_dir, finding, "applied", f"{rule} applied: child {child.name}")
    return child


def trial_kind(changes: dict[str, Any], rem: dict[str, Any], where: Rewind) -> str | None:
    """Which trial proves a remedy before it is applied: "lr" (the seven stars downward) for a live change of the lr,
    "proof" (against the unchanged run) for a live change whose finding names a metric and that resumes from a
    checkpoint, else None (applied as it is)."""
    if not all(C.is_live(k) for k in changes):
        return None
    if LR in changes:
        return "lr"
    return "proof" if rem.get("proof") and where.source is not None else None


def _in_job(child: Path, what: str, parent: Path, work: Callable[[Job], Any], done: Callable[[Any], str]) -> Any:
    """``work(job)`` while this process owns the child's folder as a job (``ctl CHILD pause|continue|stop`` reach the
    trial in progress); a stop ends it with nothing applied (RemedyStopped). The job's record is then cleared: its
    states and answers were for the trials, not the child."""
    job = Job(child, what)
    try:
        result = work(job)
        if job.stopped.is_set():
            raise RemedyStopped(f"the {what} was stopped by request; nothing was applied and {parent.name} is as it "
                                "was")
    except BaseException as err:
        job.close(RunState.STOPPED if isinstance(err, RemedyStopped) else RunState.FAILED, str(err))
        if job.acked_stop:
            time.sleep(1.0)  # the client that asked reads its answer before the folder goes
        raise
    job.close(RunState.FINISHED, done(result))
    with recorder.Recorder(child) as rec:
        rec.reset()
    return result


def _continue_from(child: Path, trial: Path, where: Rewind, note: str) -> Rewind:
    """The child continues from the end of its winning trial: its checkpoint and curve; the trials keep their curves
    (remedy.json), not their weights."""
    if rundir.last_checkpoint(trial).exists():
        (child / rundir.CHECKPOINTS).mkdir(exist_ok=True)
        shutil.copyfile(rundir.last_checkpoint(trial), rundir.last_checkpoint(child))
        with recorder.Recorder(child) as rec:
            rec.copy_metrics(trial)
        where = Rewind(checkpoint_step(rundir.last_checkpoint(child)), where.source, where.note + note)
    for t in (child / "trials").iterdir():
        if t.is_dir():
            shutil.rmtree(t / rundir.CHECKPOINTS, ignore_errors=True)
    return where


def trial_summary(proof: TrialRun) -> str:
    parts = []
    for t in proof.trials:
        s = f"{t.score:.3f}" if t.status == "done" else t.status
        parts.append(f"{t.value:g}: {s}{' ★' if t.value == proof.applied else ''}")
    out = f"{proof.trial_steps} steps each from step {proof.from_step}, held-out val loss " + ", ".join(parts)
    if proof.applied != proof.best:
        out += f"; best-scored {proof.best:g}, applied the next value down (short trials favour large lrs)"
    return out


def plan(run_dir: Path, finding: dict[str, Any], allow_scratch: bool = False,
         trial_steps: int | None = None) -> dict[str, Any]:
    """What ``apply`` would do, without training or writing anything (``--dry-run``)."""
    run_dir = Path(run_dir)
    rem = finding.get("remedy") or {}
    changes = dict(rem.get("set") or {})
    cfg = C.load(run_dir / rundir.CONFIG)
    out: dict[str, Any] = {"rule": finding.get("rule"), "set": changes, "text": rem.get("text", ""),
                           "changes": {k: [C.flatten(cfg).get(k), v] for k, v in changes.items()}}
    if not changes:
        out["error"] = "no config change to apply"
        return out
    try:
        where = rewind_point(run_dir, finding, allow_scratch)
        out["start"], out["from_step"] = where.note, where.step
    except RemedyError as err:
        out["error"] = str(err)
        return out
    kind = trial_kind(changes, rem, where)
    if kind is not None:
        steps = trial_length(run_dir, where.step, trial_steps)
        if kind == "lr":
            out["trial"] = {"values": trial_values(cfg.train.base_lr), "steps": steps}
        else:
            out["proof"] = {"metric": rem["proof"], "steps": steps}
    return out


def has_checkpoint(run_dir: Path) -> bool:
    return rundir.last_checkpoint(run_dir).exists()
