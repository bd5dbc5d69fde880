"""The seven-stars sweep screen: key, start point, budget → seven trials, a table and a chart, apply the best.

A standalone Screen; mount it with ``app.push_screen(SweepScreen(cfg, runs_root))``. When the user
applies the best value it posts ``ConfigApplied`` (the app replaces its config) and calls ``on_apply``
if given. Torch loads only inside the worker thread (engine.trainer), never at import.

Keys: F5 start (or resume a stopped sweep), F6 stop, F7 / a apply the best, F8 / w slide the window
when the best sits at an edge, Escape close (stops a running sweep with a checkpoint).

The table follows the trials: the trial that trains shows ``running`` from the moment it starts (the
sweep's ``trial_started`` event, then its own status), and a status change made by the sweep's thread is
repainted on the next tick. F5 refuses while the app trains a run of its own (``app.run_active``): two
trainings side by side would share the CPU/GPU and slow both, and the trials' timings would mean nothing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from nanxi_tune.engine import config as C
from nanxi_tune.engine import sweep as S
from nanxi_tune.tui.config_form import OrderedInput as Input


class ConfigApplied(Message):
    """A workflow screen changed the config (sweep best, stats, autobatch, post-processing)."""

    def __init__(self, cfg: C.Config, source: str, updates: dict[str, Any]) -> None:
        super().__init__()
        self.cfg, self.source, self.updates = cfg, source, updates


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """"200" → 200 steps; "5m" / "5 min" → 5 minutes."""
    t = text.strip().lower().replace(" ", "")
    for suffix in ("minutes", "min", "m"):
        if t.endswith(suffix):
            minutes = float(t[: -len(suffix)])
            if minutes <= 0:
                raise ValueError("minutes must be positive")
            return None, minutes
    steps = int(t.removesuffix("steps"))
    if steps < 1:
        raise ValueError("need at least 1 step")
    return steps, None


class SweepScreen(Screen):
    BINDINGS = [
        Binding("f5", "start", "Start", tooltip="Start the sweep (or resume a stopped one)"),
        Binding("f6", "stop", "Stop", tooltip="Stop the current trial with a checkpoint"),
        Binding("f7", "apply", "Apply best", tooltip="Set the key to the best value in the config"),
        Binding("a", "apply", "Apply best", show=False),
        Binding("f8", "slide", "Slide window", tooltip="When the best sits at an edge: a new window around it"),
        Binding("w", "slide", "Slide", show=False),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, cfg: C.Config, runs_root: Path | str = "runs", key: str = "train.base_lr",
                 start: float | None = None, budget: str = "200", sweep_dir: Path | str | None = None,
                 on_apply: Callable[[C.Config], None] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.runs_root = Path(runs_root)
        self.key = key
        self.start_value = start if start is not None else (C.flatten(cfg).get(key) or 0.001)
        self.budget = budget
        self.on_apply = on_apply
        self.sweep: S.Sweep | None = S.load(sweep_dir) if sweep_dir else None
        self.phase = "idle" if self.sweep is None else self.sweep.status
        self.applied: C.Config | None = None
        self._last_step: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._current: int | None = None  # index of the trial the sweep has started and not finished
        self._shown: tuple[str, ...] = ()  # the statuses the table shows (repaint when they change)

    # --- layout ------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Label("[b]七星连珠法 seven stars in a row[/b] — short equal-budget trials on the half-decade grid "
                    f"(validation: {self.cfg.eval.val_data_mode})", id="sweep-title")
        with Horizontal(id="sweep-form"):
            yield Label("key")
            yield Input(self.key, id="sweep-key", placeholder="train.base_lr")
            yield Label("start")
            yield Input(S.value_name(float(self.start_value)), id="sweep-start", placeholder="0.001")
            yield Label("budget")
            yield Input(self.budget, id="sweep-budget", placeholder="200 (steps) or 5m")
        with Vertical(id="sweep-body"):
            yield DataTable(id="sweep-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="sweep-chart")
            yield Static("F5 starts seven trials.", id="sweep-status")
        yield Footer(compact=True)  # 80 columns: the screen's keys and ^p fit

    def on_mount(self) -> None:
        table = self.query_one("#sweep-table", DataTable)
        table.add_columns("value", "mAP", "AP50", "train loss", "status")
        if self.sweep is not None:
            self.query_one("#sweep-key", Input).value = self.sweep.key
            self.query_one("#sweep-start", Input).value = S.value_name(self.sweep.values[0])
            self._refresh()
        self.set_interval(0.25, self._tick)

    # --- actions -----------------------------------------------------------------------------------
    def action_start(self) -> None:
        if self.phase == "running":
            self.notify("a sweep is already running", severity="warning")
            return
        if getattr(self.app, "run_active", False):
            msg = ("a run is training in this app: stop it first (F7, with a checkpoint) or let it finish — "
                   "a sweep beside it would share the CPU/GPU and its trials' timings would mean nothing")
            self._status(f"[red]not started:[/red] {msg}")
            self.notify("a run is training: stop it (F7) before starting a sweep", severity="error")
            return
        if self.sweep is None or self.sweep.status == "finished":
            try:
                key = self.query_one("#sweep-key", Input).value.strip()
                start = float(self.query_one("#sweep-start", Input).value)
                steps, minutes = parse_budget(self.query_one("#sweep-budget", Input).value)
                self.sweep = S.Sweep.new(self.cfg, key, start, self.runs_root, trial_steps=steps,
                                         trial_minutes=minutes)
            except (ValueError, C.ConfigError) as err:
                self._status(f"[red]{err}")
                self.notify(str(err).split("\n")[0], severity="error")
                return
        self.sweep.callback = self._on_event
        self._current = None
        self.phase = "running"
        self._refresh()
        self.run_worker(self._work, thread=True, exclusive=True, group="sweep", exit_on_error=False)

    def _work(self) -> None:
        try:
            state = self.sweep.run()
        except Exception as err:  # noqa: BLE001 - show it, keep the UI alive
            state = "failed"
            self._call(self._status, f"[red]sweep failed: {type(err).__name__}: {err}")
        self.phase = state
        self._call(self._refresh)

    def action_stop(self) -> None:
        if self.sweep is not None and self.phase == "running":
            self.sweep.stop()
            self._status("stopping: the current trial finishes its step and writes a checkpoint…")

    def action_apply(self) -> None:
        if self.sweep is None or self.sweep.best_value() is None:
            self.notify("no finished trial yet", severity="warning")
            return
        base = self.applied or self.cfg
        new = self.sweep.apply_best(base)
        value = self.sweep.best_value()
        self.applied = new
        self.post_message(ConfigApplied(new, f"sweep {self.sweep.dir.name}", {self.sweep.key: value}))
        if self.on_apply:
            self.on_apply(new)
        self.notify(f"{self.sweep.key} = {S.value_name(value)} applied to the config")
        self._status(f"applied: {self.sweep.key} = {S.value_name(value)}")

    def action_slide(self) -> None:
        if self.sweep is None or self.sweep.next_window() is None:
            self.notify("the best is not at the window's edge", severity="information")
            return
        nxt = self.sweep.next_window()
        self.query_one("#sweep-start", Input).value = S.value_name(nxt[0])
        self.sweep = None
        self.phase = "idle"
        self._status(f"window slid to {', '.join(S.value_name(v) for v in nxt)}: F5 runs it")

    def action_close(self) -> None:
        if self.sweep is not None and self.phase == "running":
            self.sweep.stop()
        self.dismiss(self.applied)

    # --- progress ------------------------------------------------------------------------------------
    def _call(self, fn, *args) -> None:
        try:
            self.app.call_from_thread(fn, *args)
        except Exception:  # noqa: BLE001 - the app may be closing
            pass

    def _on_event(self, event) -> None:  # the trainer's thread
        if event.kind == "step":
            with self._lock:
                self._last_step = {"step": event.step, "total": event.total_steps, "loss": event.loss}
        elif event.kind == "sweep":
            with self._lock:
                if event.what == "trial_started":
                    self._current = event.index
                elif event.what in ("trial_done", "sweep_finished", "sweep_stopped"):
                    self._current = None
            self._call(self._refresh)

    def _tick(self) -> None:
        if self.sweep is None:
            return
        if self._statuses() != self._shown:  # the sweep's thread moved a trial on
            self._refresh()
        if self.phase != "running":
            return
        with self._lock:
            s = dict(self._last_step)
        cur = next((r for r, st in zip(self.sweep.results, self._statuses()) if st == "running"), None)
        if cur is not None and s:
            done = sum(r.status in ("finished", "failed") for r in self.sweep.results)
            self._status(f"trial {done + 1}/{len(self.sweep.results)}: {self.sweep.key} = "
                         f"{S.value_name(cur.value)} — step {s['step']}/{s['total']}, loss {s['loss']:.3f}")

    def _status(self, text: str) -> None:
        self.query_one("#sweep-status", Static).update(text)

    def _statuses(self) -> tuple[str, ...]:
        """Each trial's status as shown: the trial the sweep has started reads ``running`` while it builds its
        trainer too (the engine marks it running only once the trainer exists)."""
        if self.sweep is None:
            return ()
        with self._lock:
            current = self._current if self.phase == "running" else None
        return tuple("running" if (i == current and r.status == "pending") else r.status
                     for i, r in enumerate(self.sweep.results))

    def _refresh(self) -> None:
        if self.sweep is None:
            return
        table = self.query_one("#sweep-table", DataTable)
        table.clear()
        f = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
        self._shown = statuses = self._statuses()
        for r, status in zip(self.sweep.table(), statuses):
            star = " ★" if r["best"] else ""
            table.add_row(S.value_name(r["value"]) + star, f(r["mAP"]), f(r["AP50"]), f(r["train_loss"]),
                          status, key=S.value_name(r["value"]))
        self.query_one("#sweep-chart", Static).update(S.text_chart(self.sweep.table()))
        b = self.sweep.best_value()
        if self.phase != "running":
            msg = f"sweep {self.phase}"
            if b is not None:
                msg += f" — best {self.sweep.key} = {S.value_name(b)} (F7 applies it)"
            if self.sweep.at_edge():
                msg += " — at the window's edge: F8 slides the window"
            if self.phase == "stopped":
                msg += " — F5 resumes"
            self._status(msg)

    def rows(self) -> list[dict[str, Any]]:
        """The table as data (tests, the app)."""
        return self.sweep.table() if self.sweep else []

    @property
    def running(self) -> bool:
        return self.phase == "running"

    def wait_idle(self, timeout: float = 60.0) -> bool:  # pragma: no cover - a helper for scripts
        end = time.monotonic() + timeout
        while self.running and time.monotonic() < end:
            time.sleep(0.05)
        return not self.running
