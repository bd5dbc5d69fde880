"""The lr remedy's proof, the notes' seven stars (七星连珠法) run downward from the current lr: from the rewind
checkpoint, each value down the half-decade grid trains a short trial, cut at once when its loss blows up, scored
by the raw val loss of its online weights; the descent stops after PATIENCE trials in a row worse than the best.
A best-scored value next to a diverging one is backed off a grid step (EDGE, BACKOFF): short trials favour large lrs."""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from ..run import recorder, rundir
from ..diagnosis.rulebook import BRANCHES, finite, lower_lr, median, raw_loss
from ..run.job import Job
from .study import param_distribution
from .trial import train_trial
from .rewind import RemedyStopped, Rewind

LR = "train.base_lr"
STARS = 7  # values tried at most (the seven stars)
BLOWUP = 1.5  # a trial whose running raw loss exceeds this × its first value is cut: that lr cannot work
TIE = 0.02  # trial scores within 2 % of the best: the larger lr wins (it goes on learning faster)
PATIENCE = 2  # trials in a row worse than the best before the descent stops
# The best-scored value at the edge of divergence — the value above it blew up or scored more than EDGE × its
# score — is backed off BACKOFF grid steps (the lr range test's rule: the lowest short-trial loss sits next to the
# divergence point, and a trial a tenth of the run long does not see the later instability). Measured on BCCD
# (bench/remedy.py --bccd, lr x100/x300 of 0.001, 140-step runs): 14-step trials scored 0.003 best on every seed
# (held-out loss 3.6 vs 4.6 for 0.001; 0.01 scored 18-83), while from the same start 0.003 ended at held-out loss
# 1.6-1.7 against 1.42 for 0.001 (crossing near step 50) and its children reached 0.55-1.36 of the healthy run.
# Where the value above did not diverge (the synthetic set at lr x10: 0.01 best, the faulty 0.03 itself learning
# well) the best is kept: backing off there cost half the children their 0.8.
EDGE = 2.0
BACKOFF = 1
FOREVER = 1_000_000_000  # eval.interval of a trial: no evaluation inside it


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
    best: float | None  # the best-scored value
    steps_used: int  # every step the trials trained (the applied value's are kept by the child)
    applied: float | None = None  # the value the remedy applies: ``best``, or below it at the edge (backed_off)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_trial_steps(total_steps: int) -> int:
    """A tenth of the run, at least 10 steps, at most 300 (a few hundred steps on a real run). Longer trials rank
    better but cost the run: on bench/remedy.py's 120-step runs 30-step trials took the children past 2× the healthy
    run's steps; held-out scoring is what keeps short trials from favouring large lrs."""
    return int(max(10, min(300, round(total_steps / 10))))


def trial_length(parent: Path, from_step: int, steps: int | None = None) -> int:
    """Steps of each remedy trial from ``from_step``: ``steps`` or the default, never past the parent's planned end."""
    total = planned_steps(parent)
    return max(1, min(steps or default_trial_steps(total), total - from_step))


def trial_values(current: float, n: int = STARS) -> list[float]:
    out, v = [], current
    for _ in range(n):
        v = lower_lr(v)
        out.append(v)
    return out


def planned_steps(run_dir: Path) -> int:
    for m in reversed(rundir.read_metrics(run_dir)):
        if m.get("split") == "train" and m.get("total_steps"):
            return int(m["total_steps"])
    cfg = C.load(run_dir / rundir.CONFIG)
    return cfg.train.max_steps or cfg.train.epochs * 10


def prepare_run(path: Path, cfg: C.Config, rewind: Rewind, parent: Path) -> None:
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
    prepare_run(path, tcfg, rewind, parent)
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
    steps = trial_length(parent, rewind.step, steps)
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
    return TrialRun(LR, rewind.step, steps, trials, best.value if best else None, sum(t.steps for t in trials),
                    backed_off(trials, best))


def backed_off(trials: list[Trial], best: Trial | None) -> float | None:
    """``best``'s value, or BACKOFF trials further down the descent when ``best`` is at the edge of divergence (the
    trial above it blew up or scored more than EDGE × its score) and each trial down to it finished."""
    if best is None:
        return None
    i = trials.index(best)
    above = trials[i - 1] if i > 0 else None
    edge = above is not None and (above.status == "blew-up" or
                                  (above.status == "done" and above.score > EDGE * best.score))
    if not edge:
        return best.value
    below = trials[i + 1:i + 1 + BACKOFF]
    if len(below) == BACKOFF and all(t.status == "done" for t in below):
        return below[-1].value
    return best.value


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
