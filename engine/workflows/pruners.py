"""The notes' cut of a short lr trial as an Optuna pruner: a trial whose running raw loss climbs far above its start
cannot work at that lr (used by engine.workflows.remedy's seven stars downward)."""

from __future__ import annotations

import optuna

from ..diagnosis.rulebook import median


def blew_up(losses: list[float], ratio: float) -> bool:
    """The median of the last three losses above ``ratio`` × the first."""
    return len(losses) >= 3 and median(losses[-3:]) > ratio * losses[0]


class BlowUpPruner(optuna.pruners.BasePruner):
    def __init__(self, ratio: float):
        self.ratio = ratio

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return blew_up([v for _, v in sorted(trial.intermediate_values.items())], self.ratio)
