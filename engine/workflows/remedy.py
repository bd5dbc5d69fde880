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
score worse than the best (one noisy upturn does not end it). The best value is applied and the child continues
from the end of its trial (those steps are not redone); every trial's curve is the evidence, in remedy.json and the
child's first events line.

``open_findings`` lists a run's findings still open (the latest per rule, neither applied nor dismissed);
``dismiss`` closes one and releases its pinned checkpoint. Resume the child with ``Trainer.resume(child)`` when
it holds a checkpoint, else ``Trainer(cfg, child)``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from ..diagnosis import pins
from ..run import recorder, rundir
from ..diagnosis.rulebook import BRANCHES, SEVERITY_RANK, finite, lower_lr, median, raw_loss
from ..run.events import Lineage, RemedyClosed, RunState
from ..run.job import Job
from .study import param_distribution
from .trial import train_trial

LR = "train.base_lr"
STARS = 7  # values tried at most (the seven stars)
BLOWUP = 1.5  # a trial whose running raw loss exceeds this × its first value is cut: that lr cannot work
TIE = 0.02  # trial scores within 2 % of the best: the larger lr wins (it goes on learning faster)
PATIENCE = 2  # trials in a row worse than the best before the descent stops
REMEDY_JSON = "remedy.json"
FOREVER = 1_000_000_000  # eval.interval of a trial: no evaluation inside it


class RemedyError(ValueError):
    pass


class RemedyStopped(RemedyError):
    """A stop (``nanxi-tune ctl CHILD stop``, the TUI's F7) ended the trial descent: nothing was applied."""


# --- rewind checkpoints ------------------------------------------------------------------------------------------

def pick_checkpoint(run_dir: Path, step: int | None) -> Path | None:
    """The newest rewind checkpoint (pinned or ring) at or before ``step`` (last.pt when step is None)."""
    if step is None:
        last = rundir.last_checkpoint(run_dir)
        return last if last.exists() else None
    found = pins.newest_at_or_before(Path(run_dir), int(step))
    return found[1] if found else None


@dataclass
class Rewind:
    step: int  # the step the child starts from (0: from scratch)
    source: Path | None  # the checkpoint it starts from (None: from scratch)
    note: str  # how the child starts, in words


def rewind_point(run_dir: Path, finding: dict[str, Any], allow_scratch: bool = False) -> Rewind:
    """Where ``finding``'s child starts. Raises RemedyError rather than start from scratch unannounced."""
    run_dir = Path(run_dir)
    rem = finding.get("remedy") or {}
    changes = rem.get("set") or {}
    if not all(C.is_live(k) for k in changes):
        fixed = ", ".join(k for k in changes if not C.is_live(k))
        return Rewind(0, None, f"from scratch: {fixed} cannot change in a running run")
    asked = rem.get("resume_from_step")
    if asked is None:
        last = rundir.last_checkpoint(run_dir)
        if last.exists():
            return Rewind(_step_of(last), last, f"from its last checkpoint (step {_step_of(last)})")
        return Rewind(0, None, "from scratch: the run saved no checkpoint")
    asked = int(asked)
    entry = pins.read(run_dir).get(str(finding.get("rule")))
    held = pins.pinned(run_dir, str(finding.get("rule"))) if entry and entry.get("asked") == asked else None
    if held is not None:
        s = pins.step_of(held)
        return Rewind(s, held, f"from its step {s} (pinned for this finding)")
    path = pick_checkpoint(run_dir, asked)
    if path is not None:
        s = pins.step_of(path)
        return Rewind(s, path, f"from its step {s}")
    if asked == 0:
        return Rewind(0, None, "from step 0 (the evidence starts at the first steps)")
    if "checkpoint_step" in rem and rem["checkpoint_step"] is None:
        return Rewind(0, None, f"from step 0: no checkpoint at or before step {asked} was left when the finding "
                               "fired")
    if allow_scratch:
        return Rewind(0, None, f"from step 0, as asked: no checkpoint at or before step {asked} is left")
    keep = _keep(run_dir)
    raise RemedyError(f"{finding.get('rule')}: the remedy resumes from step {asked}, but no checkpoint at or before "
                      f"it is left in {run_dir / rundir.CHECKPOINTS} (the ring keeps the newest {keep}, and this "
                      f"finding was not pinned); apply it from scratch instead (nanxi-tune remedy --from-scratch)")


