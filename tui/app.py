"""nanxi-tune's Textual app: the cheat-sheet as panels; runs launched, attached, driven, resumed.

Tabs: Config (the schema-generated panels), Monitor (plots, table, budget, diagnoses, system),
Runs (everything under ``runs_root``). Torch and the trainer are imported only inside the
training worker, so the first frame never waits for them. What the keys do lives in
tui.run_actions (runs), tui.workflow_actions (the notes' methods) and tui.config_actions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from textual import _ansi_sequences, on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.lazy import Lazy
from textual.widgets import DataTable, Header, ProgressBar, Static, TabbedContent, TabPane
from textual.widgets._tabbed_content import ContentTabs

from nanxi_tune.engine import config as C
from nanxi_tune.tui.config_actions import ConfigActions
from nanxi_tune.tui.config_form import ConfigForm
from nanxi_tune.tui.field_row import key_of
from nanxi_tune.tui.monitor import Monitor
from nanxi_tune.tui.palette import MAIN_RUN_ACTIONS, TIP, RunCommands, ScreenCommands, SteadyFooter
from nanxi_tune.tui.run_actions import RunActions
from nanxi_tune.tui.run_events import RunEvents
from nanxi_tune.tui.runs_view import RunsPane
from nanxi_tune.tui.workflow_actions import WorkflowActions

# xterm, tmux and most Linux terminals send Alt+digit as ESC digit; Textual maps ESC 1/2/3 to macOS
# Option characters ("¡", "™", "£"), which a focused input then types. Read them as Alt+1/2/3 (tab keys).
for _seq in ("\x1b1", "\x1b2", "\x1b3"):
    _ansi_sequences.ANSI_SEQUENCES_KEYS.pop(_seq, None)


class SteadyTabs(TabbedContent):
    """TabbedContent that follows focus into a pane only while the focus is still there.

    Textual switches to the tab of any pane a widget is focused in, by a message; with two tab keys in one burst
    (Alt+3 then Alt+1 over SSH) that message arrives after the second key already moved on, and pulled the
    screen back to the tab just left."""

    def _on_tabs_tab_activated(self, event: Any) -> None:
        """The tab strip's own echo of an earlier switch, arriving after a later one: not a user's click."""
        strip = self.get_child_by_type(ContentTabs)
        if event.tabs is strip and event.tab.id != strip.active:
            event.stop()
            event.prevent_default()  # Textual calls every class's handler up the MRO unless told not to
            return

    def _on_tab_pane_focused(self, event: TabPane.Focused) -> None:
        event.stop()
        event.prevent_default()  # instead of TabbedContent's own handler, not before it
        focused = self.screen.focused
        if event.tab_pane.id is not None and focused is not None and event.tab_pane in focused.ancestors_with_self:
            self.active = event.tab_pane.id


class NanxiTuneApp(RunActions, RunEvents, WorkflowActions, ConfigActions, App):
    """The cheat-sheet as live panels; runs launched (here or detached), attached, driven and resumed from the
    keyboard. The actions live in the mixins' modules; this class is the composition and the bindings."""

    CSS_PATH = [str(Path(__file__).with_name(name)) for name in ("app.tcss", "screens.tcss")]
    TITLE = "nanxi-tune"
    COMMANDS = App.COMMANDS | {RunCommands, ScreenCommands}
    # The footer (80 columns) shows the run keys, tab, quit and the palette; everything else is in the
    # command palette (Ctrl+P) with the same key shown beside it.
    BINDINGS = [
        Binding("f5", "start_run", "Start", key_display="F5", id="start_run", tooltip=TIP["start_run"]),
        # in the footer: an in-process run stops when SSH drops; Alt+D's outlives it
        Binding("alt+d", "start_detached", "Detached", key_display="Alt+D", id="start_detached",
                tooltip=TIP["start_detached"]),
        Binding("f6", "pause_run", "Pause", key_display="F6", id="pause_run", tooltip=TIP["pause_run"]),
        Binding("f7", "stop_run", "Stop", key_display="F7", id="stop_run", tooltip=TIP["stop_run"]),
        Binding("f8", "resume_run", "Live/Resume", key_display="F8", id="resume_run", tooltip=TIP["resume_run"]),
        Binding("f2", "load_preset", "Load", key_display="F2", id="load_preset", tooltip=TIP["load_preset"],
                show=False),
        Binding("f3", "save_preset", "Save", key_display="F3", id="save_preset", tooltip=TIP["save_preset"],
                show=False),
        Binding("f4", "show_diff", "Diff", key_display="F4", id="show_diff", tooltip=TIP["show_diff"], show=False),
        Binding("f9", "open_sweep", "Sweep", key_display="F9", id="open_sweep", tooltip=TIP["open_sweep"],
                show=False),
        Binding("ctrl+n", "tune_post", "NMS", id="tune_post", tooltip=TIP["tune_post"], show=False),
        Binding("ctrl+g", "open_schedule", "Schedule", id="open_schedule", tooltip=TIP["open_schedule"],
                show=False),
        Binding("alt+m", "compute_stats", "Mean/std", id="compute_stats", tooltip=TIP["compute_stats"],
                show=False),
        Binding("alt+b", "autobatch", "Autobatch", id="autobatch", tooltip=TIP["autobatch"], show=False),
        Binding("ctrl+t", "next_tab", "Tab", id="next_tab", tooltip="Next tab: Config → Monitor → Runs",
                show=False),  # the Config status line says ^t; the footer's room goes to Alt+D
        Binding("alt+right", "config_group(1)", "Next group", id="next_group", show=False,
                tooltip="Config tab: show the next group of the cheat-sheet"),
        Binding("alt+left", "config_group(-1)", "Prev group", id="prev_group", show=False,
                tooltip="Config tab: show the previous group of the cheat-sheet"),
        Binding("alt+1", "tab('config')", "Config", show=False, id="tab_config", tooltip="Config tab",
                priority=True),
        Binding("alt+2", "tab('monitor')", "Monitor", show=False, id="tab_monitor", tooltip="Monitor tab",
                priority=True),
        Binding("alt+3", "tab('runs')", "Runs", show=False, id="tab_runs", tooltip="Runs tab", priority=True),
        Binding("ctrl+q", "quit", "Quit", id="quit", tooltip="Quit (asks first while a run is in progress)",
                priority=True),
    ]

    def __init__(self, preset: str = "demo", open_run: Path | None = None, runs_root: Path = Path("runs"),
                 *, max_steps: int | None = None, stats_samples: int = 200,
                 autobatch_cap_gb: float | None = None, trainer_cls: Any = None) -> None:
        super().__init__()
        # No animations: the tab underline's slide alone repainted the screen ~20 times per tab switch,
        # competing with the trainer for the CPU; over SSH it is also bytes for nothing.
        self.animation_level = "none"
        self.stats_samples = stats_samples
        self.autobatch_cap_gb = autobatch_cap_gb
        self.busy_task: str | None = None  # the running stats / autobatch / remedy task
        self.hangup: str | None = None  # "SIGHUP" / "SIGTERM" once the terminal went away
        self._remedy_pending: tuple[Path, dict] | None = None
        self.remedy_child: Path | None = None  # the child folder of a remedy whose lr trials train now (F7 stops)
        self.open_run_arg = Path(open_run) if open_run else None
        self.runs_root = Path(runs_root)
        self.max_steps = max_steps
        self._trainer_cls = trainer_cls  # None: engine.train.trainer.Trainer, imported in the training worker
        cfg = C.load_preset(preset)
        self.initial_cfg = cfg
        self.initial_base = C.base_of(cfg)
        self._quit_pending = False
        self.exit_text = ""  # printed to the shell by run_app after quitting during a run
        self.first_paint_s: float | None = None
        self._t0 = time.perf_counter()

    # --- layout ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The main run's keys (F5–F8, Alt+D) belong to the main screen: on a workflow screen they would start or
        drive a run the user cannot see (F5 on a finished autopilot started one behind it). Another key the screen
        binds is the screen's even while its action cannot act."""
        if len(self.screen_stack) == 1:
            return True
        mine = {k for k, bs in self._bindings.key_to_bindings.items() if any(b.action == action for b in bs)}
        return action not in MAIN_RUN_ACTIONS and not mine & set(self.screen._bindings.key_to_bindings)

    def compose(self) -> ComposeResult:
        yield Header()
        with SteadyTabs(id="tabs", initial="config"):
            with TabPane("Config", id="config"):
                yield Static("", id="config-status")
                yield Static("", id="group-bar")
                yield ConfigForm(self.initial_cfg, self.initial_base, id="form")
                yield Static("", id="field-help")
            with TabPane("Monitor", id="monitor"):
                yield Lazy(Monitor(id="mon"))
            with TabPane("Runs", id="runs"):
                yield Lazy(RunsPane(id="runs-pane"))
        with Horizontal(id="task"):
            yield Static("", id="task-label")
            yield ProgressBar(id="task-progress", show_eta=False)
        yield SteadyFooter(compact=True)

    def on_mount(self) -> None:
        self.sub_title = f"preset {self.initial_cfg.preset}"
        self.form.validate_now()
        self.form.show_group(self.form.active_group)
        self.set_interval(0.5, self._drain_timer)
        self.set_interval(20.0, self._budget_tick)
        self._task_hide()
        self.call_after_refresh(self._first_paint)
        self.on_resize()
        self._install_signal_handlers()
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
        order = ["config", "monitor", "runs"]
        self.action_tab(order[(order.index(self.query_one("#tabs", TabbedContent).active) + 1) % 3])

    def action_tab(self, name: str) -> None:
        """Show tab ``name`` and move the focus into it at once: focus left in the pane just hidden would pull
        the screen back to it (SteadyTabs follows focus)."""
        self.query_one("#tabs", TabbedContent).active = name
        target = {"config": "#form", "monitor": "#mon", "runs": "#runs-table"}[name]
        if self.query(target):
            widget = self.form.focus_target() if name == "config" else self.query_one(target)
            widget.screen.set_focus(widget)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # Panes mount lazily after the first frame: a tab activated before its pane exists (`nanxi-tune open
        # RUN` on a slow box) has nothing to refresh yet; its pane draws itself when it mounts. A tab left again
        # before this message came (two tab keys in one burst) is not focused: that would switch back to it.
        if event.pane.id != self.query_one("#tabs", TabbedContent).active:
            return
        if event.pane.id == "runs" and self.query("#runs-table"):
            self.query_one("#runs-pane", RunsPane).refresh_runs()
            table = self.query_one("#runs-table", DataTable)
            table.screen.set_focus(table)  # now: Widget.focus() lands after keys already queued
        elif event.pane.id == "monitor" and self.query("#mon"):
            self.call_after_refresh(self.monitor.redraw_plots)
            if self.focused is None or self.monitor not in self.focused.ancestors_with_self:
                self.monitor.screen.set_focus(self.monitor)

    # --- dropped SSH / terminal closed: SIGHUP (and SIGTERM) -------------------------------------
    # Textual installs no handler for these: by default the process would die mid-step with no
    # checkpoint. RunActions.on_hangup decides what each kind of run needs.
    HANGUP_SIGNALS = ("SIGHUP", "SIGTERM")

    def _install_signal_handlers(self) -> None:
        import asyncio
        import signal

        self._signals_installed: list[int] = []
        try:
            loop = asyncio.get_running_loop()
            for name in self.HANGUP_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    loop.add_signal_handler(sig, self.on_hangup, name)
                    self._signals_installed.append(sig)
        except (RuntimeError, NotImplementedError, ValueError):  # not the main thread / no such signals
            pass

    def on_unmount(self) -> None:
        import asyncio

        RunActions.on_unmount(self)
        try:
            loop = asyncio.get_running_loop()
            for sig in getattr(self, "_signals_installed", []):
                loop.remove_signal_handler(sig)
        except RuntimeError:
            pass


def run_app(preset: str = "demo", open_run: Path | None = None, runs_root: Path = Path("runs")) -> Any:
    """Entry point used by ``nanxi-tune`` (cli/main.py opens the app through it)."""
    from nanxi_tune.tui import pixels

    pixels.detect()  # before the app owns the terminal: only then does it answer
    app = NanxiTuneApp(preset=preset, open_run=open_run, runs_root=runs_root)
    result = app.run()
    if app.exit_text:  # plain print after the screen is restored: the terminal wraps, paths copy whole
        print(app.exit_text)
    return result


__all__ = ["NanxiTuneApp", "run_app", "key_of"]
