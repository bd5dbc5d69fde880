"""七星连珠法, the "seven stars in a row" sweep: short trials at seven consecutive values of the half-decade grid.

The notes search lr (and loss_scale) on an exponential grid — 0.001 0.003 0.01 0.03 0.1 0.3 1 3 10 — with
short trials of equal budget, keep the best, and slide the window when the best sits at its edge.

A sweep folder groups the trials; each trial is an ordinary run directory (config.toml, metrics.jsonl,
events.jsonl, checkpoints/, journal.md) whose events record the sweep as its parent::

    runs/sweep-<key>-<time>/
      sweep.json        the state: key, values, budget, base config, one result per trial (atomic rewrite)
      base.toml         the config every trial starts from (the swept key aside)
      journal.md        the sweep's record: table, best, edge warning
      trial-<value>/    one run directory per value

A stopped sweep resumes: finished trials are skipped, a stopped trial resumes from its checkpoint.
``Sweep.stop()`` (any thread) stops the current trial at its next step boundary.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as C
from . import rundir
from .events import Callback, Event, null_callback
from .vocab import BRANCH_LOSSES

SWEEP_JSON = "sweep.json"
BASE = "base.toml"
STARS = 7
FOREVER = 1_000_000_000  # eval.interval that leaves only the trial's final evaluation


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


def value_name(value: float) -> str:
    return f"{value:g}"


# --- results -----------------------------------------------------------------------------------

@dataclass
class TrialResult:
    value: float
    status: str = "pending"  # pending, running, stopped, finished, failed
    run_dir: str = ""
    mAP: float | None = None
    AP50: float | None = None
    train_loss: float | None = None  # last logged (weighted) train loss
    raw_loss: float | None = None  # last loss_map + loss_offset + loss_shape
    steps: int = 0
    seconds: float = 0.0
    error: str = ""

    def score(self) -> float:
        """What "best" ranks: mAP, a failed trial (diverged) counts as 0."""
        return self.mAP if (self.status == "finished" and self.mAP is not None) else -1.0


@dataclass(frozen=True)
class SweepProgress(Event):
    """A sweep's own progress (trial started / done, sweep done / stopped); the trials' own events pass too."""
    kind = "sweep"
    what: str
    index: int
    value: float
    total: int
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


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


# --- the sweep ---------------------------------------------------------------------------------

class SweepError(ValueError):
    pass


def check_key(cfg: C.Config, key: str) -> None:
    flat = C.flatten(cfg)
    if key not in flat:
        raise SweepError(f"{key}: unknown key; a sweep takes a numeric dotted key such as train.base_lr or "
                         "loss.loss_scale")
    v = flat[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SweepError(f"{key} = {v!r} is not numeric; a seven-stars sweep needs a numeric key")


class Sweep:
    """Seven short trials of ``key`` on the half-decade grid, each an ordinary run in ``sweep_dir``.

    Budget: ``trial_steps`` (each trial's train.max_steps, so its lr schedule fits the trial) or
    ``trial_minutes`` (each trial planned like the base config and stopped after that wall time, then
    evaluated). Trials evaluate once, at their end, with the config's eval.val_data_mode.
    """

    def __init__(self, sweep_dir: Path | str, cfg: C.Config | None = None, key: str = "",
                 values: list[float] | None = None, trial_steps: int | None = None,
                 trial_minutes: float | None = None, callback: Callback = null_callback):
        self.dir = Path(sweep_dir)
        self.callback = callback
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.trainer = None
        state_path = self.dir / SWEEP_JSON
        if state_path.exists():  # resume
            self._load()
            return
        if cfg is None or not key or not values:
            raise SweepError(f"{self.dir}: no {SWEEP_JSON} here; a new sweep needs a config, a key and values")
        check_key(cfg, key)
        if (trial_steps is None) == (trial_minutes is None):
            raise SweepError("give exactly one trial budget: trial_steps or trial_minutes")
        if trial_steps is not None and trial_steps < 1:
            raise SweepError(f"trial_steps = {trial_steps}: need at least 1 step")
        if trial_minutes is not None and not trial_minutes > 0:
            raise SweepError(f"trial_minutes = {trial_minutes}: need a positive duration")
        for v in values:  # refuse values the key does not accept before any trial starts
            C.with_updates(cfg, {key: v}, f"sweep {key}")
        self.cfg, self.key = cfg, key
        self.values = [float(v) for v in values]
        self.trial_steps, self.trial_minutes = trial_steps, trial_minutes
        self.status = "new"
        self.created = time.time()
        self.results = [TrialResult(v, run_dir=str(self.trial_dir(v))) for v in self.values]
        self.dir.mkdir(parents=True, exist_ok=True)
        C.save(cfg, self.dir / BASE)
        self._save()

    # --- construction helpers ------------------------------------------------------------------
    @classmethod
    def new(cls, cfg: C.Config, key: str, start: float, root: Path | str = "runs", trial_steps: int | None = None,
            trial_minutes: float | None = None, callback: Callback = null_callback, n: int = STARS) -> "Sweep":
        """A fresh sweep of ``n`` grid values from ``start`` in runs/sweep-<key>-<time>/."""
        check_key(cfg, key)
        name = f"sweep-{key}-{time.strftime('%Y%m%d-%H%M%S')}"
        return cls(rundir.new_run_dir(Path(root), name), cfg, key, window(start, n), trial_steps, trial_minutes,
                   callback)

    def trial_dir(self, value: float) -> Path:
        return self.dir / f"trial-{value_name(value)}"

    def trial_config(self, value: float) -> C.Config:
        updates: dict[str, Any] = {self.key: value, "eval.interval": FOREVER}
        if self.trial_steps is not None:
            updates["train.max_steps"] = self.trial_steps
        return C.with_updates(self.cfg, updates, f"sweep trial {self.key}={value_name(value)}")

    # --- state ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "key": self.key, "values": self.values, "trial_steps": self.trial_steps,
                "trial_minutes": self.trial_minutes, "status": self.status, "created": self.created,
                "val_data_mode": self.cfg.eval.val_data_mode, "preset": self.cfg.preset,
                "config": self.cfg.model_dump(mode="json"),
                "results": [r.__dict__ for r in self.results], "best": self.best_value(),
                "edge": self.at_edge(), "next_window": self.next_window()}

    def _save(self) -> None:
        path = self.dir / SWEEP_JSON
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _load(self) -> None:
        data = json.loads((self.dir / SWEEP_JSON).read_text(encoding="utf-8"))
        self.cfg = C.validate(data["config"], str(self.dir / SWEEP_JSON))
        self.key, self.values = data["key"], [float(v) for v in data["values"]]
        self.trial_steps, self.trial_minutes = data.get("trial_steps"), data.get("trial_minutes")
        self.status, self.created = data.get("status", "stopped"), data.get("created", 0.0)
        self.results = [TrialResult(**r) for r in data["results"]]

    # --- commands ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the sweep: the current trial stops (with a checkpoint) at its next step boundary."""
        self._stop.set()
        with self._lock:
            if self.trainer is not None:
                self.trainer.request_stop()

    @property
    def done(self) -> bool:
        return all(r.status in ("finished", "failed") for r in self.results)

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> str:
        """Run (or resume) every unfinished trial in order. Returns "finished" or "stopped"."""
        self.status = "running"
        self._save()
        n = len(self.results)
        for i, res in enumerate(self.results):
            if res.status in ("finished", "failed"):
                continue
            if self._stop.is_set():
                break
            self._emit(SweepProgress("trial_started", i, res.value, n, f"{self.key} = {value_name(res.value)}"))
            self._run_trial(res)
            self._save()
            self._emit(SweepProgress("trial_done", i, res.value, n, f"{self.key} = {value_name(res.value)}: "
                                     f"{res.status}", dict(res.__dict__)))
            if res.status == "stopped":
                break
        self.status = "finished" if self.done else "stopped"
        self._save()
        write_journal(self.dir)
        best = self.best_value()
        msg = (f"best {self.key} = {value_name(best)}" if best is not None else "no finished trial")
        if self.at_edge():
            msg += f"; it sits at the window's edge: slide to {value_name(self.next_window()[0])}…" \
                   f"{value_name(self.next_window()[-1])}"
        self._emit(SweepProgress("sweep_" + self.status, -1, best or 0.0, n, msg))
        return self.status

    def _emit(self, event: Event) -> None:
        try:
            self.callback(event)
        except Exception:  # noqa: BLE001 - a listener must never break the sweep
            pass

    def _run_trial(self, res: TrialResult) -> None:
        from .trainer import Trainer

        run_dir = Path(res.run_dir)
        budget_s = None if self.trial_minutes is None else self.trial_minutes * 60
        resuming = rundir.last_checkpoint(run_dir).exists() and res.status in ("stopped", "running")
        if resuming:
            trainer = Trainer.resume(run_dir, self._forward)
        else:
            cfg = self.trial_config(res.value)
            run_dir.mkdir(parents=True, exist_ok=True)
            for name in (rundir.METRICS, rundir.EVENTS):  # a trial that died before its first checkpoint
                (run_dir / name).unlink(missing_ok=True)
            rundir.JsonlWriter(run_dir / rundir.EVENTS).write(
                {"kind": "log", "level": "info", "time": time.time(), "parent": str(self.dir),
                 "reason": "sweep", "sweep_key": self.key, "sweep_value": res.value,
                 "message": f"trial {self.key} = {value_name(res.value)} of sweep {self.dir.name}"})
            trainer = Trainer(cfg, run_dir, self._forward)
        t0 = time.perf_counter()
        used = res.seconds if resuming else 0.0
        timed_out = threading.Event()
        if budget_s is not None:
            def watch(event, _trainer=trainer):
                if event.kind == "step" and used + time.perf_counter() - t0 >= budget_s and not timed_out.is_set():
                    timed_out.set()
                    _trainer.request_stop()
            trainer.callback = _chain(self._forward, watch)
        with self._lock:
            self.trainer = trainer
            if self._stop.is_set():
                trainer.request_stop()
        res.status = "running"
        self._save()
        try:
            state = trainer.run()
        finally:
            with self._lock:
                self.trainer = None
        res.seconds = used + time.perf_counter() - t0
        if state == "stopped" and timed_out.is_set() and not self._stop.is_set():
            self._final_eval(run_dir)  # the time budget ran out: evaluate where it stopped
            state = "finished"
        res.status = state if state in ("finished", "failed", "stopped") else "stopped"
        if state == "failed":
            err = [e for e in rundir.read_events(run_dir) if e.get("kind") == "error"]
            res.error = err[-1].get("error", "") if err else "failed"
        res.__dict__.update(summarize_trial(run_dir))

    def _forward(self, event: Event) -> None:
        self._emit(event)

    def _final_eval(self, run_dir: Path) -> None:
        """Evaluate a time-budgeted trial's last checkpoint (EMA weights) and log it as its eval line."""
        from .evaluate_run import evaluate_run
        from . import journal

        m = evaluate_run(run_dir, "last")
        steps = summarize_trial(run_dir)["steps"]
        line = {"kind": "eval", "step": steps, "epoch": -1, "time": time.time(), "split": "val",
                "mode": m.get("mode"), "images": int(m.get("images", 0)), "online_mAP": None, "online_AP50": None,
                **{k: float(m[k]) for k in ("mAP", "AP50", "AP75", "APs", "APm", "APl", "loss", "loss_map",
                                              "loss_offset", "loss_shape")}}
        w = rundir.JsonlWriter(run_dir / rundir.METRICS)
        w.write(line)
        w.close()
        journal.write(run_dir)

    # --- results -------------------------------------------------------------------------------
    def best(self) -> TrialResult | None:
        done = [r for r in self.results if r.status in ("finished", "failed")]
        if not done or max(r.score() for r in done) < 0:
            return None
        return max(done, key=lambda r: (r.score(), -(r.raw_loss if r.raw_loss is not None else math.inf)))

    def best_value(self) -> float | None:
        b = self.best()
        return b.value if b else None

    def at_edge(self) -> bool:
        b = self.best_value()
        return b is not None and self.done and len(self.values) > 1 and b in (self.values[0], self.values[-1])

    def next_window(self) -> list[float] | None:
        """The slid window when the best sits at an edge (None otherwise)."""
        b = self.best_value()
        return slid_window(self.values, b) if (b is not None and self.at_edge()) else None

    def slide(self, root: Path | str | None = None) -> "Sweep":
        """A new sweep over the slid window, same key and budget (trials already measured are run again)."""
        nxt = self.next_window()
        if nxt is None:
            raise SweepError("the best value is not at the window's edge; nothing to slide")
        name = f"sweep-{self.key}-{time.strftime('%Y%m%d-%H%M%S')}"
        return Sweep(rundir.new_run_dir(Path(root) if root else self.dir.parent, name), self.cfg, self.key, nxt,
                     self.trial_steps, self.trial_minutes, self.callback)

    def apply_best(self, cfg: C.Config | None = None) -> C.Config:
        """``cfg`` (default: the sweep's base config) with the key set to the best value."""
        b = self.best_value()
        if b is None:
            raise SweepError("no finished trial yet: nothing to apply")
        value: Any = int(b) if isinstance(C.flatten(self.cfg)[self.key], int) and b == int(b) else b
        return C.with_updates(cfg or self.cfg, {self.key: value}, f"sweep best {self.key}")

    def table(self) -> list[dict[str, Any]]:
        """Rows: value, mAP, AP50, final train loss, status, best (bool)."""
        b = self.best_value()
        return [{"value": r.value, "mAP": r.mAP, "AP50": r.AP50, "train_loss": r.train_loss, "raw_loss": r.raw_loss,
                 "status": r.status, "steps": r.steps, "seconds": r.seconds, "error": r.error,
                 "best": b is not None and r.value == b, "run_dir": r.run_dir} for r in self.results]


def _chain(*fns):
    def call(event):
        for fn in fns:
            fn(event)
    return call


def load(sweep_dir: Path | str, callback: Callback = null_callback) -> Sweep:
    return Sweep(sweep_dir, callback=callback)


def is_sweep(path: Path) -> bool:
    return (Path(path) / SWEEP_JSON).is_file()


def list_sweeps(root: Path | str = "runs") -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_sweep(p)), key=lambda p: p.stat().st_mtime, reverse=True)


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
