"""nanxi-tune's Textual app: the cheat-sheet as panels, runs launched, watched, stopped, resumed.

Tabs: Config (the schema-generated panels), Monitor (plots, table, budget, diagnoses, system),
Runs (everything under ``runs_root``). Torch and the trainer are imported only inside the
training worker, so the first frame never waits for them.
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Vertical
from textual.message import Message
from textual.lazy import Lazy
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from nanxi_tune.engine import config as C
from nanxi_tune.tui.config_form import ConfigForm, FieldFocused, key_of
from nanxi_tune.tui.monitor import Monitor, RunBridge, RunUpdate
from nanxi_tune.tui.screens import Confirm, DiffView, PresetPicker, ResumeDialog, SaveAs, diff_table

ACTIONS = [  # action, palette name, help
    ("start_run", "Start run", "Start a run with the config on the Config tab"),
    ("pause_run", "Pause / continue run", "Pause the run at the next step boundary, or continue it"),
    ("stop_run", "Stop run (checkpoint first)", "Write a checkpoint, then stop the run"),
    ("resume_run", "Resume run", "Resume the selected / last run from its checkpoint, optionally with live edits"),
    ("load_preset", "Load preset", "Load a bundled preset, a .toml in this folder, or a path"),
    ("save_preset", "Save config as", "Save the current config as a TOML preset"),
    ("show_diff", "Diff against preset", "Show what the config changes from its preset"),
]


class RunCommands(Provider):
    """The run and preset actions in the command palette (Ctrl+P)."""

    async def discover(self) -> Hits:
        for action, name, help_ in ACTIONS:
            yield DiscoveryHit(name, partial(self.app.run_action, action), help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for action, name, help_ in ACTIONS:
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self.app.run_action, action), help=help_)


class RunDone(Message):
    def __init__(self, result: str, run_dir: Path) -> None:
        super().__init__()
        self.result = result
        self.run_dir = run_dir


class RunsPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("Runs — Enter opens a run in the Monitor tab; F8 resumes the selected run",
                     classes="section-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col in ("name", "status", "best mAP", "started", "step", "preset"):
            table.add_column(col, key=col)


class NanxiTuneApp(App):
    """The cheat-sheet as live panels; runs launched, watched, stopped and resumed from the keyboard."""

    CSS_PATH = str(Path(__file__).with_name("app.tcss"))
    TITLE = "nanxi-tune"
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS = [
        Binding("f5", "start_run", "Start", key_display="F5", id="start_run", tooltip=ACTIONS[0][2]),
        Binding("f6", "pause_run", "Pause", key_display="F6", id="pause_run", tooltip=ACTIONS[1][2]),
        Binding("f7", "stop_run", "Stop", key_display="F7", id="stop_run", tooltip=ACTIONS[2][2]),
        Binding("f8", "resume_run", "Resume", key_display="F8", id="resume_run", tooltip=ACTIONS[3][2]),
        Binding("f2", "load_preset", "Load", key_display="F2", id="load_preset", tooltip=ACTIONS[4][2]),
        Binding("f3", "save_preset", "Save", key_display="F3", id="save_preset", tooltip=ACTIONS[5][2]),
        Binding("f4", "show_diff", "Diff", key_display="F4", id="show_diff", tooltip=ACTIONS[6][2]),
        Binding("ctrl+t", "next_tab", "Tab", id="next_tab", tooltip="Next tab: Config → Monitor → Runs"),
        Binding("alt+1", "tab('config')", "Config", show=False, id="tab_config", tooltip="Config tab"),
        Binding("alt+2", "tab('monitor')", "Monitor", show=False, id="tab_monitor", tooltip="Monitor tab"),
        Binding("alt+3", "tab('runs')", "Runs", show=False, id="tab_runs", tooltip="Runs tab"),
        Binding("ctrl+q", "quit", "Quit", id="quit", tooltip="Quit (asks first while a run is in progress)",
                priority=True),
    ]

    def __init__(self, preset: str = "demo", open_run: Path | None = None, runs_root: Path = Path("runs"),
                 *, max_steps: int | None = None, trainer_cls: Any = None) -> None:
        super().__init__()
        self.preset_arg = preset
        self.open_run_arg = Path(open_run) if open_run else None
        self.runs_root = Path(runs_root)
        self.max_steps = max_steps
        self._trainer_cls = trainer_cls
        cfg = C.load_preset(preset)
        self.initial_cfg = cfg
        self.initial_base = C.base_of(cfg)
        self.trainer: Any = None
        self.bridge: RunBridge | None = None
        self.running = False
        self.run_dir: Path | None = None
        self._pending: list[str] = []  # commands given before the trainer object exists
        self._quit_pending = False
        self._tail: Any = None
        self._tail_timer: Any = None
        self.last_result: str | None = None
        self.first_paint_s: float | None = None
        self._t0 = time.perf_counter()
        self.notices: list[str] = []  # every notification shown, newest last (for tests and debugging)

    def notify(self, message: str, *, title: str = "", severity: Any = "information", **kw: Any) -> None:
        self.notices.append(f"{severity}: {title + ': ' if title else ''}{message}")
        del self.notices[:-50]
        super().notify(message, title=title, severity=severity, **kw)

    # --- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs", initial="config"):
            with TabPane("Config", id="config"):
                yield Static("", id="config-status")
                yield ConfigForm(self.initial_cfg, self.initial_base, id="form")
                yield Static("", id="field-help")
            with TabPane("Monitor", id="monitor"):
                yield Lazy(Monitor(id="mon"))
            with TabPane("Runs", id="runs"):
                yield Lazy(RunsPane(id="runs-pane"))
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"preset {self.initial_cfg.preset}"
        self.form.validate_now()
        self.set_interval(0.5, self._drain_timer)
        self.call_after_refresh(self._first_paint)
        self.on_resize()
        if self.open_run_arg:
            self._when_ready(lambda: self.open_run(self.open_run_arg))

    def _when_ready(self, fn: Callable[[], Any]) -> None:
        """Run fn once the lazily mounted Monitor and Runs panes exist."""
        if self.query("#mon") and self.query("#runs-table"):
            fn()
        else:
            self.set_timer(0.05, lambda: self._when_ready(fn))

    def _first_paint(self) -> None:
        self.first_paint_s = time.perf_counter() - self._t0

    def on_resize(self, event: Any = None) -> None:
        self.set_class(self.size.width < 120, "-narrow")

    @property
    def form(self) -> ConfigForm:
        return self.query_one("#form", ConfigForm)

    @property
    def monitor(self) -> Monitor:
        return self.query_one("#mon", Monitor)

    def action_next_tab(self) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        order = ["config", "monitor", "runs"]
        tabs.active = order[(order.index(tabs.active) + 1) % 3]

    def action_tab(self, name: str) -> None:
        self.query_one("#tabs", TabbedContent).active = name

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "runs":
            self.refresh_runs()
        elif event.pane.id == "monitor":
            self.call_after_refresh(self.monitor.redraw_plots)

    # --- config ------------------------------------------------------------------------------
    @on(ConfigForm.Validated)
    def _validated(self, event: ConfigForm.Validated) -> None:
        form = event.form
        t = Text()
        t.append(f"preset {form.preset or '—'}", style="bold")
        changed = form.changed_keys()
        t.append(f" · {len(changed)} changed" if changed else " · unchanged")
        if form.config is not None:
            t.append(" · valid ✓", style="bold green")
        else:
            bad = list(form.errors) + ([form.general_error] if form.general_error else [])
            t.append(f" · ✗ {len(bad)} invalid: {', '.join(bad)[:60]}", style="bold red")
        t.append(" · Tab moves · ^t next tab · F5 start · ⟳ live key", style="dim")
        self.query_one("#config-status", Static).update(t)

    @on(FieldFocused)
    def _field_focused(self, event: FieldFocused) -> None:
        info = C.field_info(event.key)
        if info is None:
            return
        t = Text(event.key, style="bold")
        t.append(f": {info.description or ''}")
        if C.is_live(event.key):
            t.append("  (live: may change when resuming)", style="dim")
        self.query_one("#field-help", Static).update(t)

    def first_error(self) -> tuple[str, str] | None:
        form = self.form
        if form.config is not None:
            return None
        if form.errors:
            key = next(iter(form.errors))
            return key, form.errors[key]
        return "config", form.general_error or "invalid"

    # --- presets -----------------------------------------------------------------------------
    def action_load_preset(self) -> None:
        def done(value: str | None) -> None:
            if value:
                self.load_preset(value)
        self.push_screen(PresetPicker(), done)

    def load_preset(self, name_or_path: str) -> bool:
        try:
            cfg = C.load_preset(name_or_path)
        except C.ConfigError as err:
            self.notify(str(err), title="Cannot load preset", severity="error", timeout=8)
            return False
        self.form.load(cfg, C.base_of(cfg))
        self.sub_title = f"preset {cfg.preset}"
        self.notify(f"Loaded {name_or_path}")
        return True

    def action_save_preset(self) -> None:
        cfg = self.form.validate_now()
        if cfg is None:
            key, msg = self.first_error()
            self.notify(f"{key}: {msg}", title="Cannot save an invalid config", severity="error")
            return
        default = f"{Path(cfg.preset).stem or 'config'}-mine.toml"

        def done(path: str | None) -> None:
            if path:
                self.save_preset(path)
        self.push_screen(SaveAs(default), done)

    def save_preset(self, path: str | Path) -> Path | None:
        cfg = self.form.validate_now()
        if cfg is None:
            key, msg = self.first_error()
            self.notify(f"{key}: {msg}", title="Cannot save an invalid config", severity="error")
            return None
        try:
            out = C.save(cfg, path)
        except OSError as err:
            self.notify(str(err), title="Cannot save", severity="error")
            return None
        self.notify(f"Saved {out}")
        return out

    def action_show_diff(self) -> None:
        form = self.form
        form.validate_now()
        self.push_screen(DiffView(diff_table(form.config, form.base, form.errors)))

    # --- runs: start / pause / stop / resume ------------------------------------------------
    def _trainer_class(self) -> Any:
        if self._trainer_cls is None:
            from nanxi_tune.engine.trainer import Trainer  # heavy: torch; only inside the worker

            self._trainer_cls = Trainer
        return self._trainer_cls

    def action_start_run(self) -> None:
        if self.running:
            self.notify(f"{self.run_dir.name if self.run_dir else 'A run'} is already running; stop it first (F7).",
                        severity="warning")
            return
        cfg = self.form.validate_now()
        if cfg is None:
            key, msg = self.first_error()
            self.notify(f"{key}: {msg}", title="Cannot start: invalid config", severity="error", timeout=8)
            try:
                self.query_one("#tabs", TabbedContent).active = "config"
                self.form.row(key).editor.focus()
            except Exception:  # noqa: BLE001 - a general (non-field) error has no editor
                pass
            return
        from nanxi_tune.engine import rundir

        run_dir = rundir.new_run_dir(self.runs_root)
        self._begin(run_dir, cfg.budget.max_days)
        max_steps = self.max_steps

        def make(cb: Callable) -> Any:
            return self._trainer_class()(cfg, run_dir, callback=cb, max_steps=max_steps)
        self._train_worker(make, run_dir, history=False)

    def _begin(self, run_dir: Path, max_days: float) -> None:
        self._stop_tail()
        self.running = True
        self.run_dir = run_dir
        self.trainer = None
        self._pending = []
        self.bridge = RunBridge(self)
        self.monitor.reset(run_dir.name, max_days)
        self.query_one("#tabs", TabbedContent).active = "monitor"
        self.monitor.focus()  # PageUp/PageDown/arrows scroll the monitor
        self.sub_title = f"run {run_dir.name}"

    @work(thread=True, exclusive=True, group="train", exit_on_error=False)
    def _train_worker(self, make: Callable, run_dir: Path, history: bool) -> None:
        bridge = self.bridge
        result = "failed"
        try:
            trainer = make(bridge)
            if history:
                from nanxi_tune.engine import rundir

                rows = rundir.read_metrics(run_dir)
                self.call_from_thread(self._show_history, rows, live=False)
            self.trainer = trainer
            self.call_from_thread(self._apply_pending)
            result = trainer.run()
        except Exception as err:  # noqa: BLE001 - shown to the user, never crash the UI
            from nanxi_tune.engine.events import Error

            bridge(Error(error=f"{type(err).__name__}: {err}", hint=getattr(err, "hint", "") or
                         "see the run's events.jsonl and journal.md", step=getattr(self.trainer, "step", 0) or 0))
        self.post_message(RunDone(result, run_dir))

    def _apply_pending(self) -> None:
        for cmd in self._pending:
            getattr(self.trainer, cmd)()
        self._pending = []

    def _command(self, cmd: str) -> None:
        if self.trainer is None:
            self._pending.append(cmd)
        else:
            getattr(self.trainer, cmd)()

    def action_pause_run(self) -> None:
        if not self.running:
            self.notify("No run in progress.", severity="warning")
            return
        state = getattr(self.trainer, "state", None) or self.monitor.state
        if state == "paused":
            self._command("request_continue")
            self.notify("Continuing…")
        else:
            self._command("request_pause")
            self.notify("Pausing at the next step…")

    def action_stop_run(self) -> None:
        if not self.running:
            self.notify("No run in progress.", severity="warning")
            return
        self._command("request_stop")
        self.monitor.set_state("stopping")
        self.notify("Stopping: writing a checkpoint first…")

    def resume_target(self) -> Path | None:
        tabs = self.query_one("#tabs", TabbedContent)
        table = self.query_one("#runs-table", DataTable)
        if tabs.active == "runs" and table.row_count:
            try:
                key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
                return Path(key)
            except Exception:  # noqa: BLE001
                pass
        if self.run_dir is not None:
            return self.run_dir
        from nanxi_tune.engine import rundir

        runs = sorted(rundir.list_runs(self.runs_root), key=lambda r: r.started or 0)
        return Path(runs[-1].path) if runs else None

    def live_prefill(self, run_dir: Path) -> str:
        cur = self.form.config
        if cur is None:
            return ""
        try:
            ran = C.load(run_dir / "config.toml")
        except C.ConfigError:
            return ""
        parts = []
        for key, (_a, b) in C.diff(ran, cur).items():
            if C.is_live(key):
                parts.append(f"{key}={_toml(b)}")
        return " ".join(parts)

    def action_resume_run(self) -> None:
        if self.running:
            self.notify("A run is in progress; stop it (F7) before resuming another.", severity="warning")
            return
        target = self.resume_target()
        if target is None:
            self.notify("No run to resume: start one (F5) or pick one on the Runs tab.", severity="warning")
            return
        if not (target / "checkpoints" / "last.pt").exists():
            self.notify(f"{target.name} has no checkpoint to resume from.", severity="error")
            return
        live = [k for k in _all_keys() if C.is_live(k)]

        def done(updates: dict | None) -> None:
            if updates is not None:
                self.resume(target, updates)
        self.push_screen(ResumeDialog(target, self.live_prefill(target), live), done)

    def resume(self, run_dir: Path, updates: dict | None = None) -> None:
        if self.running:
            self.notify("A run is in progress.", severity="warning")
            return
        max_days = self.form.config.budget.max_days if self.form.config else 4.0
        if updates and "budget.max_days" in updates:
            max_days = float(updates["budget.max_days"])
        self._begin(Path(run_dir), max_days)
        max_steps = self.max_steps

        def make(cb: Callable) -> Any:
            return self._trainer_class().resume(Path(run_dir), callback=cb, updates=updates or None,
                                                max_steps=max_steps)
        self._train_worker(make, Path(run_dir), history=True)

    # --- events from the trainer ------------------------------------------------------------
    def _drain_timer(self) -> None:
        if self.bridge is not None:
            self._drain(self.bridge)

    @on(RunUpdate)
    def _run_update(self, message: RunUpdate) -> None:
        self._drain(message.bridge)

    def _drain(self, bridge: RunBridge) -> None:
        train, val, other = bridge.drain()
        mon = self.monitor
        if train:
            mon.add_train(train)
        if val:
            mon.add_val(val)
        for ev in other:
            kind = ev.kind
            if kind == "state":
                mon.set_state(ev.state)
            elif kind == "diagnosis":
                mon.add_diagnosis(ev.step, ev.severity, ev.rule, ev.section, ev.message)
                if ev.severity != "info":
                    self.notify(f"[{ev.section}] {ev.message}", title=f"diagnosis: {ev.rule}",
                                severity="warning" if ev.severity == "warning" else "error", timeout=8)
            elif kind == "error":
                mon.add_diagnosis(ev.step, "error", "error", "", f"{ev.error} — {ev.hint}")
                self.notify(f"{ev.error}\n{ev.hint}", title="Run failed", severity="error", timeout=15)
            elif kind == "checkpoint":
                self.notify(f"checkpoint at step {ev.step}" + (" (best)" if ev.best else ""), timeout=3)
            elif kind == "log":
                if ev.level == "warning":
                    self.notify(ev.message, severity="warning", timeout=6)

    @on(RunDone)
    def _run_done(self, message: RunDone) -> None:
        if self.bridge is not None:
            self._drain(self.bridge)
        self.running = False
        self.last_result = message.result
        self.monitor.set_state(message.result)
        self.monitor.redraw_plots()
        self.notify(f"Run {message.run_dir.name}: {message.result}",
                    severity="error" if message.result == "failed" else "information")
        if self.query_one("#tabs", TabbedContent).active == "runs":
            self.refresh_runs()
        if self._quit_pending:
            self.exit()

    # --- runs tab ----------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        from nanxi_tune.engine import rundir

        table = self.query_one("#runs-table", DataTable)
        table.clear()
        try:
            runs = rundir.list_runs(self.runs_root)
        except Exception as err:  # noqa: BLE001
            self.notify(f"cannot list runs: {err}", severity="error")
            return
        for r in sorted(runs, key=lambda r: r.started or 0, reverse=True):
            started = datetime.fromtimestamp(r.started).strftime("%m-%d %H:%M") if r.started else "—"
            best = f"{r.best_map:.4f}" if r.best_map is not None else "—"
            table.add_row(r.name, r.status, best, started, str(r.step), r.preset or "", key=str(r.path))

    @on(DataTable.RowSelected, "#runs-table")
    def _run_selected(self, event: DataTable.RowSelected) -> None:
        self.open_run(Path(event.row_key.value))

    def open_run(self, run_dir: Path) -> None:
        """Show a run's curves from metrics.jsonl; follow it if it is still being written."""
        if self.running:
            self.notify("A run is in progress; the monitor is showing it.", severity="warning")
            return
        from nanxi_tune.engine import rundir

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            self.notify(f"{run_dir}: no such run folder", severity="error")
            return
        self._stop_tail()
        try:
            cfg = C.load(run_dir / "config.toml")
            max_days = cfg.budget.max_days
        except C.ConfigError:
            max_days = 4.0
        self.run_dir = run_dir
        mon = self.monitor
        mon.reset(run_dir.name, max_days)
        tail = rundir.MetricsTail(run_dir)
        self._show_history(tail.poll(), live=False)
        try:
            info = rundir.run_info(run_dir)
            status = info.status
        except Exception:  # noqa: BLE001
            status = "unknown"
        mon.set_state(status)
        for ev in rundir.read_events(run_dir):
            if ev.get("kind") == "diagnosis":
                mon.add_diagnosis(ev.get("step", ""), ev.get("severity", ""), ev.get("rule", ""),
                                  ev.get("section", ""), ev.get("message", ""))
        self.query_one("#tabs", TabbedContent).active = "monitor"
        self.sub_title = f"run {run_dir.name} ({status})"
        if status in ("running", "starting", "paused", "stopping"):
            self._tail = tail
            self._tail_timer = self.set_interval(1.0, self._poll_tail)
        mon.redraw_plots(force=True)

    def _show_history(self, rows: list[dict], live: bool = False) -> None:
        mon = self.monitor
        mon.add_train([r for r in rows if r.get("split", "train") == "train"], live=live)
        mon.add_val([r for r in rows if r.get("split") == "val"])

    def _poll_tail(self) -> None:
        if self._tail is None:
            return
        rows = self._tail.poll()
        if rows:
            self._show_history(rows, live=True)

    def _stop_tail(self) -> None:
        if self._tail_timer is not None:
            self._tail_timer.stop()
        self._tail = self._tail_timer = None

    # --- quit --------------------------------------------------------------------------------
    async def action_quit(self) -> None:
        if not self.running:
            self.exit()
            return

        def done(yes: bool | None) -> None:
            if yes:
                self._quit_pending = True
                self._command("request_stop")
                self.monitor.set_state("stopping")
                self.notify("Stopping: writing a checkpoint, then quitting…")
        self.push_screen(Confirm("A run is in progress. Write a checkpoint, stop it and quit?"), done)


def _all_keys() -> list[str]:
    from nanxi_tune.tui.config_form import all_keys

    return all_keys()


def _toml(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_toml(x) for x in v) + "]"
    return str(v)


def run_app(preset: str = "demo", open_run: Path | None = None, runs_root: Path = Path("runs")) -> Any:
    """Entry point used by ``nanxi-tune`` (tui/cli.py)."""
    return NanxiTuneApp(preset=preset, open_run=open_run, runs_root=runs_root).run()


__all__ = ["NanxiTuneApp", "run_app", "key_of"]
