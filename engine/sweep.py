"""七星连珠法, the "seven stars in a row" sweep: short trials at seven consecutive values of the half-decade grid.

The notes search lr (and loss_scale) on an exponential grid — 0.001 0.003 0.01 0.03 0.1 0.3 1 3 10 — with
short trials of equal budget, keep the best, and slide the window when the best sits at its edge.

A sweep is a study (engine.study): its own folder with one owner process, the control channel, and an Optuna
study holding the trials; each trial is an ordinary run folder ``trial-<value>/``. ``Sweep`` is the sweep as
the CLI, the TUI and the benchmarks see it: create or open one, run its owner here (``run``), read its table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as C
from . import rundir, runctl
from .events import Callback, null_callback
from .study import STUDY_JSON, Study, StudyError, StudySpec, check_key, is_study, list_studies, value_name
from .vocab import BRANCH_LOSSES

SWEEP_JSON = STUDY_JSON
STARS = 7
SweepError = StudyError


# --- the half-decade grid ----------------------------------------------------------------------

def grid_value(i: int) -> float:
    """The i-th value of the grid …, 0.1 (i=-2), 0.3 (-1), 1 (0), 3 (1), 10 (2), 30 (3), …"""
    k, odd = divmod(i, 2)
    return float(f"{(3.0 if odd else 1.0) * 10.0 ** k:.12g}")


def grid_index(value: float) -> int:
    """Index of the grid value nearest to ``value`` on a log scale (0.002 → 0.003's index)."""
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"a seven-stars sweep needs a positive start value, got {value!r}")
    guess = round(2 * math.log10(value))
    return min(range(guess - 2, guess + 3), key=lambda i: abs(math.log(value / grid_value(i))))


def window(start: float, n: int = STARS) -> list[float]:
    """``n`` consecutive grid values from ``start`` (snapped to the grid) upward."""
    i = grid_index(start)
    return [grid_value(i + j) for j in range(n)]


