"""七星连珠法, the "seven stars in a row" sweep: short trials at seven consecutive values of the half-decade grid.

The notes search lr (and loss_scale) on an exponential grid — 0.001 0.003 0.01 0.03 0.1 0.3 1 3 10 — with
short trials of equal budget, keep the best, and slide the window when the best sits at its edge.

A sweep is a study (engine.workflows.study): its own folder with one owner process, the control channel, and an Optuna
study holding the trials; each trial is an ordinary run folder ``trial-<value>/``. ``Sweep`` is the sweep as
the CLI, the TUI and the benchmarks see it: create or open one, run its owner here (``run``), read its table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import config as C
from ..run import rundir, runctl
from ..run.events import Callback, null_callback
from ..grid import STARS, grid_index, grid_value, slid_window, window  # noqa: F401 - the sweep's vocabulary
from .study import STUDY_JSON, Study, StudyError, StudySpec, check_key, is_study, list_studies, value_name  # noqa: F401
from .study_results import DONE, TrialResult, best_row, next_window_of, rows, summarize_trial, table  # noqa: F401
from .sweep_report import render_journal, summary_line, text_chart, write_journal  # noqa: F401

SWEEP_JSON = STUDY_JSON
SweepError = StudyError


# --- the sweep ---------------------------------------------------------------------------------

class Sweep:
    """Seven short trials of ``key`` on the half-decade grid, a study in ``sweep_dir``.

    Budget: ``trial_steps`` (each trial's train.max_steps, so its lr schedule fits the trial) or
    ``trial_minutes`` (each trial planned to end in that wall time: train.time_budget_min). Trials evaluate
    once, at their end, with the config's eval.val_data_mode. ``storage``: "" keeps Optuna's journal file in the
    folder; a database URL lets workers on other machines share the study.
    """

    def __init__(self, sweep_dir: Path | str, cfg: C.Config | None = None, key: str = "",
                 values: list[float] | None = None, trial_steps: int | None = None,
                 trial_minutes: float | None = None, callback: Callback = null_callback, storage: str = "",
                 slides: int = 0, workers: int = 1, devices: list[str] | None = None):
        self.dir = Path(sweep_dir)
        self.callback = callback
        self._owner = None
        self._stop_asked = False
        if is_study(self.dir):
            self.study = Study.open(self.dir)
            return
        if cfg is None or not key or not values:
            raise SweepError(f"{self.dir}: no {STUDY_JSON} here; a new sweep needs a config, a key and values")
        check_key(cfg, key)
        spec = StudySpec("sweep", key, [float(v) for v in values], trial_steps, trial_minutes,
                         name=self.dir.name, config=cfg.model_dump(mode="json"), storage=storage, slides=slides,
                         workers=workers, devices=list(devices or []))
        self.study = Study.create(self.dir, spec)

    @classmethod
    def new(cls, cfg: C.Config, key: str, start: float, root: Path | str = "runs", trial_steps: int | None = None,
            trial_minutes: float | None = None, callback: Callback = null_callback, n: int = STARS,
            **kw: Any) -> "Sweep":
        """A fresh sweep of ``n`` grid values from ``start`` in runs/sweep-<key's leaf>-<time>/."""
        check_key(cfg, key)
        name = f"sweep-{key.rsplit('.', 1)[-1]}-{time.strftime('%m%d-%H%M%S')}"  # fits the Runs tab's column
        return cls(rundir.new_run_dir(Path(root), name), cfg, key, window(start, n), trial_steps, trial_minutes,
                   callback, **kw)

    # --- the spec ----------------------------------------------------------------------------------------------
    @property
    def spec(self) -> StudySpec:
        return self.study.spec

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.results]

    @property
    def cfg(self) -> C.Config:
        return self.spec.cfg

    @property
    def trial_steps(self) -> int | None:
        return self.spec.trial_steps

    @property
    def trial_minutes(self) -> float | None:
        return self.spec.trial_minutes

    @property
    def status(self) -> str:
        return runctl.status(self.dir).state.value

    # --- running: this process as the study's owner -------------------------------------------------------------
    def run(self, workers: int | None = None, devices: list[str] | None = None) -> str:
        """Own the study here until every trial has a result ("finished") or a stop ("stopped")."""
        from .study_owner import StudyOwner

        self._owner = StudyOwner(self.dir, workers, devices, self.callback)
        if self._stop_asked:  # stop() came before the owner existed
            self._owner.request_stop()
        return self._owner.run()

    def stop(self) -> None:
        """Stop the sweep: every trial stops with a checkpoint (the owner here, or a live one elsewhere)."""
        self._stop_asked = True
        if self._owner is not None:
            self._owner.request_stop()
        elif runctl.status(self.dir).alive:
            runctl.send(self.dir, runctl.Op.STOP, sender=runctl.sender_name("sweep"))

    # --- results -------------------------------------------------------------------------------
    @property
    def results(self) -> list[TrialResult]:
        return rows(self.study)

    @property
    def done(self) -> bool:
        return all(r.status in DONE for r in self.results)

    def best(self) -> TrialResult | None:
        return best_row(self.results)

    def best_value(self) -> float | None:
        b = self.best()
        return b.value if b else None

    def at_edge(self) -> bool:
        return self.next_window() is not None

    def next_window(self) -> list[float] | None:
        """The slid window when the best sits at an edge (None otherwise)."""
        return next_window_of(self.results)

    def slide(self, root: Path | str | None = None) -> "Sweep":
        """A new sweep over the slid window, same key and budget (trials already measured are run again)."""
        nxt = self.next_window()
        if nxt is None:
            raise SweepError("the best value is not at the window's edge; nothing to slide")
        spec = self.spec
        name = f"sweep-{spec.key.rsplit('.', 1)[-1]}-{time.strftime('%m%d-%H%M%S')}"
        return Sweep(rundir.new_run_dir(Path(root) if root else self.dir.parent, name), spec.cfg, spec.key, nxt,
                     spec.trial_steps, spec.trial_minutes, self.callback, workers=spec.workers, devices=spec.devices)

    def apply_best(self, cfg: C.Config | None = None) -> C.Config:
        """``cfg`` (default: the sweep's base config) with the key set to the best value."""
        b = self.best_value()
        if b is None:
            raise SweepError("no finished trial yet: nothing to apply")
        value: Any = int(b) if isinstance(C.flatten(self.cfg)[self.key], int) and b == int(b) else b
        return C.with_updates(cfg or self.cfg, {self.key: value}, f"sweep best {self.key}")

    def table(self) -> list[dict[str, Any]]:
        """Rows: value, mAP, AP50, final train loss, status, steps, device, best (bool)."""
        return table(self.study)


def load(sweep_dir: Path | str, callback: Callback = null_callback) -> Sweep:
    return Sweep(sweep_dir, callback=callback)


def is_sweep(path: Path) -> bool:
    return is_study(path)


def list_sweeps(root: Path | str = "runs") -> list[Path]:
    return list_studies(root)