def _step_of(path: Path) -> int:
    from ..run import checkpoint as ckpt_io

    return int(ckpt_io.peek(path, "step", 0))


def _keep(run_dir: Path) -> int | str:
    try:
        return C.load(run_dir / rundir.CONFIG).train.keep_checkpoints
    except Exception:  # noqa: BLE001 - only for the message
        return "few"


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


# --- the lr trial (seven stars downward) ------------------------------------------------------------------------

@dataclass
class Trial:
    value: float
    status: str = "new"  # done, blew-up, failed
    score: float | None = None  # raw val loss of the trial's online weights: held out (lower is better)
    train_score: float | None = None  # median raw train loss over the trial's last half (evidence only)
    mAP: float | None = None  # val mAP of the trial's online weights (evidence only)
    steps: int = 0  # steps trained
    curve: list[list[float]] = field(default_factory=list)  # [step, raw loss]


@dataclass
class TrialRun:
    key: str
    from_step: int
    trial_steps: int
    trials: list[Trial]
    best: float | None
    steps_used: int  # every step the trials trained (the winner's are kept by the child)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_trial_steps(total_steps: int) -> int:
    """A tenth of the run, at least 10 steps, at most 300 (a few hundred steps on a real run). Longer trials rank
    better but cost the run: on bench/remedy.py's 120-step runs 30-step trials took the children past 2× the healthy
    run's steps; held-out scoring is what keeps short trials from favouring large lrs."""
    return int(max(10, min(300, round(total_steps / 10))))


def trial_values(current: float, n: int = STARS) -> list[float]:
    out, v = [], current
    for _ in range(n):
        v = lower_lr(v)
        out.append(v)
    return out


def _planned_steps(run_dir: Path) -> int:
    for m in reversed(rundir.read_metrics(run_dir)):
        if m.get("split") == "train" and m.get("total_steps"):
            return int(m["total_steps"])
    cfg = C.load(run_dir / rundir.CONFIG)
    return cfg.train.max_steps or cfg.train.epochs * 10


def _prepare(path: Path, cfg: C.Config, rewind: Rewind, parent: Path) -> None:
    """A run folder that starts where ``rewind`` says: config, the checkpoint, the parent's metrics up to it."""
    path.mkdir(parents=True, exist_ok=True)
    C.save(cfg, path / rundir.CONFIG)
    if rewind.source is not None:
        (path / rundir.CHECKPOINTS).mkdir(exist_ok=True)
        shutil.copyfile(rewind.source, rundir.last_checkpoint(path))
        with recorder.Recorder(path) as rec:
            rec.copy_metrics(parent, rewind.step)