def slid_window(values: list[float], best: float) -> list[float] | None:
    """The next window when ``best`` sits at an edge of ``values`` (centred on it), else None."""
    if not values or best not in (values[0], values[-1]) or len(values) < 2:
        return None
    n = len(values)
    return [grid_value(grid_index(best) - n // 2 + j) for j in range(n)]


# --- results -----------------------------------------------------------------------------------

@dataclass
class TrialResult:
    value: float
    status: str = "pending"  # pending, running, paused, stopped, finished, failed
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


_STATE = {"WAITING": "pending", "COMPLETE": "finished", "FAIL": "failed", "PRUNED": "failed"}


def rows(study: Study) -> list[TrialResult]:
    """Every trial of ``study``, by value: Optuna's state and scores, a live trial's step from its run folder."""
    out = []
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
                r.steps = max(r.steps, st.step)
            else:
                r.steps = max(r.steps, summarize_trial(Path(run_dir))["steps"])
        out.append(r)
    return sorted(out, key=lambda r: r.value)


def best_row(results: list[TrialResult]) -> TrialResult | None:
    done = [r for r in results if r.status in ("finished", "failed")]
    if not done or max(r.score() for r in done) < 0:
        return None
    return max(done, key=lambda r: (r.score(), -(r.raw_loss if r.raw_loss is not None else math.inf)))


def next_window_of(results: list[TrialResult]) -> list[float] | None:
    """The slid window when every trial is done and the best sits at an edge of the values (None otherwise)."""
    b = best_row(results)
    if b is None or not all(r.status in ("finished", "failed") for r in results) or len(results) < 2:
        return None
    return slid_window([r.value for r in results], b.value)


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

    def trial_dir(self, value: float) -> Path:
        return self.dir / f"trial-{value_name(value)}"

    # --- running: this process as the study's owner -------------------------------------------------------------
    def run(self, workers: int | None = None, devices: list[str] | None = None) -> str:
        """Own the study here until every trial has a result ("finished") or a stop ("stopped")."""
        from .study_owner import StudyOwner

        self._owner = StudyOwner(self.dir, workers, devices, self.callback)
        return self._owner.run()

    def stop(self) -> None:
        """Stop the sweep: every trial stops with a checkpoint (the owner here, or a live one elsewhere)."""
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
        return all(r.status in ("finished", "failed") for r in self.results)

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
        results = self.results
        b = best_row(results)
        return [{"value": r.value, "mAP": r.mAP, "AP50": r.AP50, "train_loss": r.train_loss, "raw_loss": r.raw_loss,
                 "status": r.status, "steps": r.steps, "seconds": r.seconds, "error": r.error, "device": r.device,
                 "number": r.number, "best": b is not None and r.value == b.value, "run_dir": r.run_dir}
                for r in results]


def load(sweep_dir: Path | str, callback: Callback = null_callback) -> Sweep:
    return Sweep(sweep_dir, callback=callback)


def is_sweep(path: Path) -> bool:
    return is_study(path)


def list_sweeps(root: Path | str = "runs") -> list[Path]:
    return list_studies(root)


# --- text renderings (CLI, TUI, journal) ---------------------------------------------------------

def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def text_chart(rows: list[dict[str, Any]], metric: str = "mAP", width: int = 48, height: int = 10) -> str:
    """metric vs value on a log axis, as plain text (one column per grid value, ★ the best, x a failed trial)."""
    pts = [(r["value"], r.get(metric)) for r in rows]
    ys = [y for _, y in pts if y is not None]
    if not pts:
        return "(no trials)"
    top = max(ys) if ys and max(ys) > 0 else 1.0
    n = len(pts)
    names = [value_name(v) for v, _ in pts]
    col = max(3, min(8, width // max(n, 1)), max(map(len, names)) + 1)  # a space between the value labels
    grid = [[" "] * (n * col) for _ in range(height)]
    for j, (r, (_, y)) in enumerate(zip(rows, pts)):
        x = j * col + col // 2
        if y is None:
            grid[height - 1][x] = "x" if r.get("status") == "failed" else "·"
            continue
        h = int(round((height - 1) * max(y, 0) / top))
        for k in range(h):
            grid[height - 1 - k][x] = "│"
        grid[height - 1 - h][x] = "★" if r.get("best") else "●"
    label_w = 7
    lines = []
    for i, row in enumerate(grid):
        label = f"{top * (height - 1 - i) / (height - 1):.3f}" if i in (0, height // 2, height - 1) else ""
        lines.append(f"{label:>{label_w}} ┤" + "".join(row))
    lines.append(" " * label_w + " └" + "─" * (n * col))
    lines.append(" " * (label_w + 2) + "".join(f"{name:^{col}}" for name in names))
    lines.append(" " * (label_w + 2) + f"{metric} vs value (log axis: one column per half-decade)")
    return "\n".join(lines)


def summary_line(sweep: Sweep) -> str:
    """The notes' record style: "train.base_lr seven stars 0.0001…0.1 (40 steps): best 0.01 mAP 0.21; …"."""
    budget = f"{sweep.trial_steps} steps" if sweep.trial_steps else f"{sweep.trial_minutes:g} min"
    parts = []
    for r in sweep.results:
        s = _fmt(r.mAP) if r.status == "finished" else r.status
        parts.append(f"{value_name(r.value)}: {s}")
    b = sweep.best()
    head = (f"{sweep.key} seven stars {value_name(sweep.values[0])}…{value_name(sweep.values[-1])} "
            f"({budget} each, {sweep.cfg.eval.val_data_mode})")
    best = f"best {value_name(b.value)} mAP {_fmt(b.mAP)}" if b else "no finished trial"
    edge = " — best at the window's edge: slide" if sweep.at_edge() else ""
    return f"{head}: {best}{edge} ({'; '.join(parts)})"


def render_journal(sweep: Sweep) -> str:
    lines = [f"# {sweep.dir.name}", "", f"- seven stars (七星连珠法) over `{sweep.key}`, preset "
             f"`{sweep.cfg.preset or '(none)'}`, status {sweep.status}", f"- {summary_line(sweep)}", "",
             "| value | mAP | AP50 | train loss | status |", "|---|---|---|---|---|"]
    for r in sweep.table():
        star = " ★" if r["best"] else ""
        lines.append(f"| {value_name(r['value'])}{star} | {_fmt(r['mAP'])} | {_fmt(r['AP50'])} | "
                     f"{_fmt(r['train_loss'])} | {r['status']}{' ' + r['error'] if r['error'] else ''} |")
    if sweep.at_edge():
        nxt = sweep.next_window()
        lines += ["", f"The best sits at the window's edge: slide to {', '.join(value_name(v) for v in nxt)}."]
    lines += ["", "```", text_chart(sweep.table()), "```", ""]
    return "\n".join(lines)


def write_journal(sweep_dir: Path) -> Path:
    sweep = load(sweep_dir)
    path = Path(sweep_dir) / rundir.JOURNAL
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_journal(sweep), encoding="utf-8")
    tmp.replace(path)
    return path
