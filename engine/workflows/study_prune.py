"""A study trial that cannot change the answer stops half-way: scored at each ``StudySpec.prune_epoch``-th epoch,
a trial below ``PRUNE_RATIO`` × the best figure another trial had at the same step cannot become the best by its
end — it stops there, "pruned", and its time goes back to the caller (the autopilot's final run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..run import rundir

# Half-way figures far apart stay apart: in the autopilot's rounds the trials that ended below half the best were
# that far behind from the middle on (lr 0.0001: 0.26 vs 0.54; L1 0.28 vs 0.60; width 48 at equal time 0.26 vs 0.60).
PRUNE_RATIO = 0.5
MIN_REFERENCE = 0.05  # below this held-out mAP a figure is noise: nothing is cut against it


def hopeless(score: float, references: list[float], ratio: float = PRUNE_RATIO) -> bool:
    """``score`` below ``ratio`` × the best reference (a best under ``MIN_REFERENCE`` cuts nothing)."""
    best = max(references, default=0.0)
    return best >= MIN_REFERENCE and score < ratio * best


def score_at(run_dir: Path | str, step: int) -> float | None:
    """The held-out mAP a trial's run folder logged at ``step`` (None: it was not scored there)."""
    path = Path(run_dir)
    if not (path / rundir.METRICS).is_file():
        return None
    found = [m.get("mAP") for m in rundir.read_metrics(path) if m.get("split") == "val" and m.get("step") == step]
    return float(found[-1]) if found and isinstance(found[-1], (int, float)) else None


def pruner(study: Any, trial: Any, box: dict[str, Any]) -> Callable[[Any], str | None]:
    """``train_trial``'s cut_on_eval for ``trial`` of ``study`` (engine.workflows.study.Study); ``box["trainer"]``
    is the trial's trainer once it exists. It cuts against the study's finished trials (one still running may yet
    fail) and its ``prune_refs``; its last evaluation never cuts (the trial is done then). The reason is stored on
    the trial before the stop, so a trial killed right after its cut is not trained on when handed out again."""
    def cut(e) -> str | None:
        trainer = box.get("trainer")
        if trainer is None or trainer.step >= trainer.total_steps:
            return None
        try:
            others = [t.user_attrs.get("run_dir") for t in study.trials()
                      if t.number != trial.number and t.state.name == "COMPLETE"]
            refs = [x for x in (score_at(r, e.step) for r in others + list(study.spec.prune_refs) if r)
                    if x is not None]
            if not hopeless(e.mAP, refs):
                return None
            reason = (f"pruned at step {e.step}: held-out mAP {e.mAP:.4f}, below {PRUNE_RATIO:g} × the best at that "
                      f"step ({max(refs):.4f}); it cannot become the best")
            study.mark(trial, cut=reason)
            return reason
        except Exception:  # noqa: BLE001 - a storage or file hiccup must not end the trial's events: no cut
            return None
    return cut
