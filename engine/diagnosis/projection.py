"""训练时长要求 the training-time budget: a full run must take < budget.max_days (4 days in the notes).

From the measured throughput in metrics.jsonl, project the full run's duration at every evaluation.
The projection reads the same window and the same seconds-per-step estimate as the over-time-budget
rule (engine.diagnosis.rules): both replay the lines through engine.diagnosis.rulebook.History, and ``over`` *is* the
rule's verdict (the rule itself is called), so the view and the finding never disagree. Beside the
rule's lower bound (train steps only) the projection also adds the measured evaluation time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from .. import config as C
from ..run import rundir
from .rulebook import History, finite, median


@dataclass
class Projection:
    step: int
    total_steps: int
    seconds_per_step: float | None  # the rule's estimate: median over consecutive train lines
    projected_days: float | None  # total_steps × seconds_per_step (the rule's lower bound)
    projected_days_with_evals: float | None  # … + planned evaluations × median evaluation time
    eval_seconds: float | None
    evals_planned: int
    elapsed_days: float | None
    max_days: float
    over: bool  # the over-time-budget rule fired on the same history
    finding: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        if self.projected_days is None:
            return f"step {self.step}: not enough steps measured yet to project the run"
        tag = "OVER" if self.over else "within"
        return (f"step {self.step}/{self.total_steps}: {self.seconds_per_step:.3g} s/step → "
                f"{self.projected_days:.3g} days ({self.projected_days_with_evals:.3g} with evals), {tag} the "
                f"budget of {self.max_days:g} days")


def seconds_per_step(h: History) -> float | None:
    """The over-time-budget rule's estimate over the history's recent train lines."""
    lines = [m for m in h.train if finite(m.get("time"))]
    rates = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(lines, lines[1:])
             if b["step"] > a["step"] and b["time"] >= a["time"]]
    return median(rates)


def _project(cfg: C.Config, h: History, eval_times: list[float], first_time: float | None) -> Projection:
    from .rules import RULES

    last = h.last_train or {}
    total = int(last.get("total_steps") or cfg.train.max_steps or 0)
    enough = len([m for m in h.train if finite(m.get("time"))]) >= cfg.diagnose.budget_min_lines
    sps = seconds_per_step(h) if enough else None
    days = total * sps / 86400 if (sps and total) else None
    ev = median(eval_times) if eval_times else None
    steps_per_epoch = None
    if total and cfg.train.epochs and not cfg.train.max_steps:
        steps_per_epoch = total / cfg.train.epochs
    evals = max(1, cfg.train.epochs // cfg.eval.interval) if steps_per_epoch else max(1, len(eval_times))
    with_evals = days + evals * ev / 86400 if (days is not None and ev is not None) else days
    finding = RULES["over-time-budget"].fn(cfg, h, {})
    elapsed = (last["time"] - first_time) / 86400 if (first_time is not None and finite(last.get("time"))) else None
    return Projection(h.last_step, total, sps, days, with_evals, ev, evals, elapsed, cfg.budget.max_days,
                      finding is not None, finding.to_json() if finding else None)


def projections(lines: Iterable[dict[str, Any]], cfg: C.Config) -> list[Projection]:
    """One projection at every evaluation (and one at the end, if train lines follow the last eval)."""
    h = History.for_config(cfg)
    out: list[Projection] = []
    eval_times: list[float] = []
    first_time = None
    prev_train_time = None
    pending = False
    for line in lines:
        split = line.get("split")
        h.add(line)
        if split == "train":
            if first_time is None and finite(line.get("time")):
                first_time = line["time"]
            prev_train_time = line.get("time")
            pending = True
        elif split == "val":
            if finite(line.get("time")) and finite(prev_train_time) and line["time"] >= prev_train_time:
                eval_times.append(line["time"] - prev_train_time)
            out.append(_project(cfg, h, eval_times, first_time))
            pending = False
    if pending:
        out.append(_project(cfg, h, eval_times, first_time))
    return out


def project_run(run_dir: Path | str, cfg: C.Config | None = None) -> list[Projection]:
    """Projections of a run directory (its config.toml unless ``cfg`` is given)."""
    run_dir = Path(run_dir)
    cfg = cfg or C.load(run_dir / rundir.CONFIG)
    return projections(rundir.read_metrics(run_dir), cfg)


def latest(run_dir: Path | str, cfg: C.Config | None = None) -> Projection | None:
    """The newest projection of a run (what the TUI shows against budget.max_days)."""
    p = project_run(run_dir, cfg)
    return p[-1] if p else None
