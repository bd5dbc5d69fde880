"""The seven-stars sweep screen: key, start point, budget → a study of seven trials, its table, chart and best.

A standalone Screen; mount it with ``app.push_screen(SweepScreen(cfg, runs_root))`` (a new sweep) or
``SweepScreen(cfg, runs_root, sweep_dir=FOLDER)`` (open a study: the Runs tab's Enter, ``nanxi-tune open``).
F5 creates the study and starts its owner **detached** — its own process, so quitting the TUI or losing SSH never
stops it; the screen only follows the study's folder and storage, and drives it through its control channel
(engine.run.runctl), as ``nanxi-tune ctl STUDY …`` does. When the user applies the best value it posts
``ConfigApplied`` (the app replaces its config) and calls ``on_apply`` if given.

Keys: F5 start (detached) or resume a stopped study, F6 pause / continue, F7 stop (every trial checkpoints),
F8 / a apply the best, w slide the window when the best sits at an edge, Escape close (the study goes on).
F5 refuses while the app trains a run of its own (``app.run_active``): trials beside it would share the
CPU/GPU and their timings would mean nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.workflows import sweep as S
from nanxi_tune.engine.run.runctl import Op, RunState
from nanxi_tune.tui.field_row import OrderedInput as Input

FOLLOW_S = 0.5
SPARK = "▁▂▃▄▅▆▇█"


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


def sparkline(values: list[float], width: int = 16) -> str:
    vals = [v for v in values if v == v][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    return "".join(SPARK[int((v - lo) / (hi - lo) * (len(SPARK) - 1)) if hi > lo else 0] for v in vals)


def live_line(row: dict[str, Any]) -> str:
    """One running trial: its value, step and a sparkline of its train loss (read from its run folder)."""
    losses = [m["loss"] for m in rundir.read_metrics(row["run_dir"]) if m.get("split") == "train"
              and isinstance(m.get("loss"), (int, float))] if row.get("run_dir") else []
    last = f" loss {losses[-1]:.3f}" if losses else ""
    return f"{S.value_name(row['value'])} {row['status']} step {row['steps']}{last} {sparkline(losses)}"


class SweepScreen(Screen):
    BINDINGS = [
        Binding("f5", "start", "Start bg", tooltip="Start the sweep detached, as its own process: it goes on when "
                "the TUI quits (or resume a stopped one)"),
        Binding("f6", "pause", "Pause", tooltip="Pause / continue the study: no trial advances while paused"),
        Binding("f7", "stop", "Stop", tooltip="Stop the study: every trial writes a checkpoint (F5 resumes)"),
        Binding("f8", "apply", "Apply best", tooltip="Set the key to the best value in the config"),
        Binding("a", "apply", "Apply best", show=False),
        Binding("w", "slide", "Slide", show=False,
                tooltip="When the best sits at an edge: a new sweep over the window around it"),
        Binding("escape", "close", "Close", tooltip="Close this screen; the study goes on"),
    ]

    def __init__(self, cfg: C.Config, runs_root: Path | str = "runs", key: str = "train.base_lr",
                 start: float | None = None, budget: str = "200", sweep_dir: Path | str | None = None,
                 on_apply: Callable[[C.Config], None] | None = None, workers: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.runs_root = Path(runs_root)
        self.key = key
        self.start_value = start if start is not None else (C.flatten(cfg).get(key) or 0.001)
        self.budget = budget
        self.n_workers = workers
        self.on_apply = on_apply
        self.sweep_dir: Path | None = Path(sweep_dir) if sweep_dir else None
        self.sweep: S.Sweep | None = None
        self.state = "idle"  # the study's state as its folder tells (runctl.RunState values), "idle" before one
        self.alive = False
        self.applied: C.Config | None = None
        self._rows: list[dict[str, Any]] = []
        self._shown: Any = None
        self._replied = False  # the status line holds a command's answer: the next poll rewrites it

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
            yield Static("", id="sweep-live")
            yield Static("", id="sweep-chart")
            yield Static("F5 starts seven trials as a detached study (it goes on when the TUI quits).",
                         id="sweep-status")
        yield Footer(compact=True)  # 80 columns: the screen's keys and ^p fit

    def on_mount(self) -> None:
        table = self.query_one("#sweep-table", DataTable)
        table.add_columns("value", "mAP", "AP50", "loss", "status", "step", "device")
        if self.sweep_dir is not None:
            self._follow()
        self.set_interval(FOLLOW_S, self._follow)

    # --- following the study (a thread reads its storage and folder) ---------------------------------------------
    @work(thread=True, exclusive=True, group="sweep-follow", exit_on_error=False)
    def _follow(self) -> None:
        if self.sweep_dir is None:
            return
        try:
            if self.sweep is None or self.sweep.dir != self.sweep_dir:
                self.sweep = S.load(self.sweep_dir)
            rows = self.sweep.table()
            st = runctl.status(self.sweep_dir)
            live = [live_line(r) for r in rows if r["status"] in ("running", "paused")]
        except Exception as err:  # noqa: BLE001 - show it, keep the UI alive
            self._call(self._status, f"[red]cannot read {self.sweep_dir}: {type(err).__name__}: {err}")
            return
        self._call(self._show_rows, rows, st, live)

    def _show_rows(self, rows: list[dict[str, Any]], st: runctl.RunStatus, live: list[str]) -> None:
        self._rows, self.state, self.alive = rows, st.state.value, st.alive
        if self.sweep is not None and self._shown is None:
            self.query_one("#sweep-key", Input).value = self.sweep.key
            self.query_one("#sweep-start", Input).value = S.value_name(min(r["value"] for r in rows))
        shown = (tuple((r["value"], r["mAP"], r["status"], r["steps"]) for r in rows), self.state)
        self.query_one("#sweep-live", Static).update("\n".join(live))
        if shown == self._shown and not self._replied:
            return
        self._shown, self._replied = shown, False
        table = self.query_one("#sweep-table", DataTable)
        table.clear()
        f = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
        for r in rows:
            star = " ★" if r["best"] else ""
            table.add_row(S.value_name(r["value"]) + star, f(r["mAP"]), f(r["AP50"]), f(r["train_loss"]),
                          r["status"], str(r["steps"]), r["device"] or "", key=S.value_name(r["value"]))
        self.query_one("#sweep-chart", Static).update(S.text_chart(rows, height=5))
        self._status(self._summary(rows))

    def _summary(self, rows: list[dict[str, Any]]) -> str:
        done = sum(r["status"] in S.DONE for r in rows)
        msg = f"study {self.state}{' ●' if self.alive else ''}: {done}/{len(rows)} trials done"
        best = next((r for r in rows if r["best"]), None)
        if best is not None:
            msg += f" — best {self.sweep.key} = {S.value_name(best['value'])} (F8 applies it)"
        if self.state == RunState.PAUSED.value:
            msg += " — paused: F6 continues"
        elif not self.alive and done < len(rows):
            msg += " — F5 resumes"
        elif not self.alive and self.sweep is not None and self.sweep.next_window():
            msg += " — at the window's edge: w slides"
        return msg

    # --- actions -----------------------------------------------------------------------------------
    def action_start(self) -> None:
        if self.alive:
            self.notify("the study is running (F6 pauses, F7 stops)", severity="warning")
            return
        if getattr(self.app, "run_active", False):
            msg = ("a run is training in this app: stop it first (F7, with a checkpoint) or let it finish — "
                   "trials beside it would share the CPU/GPU and their timings would mean nothing")
            self._status(f"[red]not started:[/red] {msg}")
            self.notify("a run is training: stop it (F7) before starting a sweep", severity="error")
            return
        if self.sweep_dir is not None and self._rows and not all(
                r["status"] in S.DONE for r in self._rows):
            self._launch(self.sweep_dir, "resumed")
            return
        try:
            key = self.query_one("#sweep-key", Input).value.strip()
            start = float(self.query_one("#sweep-start", Input).value)
            steps, minutes = parse_budget(self.query_one("#sweep-budget", Input).value)
            sw = S.Sweep.new(self.cfg, key, start, self.runs_root, trial_steps=steps, trial_minutes=minutes,
                             workers=self.n_workers)
        except (ValueError, C.ConfigError) as err:
            self._status(f"[red]{err}")
            self.notify(str(err).split("\n")[0], severity="error")
            return
        self.sweep, self._shown = sw, None
        self._launch(sw.dir, "started")

    def _launch(self, folder: Path, what: str) -> None:
        from nanxi_tune.engine.workflows.study_owner import spawn_detached

        self.sweep_dir = folder
        spawn_detached(folder)
        self.state, self.alive = RunState.STARTING.value, True
        self._status(f"{what} detached: {folder.name} — it goes on if the TUI quits; back with  "
                     f"nanxi-tune open {folder}")
        self.notify(f"{folder.name}: {what} as its own process; F6 pauses, F7 stops, Escape leaves it running",
                    title="sweep detached", timeout=8)

    def _send(self, op: Op) -> None:
        if self.sweep_dir is None or not self.alive:
            self.notify("no live study: F5 starts (or resumes) one", severity="warning")
            return
        self._request(self.sweep_dir, op)

    @work(thread=True, group="sweep-ctl", exit_on_error=False)
    def _request(self, folder: Path, op: Op) -> None:
        try:
            ack = runctl.request(folder, op, sender=runctl.sender_name("tui"), timeout=60)
        except runctl.NotAlive as err:
            self._call(self.notify, str(err), severity="warning")
            return
        text = ack["message"] if ack else f"{op.value}: no answer yet (the study is busy); see the table"
        self._call(self._reply, f"{op.value}: {text}")
        self._call(self.notify, text, title=f"study {op.value}", timeout=5)

    def _reply(self, text: str) -> None:
        """A command's answer on the status line until the next poll puts the study's state back (a poll that saw
        the new state before the answer came would otherwise leave the answer there for good)."""
        self._status(text)
        self._replied = True

    def action_pause(self) -> None:
        self._send(Op.CONTINUE if self.state == RunState.PAUSED.value else Op.PAUSE)

    def action_stop(self) -> None:
        self._send(Op.STOP)

    def action_apply(self) -> None:
        best = next((r for r in self._rows if r["best"]), None)
        if self.sweep is None or best is None:
            self.notify("no finished trial yet", severity="warning")
            return
        new = self.sweep.apply_best(self.applied or self.cfg)
        value = best["value"]
        self.applied = new
        self.post_message(ConfigApplied(new, f"sweep {self.sweep.dir.name}", {self.sweep.key: value}))
        if self.on_apply:
            self.on_apply(new)
        self.notify(f"{self.sweep.key} = {S.value_name(value)} applied to the config")
        self._status(f"applied: {self.sweep.key} = {S.value_name(value)}")

    def action_slide(self) -> None:
        nxt = self.sweep.next_window() if (self.sweep is not None and not self.alive) else None
        if nxt is None:
            self.notify("the best is not at the window's edge (or the study still runs)", severity="information")
            return
        self.query_one("#sweep-start", Input).value = S.value_name(nxt[0])
        self.sweep, self.sweep_dir, self._rows, self._shown, self.state = None, None, [], None, "idle"
        self._status(f"window slid to {', '.join(S.value_name(v) for v in nxt)}: F5 runs it")

    def action_close(self) -> None:
        if self.alive:
            self.notify(f"{self.sweep_dir.name} goes on detached; the Runs tab opens it again", timeout=5)
        self.dismiss(self.applied)

    # --- helpers ---------------------------------------------------------------------------------------
    def _call(self, fn, *args, **kw) -> None:
        try:
            self.app.call_from_thread(fn, *args, **kw)
        except Exception:  # noqa: BLE001 - the app may be closing
            pass

    def _status(self, text: str) -> None:
        self.query_one("#sweep-status", Static).update(text)

    def rows(self) -> list[dict[str, Any]]:
        """The table as data (tests, the app)."""
        return list(self._rows)

    @property
    def running(self) -> bool:
        return self.alive