def run_trial(parent: Path, cfg: C.Config, rewind: Rewind, value: float, steps: int, path: Path,
              callback: Callable = lambda e: None, job: Job | None = None, study_trial: Any = None) -> Trial:
    """Train ``steps`` steps at ``LR = value`` from ``rewind`` in ``path``; cut at a blow-up. With ``study_trial``
    (an Optuna trial) each raw loss is reported to it and its pruner decides the cut."""
    trial = Trial(value)
    tcfg = C.with_updates(cfg, {LR: value, "eval.interval": FOREVER, "diagnose.enabled": False},
                          f"remedy trial {LR}={value:g}")
    _prepare(path, tcfg, rewind, parent)
    from .pruners import blew_up

    recent: list[float] = []

    def cut(e) -> str | None:
        if e.step <= rewind.step:
            return None
        if job is not None:
            job.set_step(e.step - rewind.step)
        raw = raw_loss(e.to_json())
        trial.curve.append([e.step, raw if finite(raw) else float("inf")])
        if not finite(raw):
            return "blew-up"
        recent.append(raw)
        if study_trial is not None:
            study_trial.report(raw, e.step)
            return "blew-up" if study_trial.should_prune() else None
        return "blew-up" if blew_up(recent, BLOWUP) else None

    end = train_trial(path, tcfg, stop_when=cut, max_steps=rewind.step + steps if rewind.source else steps,
                      on_trainer=job.attach if job is not None else None)
    trial.steps = max(0, end.step - rewind.step)
    if end.cut:
        trial.status, trial.score = "blew-up", math.inf
    elif end.state == "failed":
        trial.status, trial.score = "failed", math.inf
    elif end.state == "stopped" and job is not None and job.stopped.is_set():
        trial.status, trial.score = "stopped", math.inf
    else:
        trial.status = "done"
        tail = [y for _, y in trial.curve[len(trial.curve) // 2:]]
        trial.train_score = median(tail) if tail else math.inf
        from ..evaluation.evaluate_run import evaluate_online

        held = evaluate_online(path)
        trial.score = sum(held[k] for k in BRANCHES) if all(finite(held[k]) for k in BRANCHES) else math.inf
        trial.mAP = held["mAP"]
    callback(trial)
    return trial


def lr_trial(parent: Path, cfg: C.Config, rewind: Rewind, root: Path, steps: int | None = None,
             callback: Callable = lambda t: None, job: Job | None = None) -> TrialRun:
    """The seven stars downward from ``cfg``'s lr, from ``rewind``: trials in ``root``/lr-<value>/."""
    total = _planned_steps(parent)
    steps = steps or default_trial_steps(total)
    steps = max(1, min(steps, total - rewind.step))
    trials: list[Trial] = []
    best: Trial | None = None
    worse = 0  # trials in a row that scored worse than the best
    study = _descent_study(root)
    for v in trial_values(cfg.train.base_lr):
        if job is not None and job.stopped.is_set():
            raise RemedyStopped(f"the lr trial descent was stopped by request after {len(trials)} trial(s); nothing "
                                f"was applied and {parent.name} is as it was")
        study.enqueue_trial({LR: v})
        st = study.ask({LR: param_distribution()})
        tr = run_trial(parent, cfg, rewind, v, steps, root / f"lr-{v:g}", callback, job, st)
        _tell(study, st, tr)
        trials.append(tr)
        if tr.status != "done":
            continue
        if best is None or tr.score < best.score * (1 - TIE):
            best, worse = tr, 0
        elif tr.score > best.score * (1 + TIE):
            worse += 1
            if worse >= PATIENCE:
                break  # worse twice in a row going down: lower values only learn slower
    return TrialRun(LR, rewind.step, steps, trials, best.value if best else None, sum(t.steps for t in trials))


def _descent_study(root: Path):
    """The descent's trials as an Optuna study (journal file in the trials folder): lower raw loss is better, a blow-up
    is a pruned trial (engine.workflows.pruners)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from .pruners import BlowUpPruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    return optuna.create_study(storage=storage, study_name="lr-descent", direction="minimize",
                               pruner=BlowUpPruner(BLOWUP), load_if_exists=True)


def _tell(study, st, tr: Trial) -> None:
    from optuna.trial import TrialState

    if tr.status == "done" and math.isfinite(tr.score):
        study.tell(st, tr.score)
    else:
        study.tell(st, state=TrialState.PRUNED if tr.status == "blew-up" else TrialState.FAIL)


# --- apply -----------------------------------------------------------------------------------------------------------

def apply(run_dir: Path, finding: dict[str, Any], root: Path | None = None, *, trial: bool = True,
          trial_steps: int | None = None, allow_scratch: bool = False,
          callback: Callable[[Trial], None] = lambda t: None, child: Path | None = None) -> Path:
    """Create the child run for ``finding`` (a Diagnosis event as a dict) and return its directory.

    An lr change is proven first by ``lr_trial`` (``trial=False`` applies the finding's own value); the child then
    continues from the end of the best trial. The finding is closed in the parent (its pin released).

    While the lr trials train, this process owns the child's folder (engine.run.job): ``nanxi-tune ctl CHILD pause|
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
    start = where
    job: Job | None = None
    try:
        if trial and LR in changes and all(C.is_live(k) for k in changes):
            others = {k: v for k, v in changes.items() if k != LR}
            base = C.with_updates(parent_cfg, others, f"remedy {rule}") if others else parent_cfg
            job = Job(child, "remedy's lr trial descent")
            try:
                proof = lr_trial(run_dir, base, where, child / "trials", trial_steps, callback, job)
                if job.stopped.is_set():
                    raise RemedyStopped(f"the lr trial descent was stopped by request; nothing was applied and "
                                        f"{run_dir.name} is as it was")
            except BaseException as err:
                job.close(RunState.STOPPED if isinstance(err, RemedyStopped) else RunState.FAILED, str(err))
                if job.acked_stop:
                    time.sleep(1.0)  # the client that asked reads its answer before the folder goes
                raise
            job.close(RunState.FINISHED, f"best lr {proof.best}")
            with recorder.Recorder(child) as rec:  # the job's states and answers were for the descent, not the child
                rec.reset()
            if proof.best is None:
                tried = ", ".join(f"{t.value:g} {t.status}" for t in proof.trials)
                raise RemedyError(f"{rule}: no lr below {parent_cfg.train.base_lr:g} trained from step {where.step} "
                                  f"without blowing up ({tried}); the run is broken before that step: start it "
                                  "again with a lower train.base_lr")
            changes[LR] = proof.best
        cfg = C.with_updates(parent_cfg, changes, f"remedy {rule}")
        C.save(cfg, child / rundir.CONFIG)
        if proof is not None:
            win = child / "trials" / f"lr-{proof.best:g}"
            if rundir.last_checkpoint(win).exists():
                (child / rundir.CHECKPOINTS).mkdir(exist_ok=True)
                shutil.copyfile(rundir.last_checkpoint(win), rundir.last_checkpoint(child))
                with recorder.Recorder(child) as rec:
                    rec.copy_metrics(win)
                start = Rewind(_step_of(rundir.last_checkpoint(child)), where.source,
                               where.note + f", then its best trial's {proof.trial_steps} steps")
            for t in (child / "trials").glob("lr-*"):  # the curves stay (remedy.json); the weights go
                shutil.rmtree(t / rundir.CHECKPOINTS, ignore_errors=True)
        else:
            _prepare(child, cfg, where, run_dir)
    except BaseException:
        shutil.rmtree(child, ignore_errors=True)
        raise
    said = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in changes.items())
    message = f"child of {run_dir.name} for {rule}: {said}, {start.note}"
    if proof is not None:
        message += f" (seven stars downward: {trial_summary(proof)})"
    record = {"parent": str(run_dir), "reason": rule, "finding": finding, "set": changes, "from_step": where.step,
              "start_step": start.step, "start": start.note, "trial": proof.to_json() if proof else None}
    (child / REMEDY_JSON).write_text(json.dumps(record, indent=1, allow_nan=True), encoding="utf-8")
    recorder.append(child, Lineage(message, parent=record["parent"], reason=rule,
                                   details={k: v for k, v in record.items() if k not in ("parent", "reason")}))
    _close(run_dir, finding, "applied", f"{rule} applied: child {child.name}")
    return child


def trial_summary(proof: TrialRun) -> str:
    parts = []
    for t in proof.trials:
        s = f"{t.score:.3f}" if t.status == "done" else t.status
        parts.append(f"{t.value:g}: {s}{' ★' if t.value == proof.best else ''}")
    return f"{proof.trial_steps} steps each from step {proof.from_step}, held-out val loss " + ", ".join(parts)


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
    if LR in changes and all(C.is_live(k) for k in changes):
        total = _planned_steps(run_dir)
        steps = trial_steps or default_trial_steps(total)
        out["trial"] = {"values": trial_values(cfg.train.base_lr), "steps": max(1, min(steps, total - out["from_step"]))}
    return out


def has_checkpoint(run_dir: Path) -> bool:
    return rundir.last_checkpoint(run_dir).exists()
