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
from textual import _ansi_sequences, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.lazy import Lazy
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static, TabbedContent, TabPane

from nanxi_tune.engine import config as C
from nanxi_tune.tui.config_form import ConfigForm, FieldFocused, key_of
from nanxi_tune.tui.monitor import Monitor, RunBridge, RunUpdate
from nanxi_tune.tui.screens import Confirm, DiffView, PresetPicker, ResumeDialog, SaveAs, diff_table
from nanxi_tune.tui.sweep_view import ConfigApplied

# xterm, tmux and most Linux terminals send Alt+digit as ESC digit; Textual maps ESC 1/2/3 to macOS
# Option characters ("¡", "™", "£"), which a focused input then types. Read them as Alt+1/2/3 (tab keys).
for _seq in ("\x1b1", "\x1b2", "\x1b3"):
    _ansi_sequences.ANSI_SEQUENCES_KEYS.pop(_seq, None)

ACTIONS = [  # action, palette name, help
    ("start_run", "Start run", "Start a run with the config on the Config tab"),
    ("pause_run", "Pause / continue run", "Pause the run at the next step boundary, or continue it"),
    ("stop_run", "Stop run (checkpoint first)", "Write a checkpoint, then stop the run"),
    ("resume_run", "Resume run", "Resume the selected / last run from its checkpoint, optionally with live edits"),
    ("load_preset", "Load preset", "Load a bundled preset, a .toml in this folder, or a path"),
    ("save_preset", "Save config as", "Save the current config as a TOML preset"),
    ("show_diff", "Diff against preset", "Show what the config changes from its preset"),
    ("open_sweep", "Seven-stars sweep", "Sweep a numeric key (train.base_lr by default) over seven half-decade "
                                        "values, starting from the current config"),
    ("tune_post", "NMS tuning (post-processing)", "Search nms_iou / score_threshold / top_k on the selected or "
                                                  "last trained run, without retraining"),
    ("open_schedule", "Tuning schedule (rounds)", "The notes' order: round 1 QMV, round 2 RSR, after training"),
    ("compute_stats", "Mean/std after augmentation", "Compute normalize.mean/std over augmented training "
                                                     "samples and write them into the config"),
    ("autobatch", "Largest batch (autobatch)", "Find the largest data.batch_size that fits in memory and write "
                                               "it into the config (lr follows by linear scaling)"),
    ("apply_remedy", "Apply the selected finding's remedy", "Stop the run with a checkpoint, rewind to before "
                                                            "the evidence, change the config, start the child run"),
    ("compare_runs", "Compare two runs", "Config diff side by side and both curves on one plot (mark runs with "
                                         "space on the Runs tab)"),
    ("next_tab", "Next tab", "Config → Monitor → Runs"),
    ("quit", "Quit", "Quit (asks first while a run is in progress)"),
]
TIP = {a: h for a, _n, h in ACTIONS}


class RunCommands(Provider):
    """The run and preset actions in the command palette (Ctrl+P)."""

    def _entries(self) -> list[tuple[str, Callable, str]]:
        keys = {b.action: (b.key_display or b.key).replace("ctrl+", "^").replace("alt+", "Alt+")
                for b in NanxiTuneApp.BINDINGS if isinstance(b, Binding)}
        out = [(f"{name}  [{keys[action]}]" if action in keys else name, partial(self.app.run_action, action), help_)
               for action, name, help_ in ACTIONS]
        from nanxi_tune.tui.config_form import all_keys, group_title

        for group in C.GROUPS:
            out.append((f"Config group: {group}", partial(self.app.show_config_group, group), group_title(group)))
        for key in all_keys():  # every cheat-sheet key: "lr" finds train.base_lr
            info = C.field_info(key)
            zh = (info.json_schema_extra or {}).get("zh") or ""
            out.append((f"Edit {key}" + (f"  {zh}" if zh else ""), partial(self.app.edit_key, key),
                        info.description or ""))
        return out

    async def discover(self) -> Hits:
        for name, fn, help_ in self._entries():
            yield DiscoveryHit(name, fn, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, fn, help_ in self._entries():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), fn, help=help_)


class SteadyFooter(Footer):
    """Textual's Footer, recomposed only when the keys it shows change.

    The stock Footer rebuilds itself (and restyles every key) on each focus change; with the
    Config tab's few hundred widgets that made every tab switch ~0.3 s slower under load. The
    main screen's shown bindings are the same everywhere, so after the first compose it stays put.
    """

    _shown: tuple | None = None

    def bindings_changed(self, screen: Any) -> None:
        try:
            shown = tuple((b.key, b.action, b.description, enabled)
                          for (_n, b, enabled, _t) in screen.active_bindings.values() if b.show)
        except Exception:  # noqa: BLE001 - fall back to the stock behaviour
            shown = None
        if shown is not None and shown == self._shown and self._bindings_ready:
            return
        self._shown = shown
        super().bindings_changed(screen)


class RunDone(Message):
    def __init__(self, result: str, run_dir: Path) -> None:
        super().__init__()
        self.result = result
        self.run_dir = run_dir


class RunsPane(Vertical):
    BINDINGS = [
        Binding("space", "mark", "Mark", id="mark_run", tooltip="Mark / unmark the run under the cursor for compare",
                show=False),
        Binding("c", "app.compare_runs", "Compare", id="compare_runs", tooltip=TIP["compare_runs"], show=False),
    ]

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.marked: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("Runs — Enter opens · space marks · c compares two · F8 resumes", classes="section-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col in ("✓", "name", "status", "best mAP", "started", "step", "preset"):
            table.add_column(col, key=col)

    def cursor_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001
            return None

    def action_mark(self) -> None:
        key = self.cursor_key()
        if key is None:
            return
        if key in self.marked:
            self.marked.remove(key)
        else:
            self.marked.append(key)
            del self.marked[:-2]  # two at most: the newest two marks
        self.show_marks()

    def show_marks(self) -> None:
        table = self.query_one(DataTable)
        for row_key in list(table.rows):
            mark = str(self.marked.index(row_key.value) + 1) if row_key.value in self.marked else ""
            table.update_cell(row_key, "✓", mark)

    def pair(self) -> tuple[Path, Path] | None:
        """The two runs to compare: the two marked, or the one marked and the one under the cursor."""
        keys = [k for k in self.marked]
        cur = self.cursor_key()
        if len(keys) < 2 and cur and cur not in keys:
            keys.append(cur)
        return (Path(keys[0]), Path(keys[1])) if len(keys) >= 2 else None


class NanxiTuneApp(App):
    """The cheat-sheet as live panels; runs launched, watched, stopped and resumed from the keyboard."""

    CSS_PATH = str(Path(__file__).with_name("app.tcss"))
    TITLE = "nanxi-tune"
    COMMANDS = App.COMMANDS | {RunCommands}
    # The footer (80 columns) shows the run keys, tab, quit and the palette; everything else is in the
    # command palette (Ctrl+P) with the same key shown beside it.
    BINDINGS = [
        Binding("f5", "start_run", "Start", key_display="F5", id="start_run", tooltip=TIP["start_run"]),
        Binding("f6", "pause_run", "Pause", key_display="F6", id="pause_run", tooltip=TIP["pause_run"]),
        Binding("f7", "stop_run", "Stop", key_display="F7", id="stop_run", tooltip=TIP["stop_run"]),
        Binding("f8", "resume_run", "Resume", key_display="F8", id="resume_run", tooltip=TIP["resume_run"]),
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
        Binding("ctrl+t", "next_tab", "Tab", id="next_tab", tooltip="Next tab: Config → Monitor → Runs"),
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
                 *, max_steps: int | None = None, trainer_cls: Any = None, stats_samples: int = 200,
                 autobatch_cap_gb: float | None = None) -> None:
        super().__init__()
        # No animations: the tab underline's slide alone repainted the screen ~20 times per tab switch,
        # competing with the trainer for the CPU; over SSH it is also bytes for nothing.
        self.animation_level = "none"
        self.stats_samples = stats_samples
        self.autobatch_cap_gb = autobatch_cap_gb
        self.busy_task: str | None = None  # the running stats / autobatch / remedy task
        self.runs_listed = 0  # how many times the Runs table was filled (tests wait on it)
        import threading

        self.hangup: str | None = None  # "SIGHUP" / "SIGTERM" once the terminal went away
        self._hangup_lock = threading.Lock()
        self._hangup_recorded = False
        self._train_done = threading.Event()  # set by the training thread when its trainer has returned
        self._remedy_pending: tuple[Path, dict] | None = None
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
        self.exit_text = ""  # printed to the shell by run_app after quitting during a run
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
        yield SteadyFooter()

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
        tabs = self.query_one("#tabs", TabbedContent)
        order = ["config", "monitor", "runs"]
        tabs.active = order[(order.index(tabs.active) + 1) % 3]

    def action_tab(self, name: str) -> None:
        self.query_one("#tabs", TabbedContent).active = name

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # Panes mount lazily after the first frame: a tab activated before its pane exists (`nanxi-tune open
        # RUN` on a slow box) has nothing to refresh yet; its pane draws itself when it mounts.
        if event.pane.id == "runs" and self.query("#runs-table"):
            self.refresh_runs()
            self.query_one("#runs-table", DataTable).focus()
        elif event.pane.id == "monitor" and self.query("#mon"):
            self.call_after_refresh(self.monitor.redraw_plots)
            if self.focused is None or self.monitor not in self.focused.ancestors_with_self:
                self.monitor.focus()

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
        self.query_one("#config-status", Static).update(t, layout=False)  # fixed height: no re-layout

    def action_config_group(self, delta: int) -> None:
        self.action_tab("config")
        self.form.step_group(int(delta))

    def edit_key(self, key: str) -> None:
        """The Config tab, with the field of ``key`` shown and focused (the palette's "Edit …" entries)."""
        self.action_tab("config")
        row = self.form.show_key(key)
        self.call_after_refresh(lambda: row.editor.focus())

    def show_config_group(self, group: str) -> None:
        self.action_tab("config")
        self.form.show_group(group)

    @on(ConfigForm.GroupShown)
    def _group_shown(self, event: ConfigForm.GroupShown) -> None:
        groups = list(C.GROUPS)
        i = groups.index(event.group)
        t = Text()
        t.append(f" {event.group} ", style="bold reverse")
        t.append(f" {i + 1}/{len(groups)}  ")
        t.append(f"◀ {groups[i - 1]}  ·  {groups[(i + 1) % len(groups)]} ▶", style="dim")
        t.append("  alt+←/→", style="dim")
        self.query_one("#group-bar", Static).update(t, layout=False)

    @on(FieldFocused)
    def _field_focused(self, event: FieldFocused) -> None:
        info = C.field_info(event.key)
        if info is None:
            return
        t = Text(event.key, style="bold")
        t.append(f": {info.description or ''}")
        if C.is_live(event.key):
            t.append("  (live: may change when resuming)", style="dim")
        self.query_one("#field-help", Static).update(t, layout=False)

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
            if not value:
                return
            edited = self.form.changed_keys()
            if not edited:
                self.load_preset(value)
                return
            self.push_screen(Confirm(f"Load {value}? It replaces {len(edited)} edited key(s) on the Config tab "
                                     f"({', '.join(edited[:3])}{', …' if len(edited) > 3 else ''}); F3 saves "
                                     "them first. y loads, n keeps them."),
                             lambda yes: self.load_preset(value) if yes else None)
        self.push_screen(PresetPicker(), done)

    def load_preset(self, name_or_path: str) -> bool:
        try:
            cfg = C.load_preset(name_or_path)
        except C.ConfigError as err:
            self.notify(str(err), title="Cannot load preset", severity="error", timeout=8)
            return False
        self.form.load(cfg, C.base_of(cfg))
        if not self.running:  # the title names the run while one is in progress
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

    # --- workflows (issue 5): sweep, NMS tuning, schedule, stats, autobatch ------------------
    def _config_or_refuse(self, what: str) -> C.Config | None:
        cfg = self.form.validate_now()
        if cfg is None:
            key, msg = self.first_error()
            self.notify(f"{key}: {msg}", title=f"Cannot {what}: invalid config", severity="error", timeout=8)
        return cfg

    def action_open_sweep(self) -> None:
        from nanxi_tune.tui.sweep_view import SweepScreen

        cfg = self._config_or_refuse("sweep")
        if cfg is not None:
            self.push_screen(SweepScreen(cfg, self.runs_root))

    def trained_run(self) -> Path | None:
        """The selected run on the Runs tab, else the monitor's run, else the newest run with a checkpoint."""
        from nanxi_tune.engine import rundir
        from nanxi_tune.tui.schedule_view import newest_trained_run

        def trained(p: Path | None) -> bool:
            return p is not None and (rundir.best_checkpoint(p).exists() or rundir.last_checkpoint(p).exists())

        tabs = self.query_one("#tabs", TabbedContent)
        if tabs.active == "runs" and self.query("#runs-pane"):
            key = self.query_one("#runs-pane", RunsPane).cursor_key()
            if key and trained(Path(key)):
                return Path(key)
        if trained(self.run_dir):
            return self.run_dir
        return newest_trained_run(self.runs_root)

    def action_tune_post(self) -> None:
        from nanxi_tune.tui.post_view import TunePostScreen

        run = self.trained_run()
        if run is None:
            self.notify(f"No trained run (with a checkpoint) under {self.runs_root} yet.", severity="warning")
            return
        if self.running and run == self.run_dir:
            self.notify(f"{run.name} is still training; tune post-processing once it has stopped.",
                        severity="warning")
            return
        self.push_screen(TunePostScreen(run))

    def action_open_schedule(self) -> None:
        from nanxi_tune.tui.schedule_view import ScheduleScreen

        cfg = self._config_or_refuse("open the schedule")
        if cfg is not None:
            self.push_screen(ScheduleScreen(cfg, self.runs_root, stats_samples=self.stats_samples,
                                            autobatch_cap_gb=self.autobatch_cap_gb))

    @on(ConfigApplied)
    def _config_applied(self, message: ConfigApplied) -> None:
        """A workflow screen changed the config: the changed keys go into the panels (marked as changed)."""
        updates = dict(message.updates) or {k: v for k, (_a, v) in C.diff(self.form.config or message.cfg,
                                                                           message.cfg).items()}
        self.form.apply_updates(updates)
        shown = ", ".join(f"{k} = {v}" for k, v in updates.items())
        self.notify(f"{shown}", title=f"config updated ({message.source})", timeout=6)

    def action_compute_stats(self) -> None:
        self._start_task("stats")

    def action_autobatch(self) -> None:
        self._start_task("autobatch")

    def _start_task(self, task: str) -> None:
        if self.busy_task is not None:
            self.notify(f"{self.busy_task} is still running.", severity="warning")
            return
        cfg = self._config_or_refuse(task)
        if cfg is None:
            return
        self.busy_task = task
        what = {"stats": f"mean/std over {self.stats_samples} augmented samples",
                "autobatch": "the largest batch that fits"}[task]
        self.notify(f"Computing {what}…", title=task, timeout=4)
        self._task_show(f"{task}: starting…", 0, None)
        self._task_worker(task, cfg)

    def _task_show(self, label: str, done: float | None, total: float | None) -> None:
        box = self.query_one("#task")
        box.display = True
        self.query_one("#task-label", Static).update(label)
        bar = self.query_one("#task-progress", ProgressBar)
        bar.update(total=total, progress=done or 0)

    def _task_hide(self) -> None:
        self.query_one("#task").display = False

    @work(thread=True, exclusive=True, group="task", exit_on_error=False)
    def _task_worker(self, task: str, cfg: C.Config) -> None:
        last = [0.0]

        def progress(done: int, total: int) -> None:  # throttled: the UI hears ~5 updates a second
            now = time.monotonic()
            if now - last[0] > 0.2 or done == total:
                last[0] = now
                self.call_from_thread(self._task_show, f"{task}: {done}/{total}", done, total)

        def say(msg: str) -> None:
            self.call_from_thread(self._task_show, f"{task}: {msg}", None, None)

        try:
            if task == "stats":
                from nanxi_tune.engine import stats as ST

                st = ST.compute(cfg, self.stats_samples, progress=progress)
                new = ST.apply(cfg, st)
                updates = {"normalize.mean": list(new.normalize.mean), "normalize.std": list(new.normalize.std),
                           "normalize.source": "computed"}
            else:
                from nanxi_tune.engine import autobatch as AB

                r = AB.find_batch(cfg, cap_gb=self.autobatch_cap_gb, progress=say)
                new = AB.apply(cfg, r)
                updates = {"data.batch_size": r.batch_size}
            self.call_from_thread(self._task_done, task, new, updates, None)
        except Exception as err:  # noqa: BLE001 - shown, never crash the UI
            self.call_from_thread(self._task_done, task, None, {}, f"{type(err).__name__}: {err}")

    def _task_done(self, task: str, new: C.Config | None, updates: dict, error: str | None) -> None:
        self.busy_task = None
        self._task_hide()
        if error:
            self.notify(error, title=f"{task} failed", severity="error", timeout=10)
            return
        self.post_message(ConfigApplied(new, task, updates))

    # --- findings: one-key remedy (issue 4) ---------------------------------------------------
    def action_apply_remedy(self) -> None:
        finding = self.monitor.selected_finding() if self.query("#mon") else None
        if finding is None:
            self.notify("No finding selected: findings appear on the Monitor tab.", severity="warning")
            return
        rem = finding.get("remedy") or {}
        if not rem.get("set"):
            self.notify(rem.get("text") or "This finding has no config change to apply.",
                        title=f"{finding.get('rule')}: nothing to apply", severity="warning", timeout=8)
            return
        if self.run_dir is None:
            self.notify("No run to apply the remedy to.", severity="warning")
            return
        if self._remedy_pending is not None or self.busy_task == "remedy":
            self.notify("A remedy is already being applied.", severity="warning")
            return
        parent = self.run_dir
        if self.running:
            self._remedy_pending = (parent, finding)
            self._command("request_stop")
            self.monitor.set_state("stopping")
            self.notify(f"{finding.get('rule')}: stopping {parent.name} with a checkpoint, then applying the remedy…")
            return
        self._remedy_worker(parent, finding)

    @work(thread=True, exclusive=True, group="remedy", exit_on_error=False)
    def _remedy_worker(self, parent: Path, finding: dict) -> None:
        from nanxi_tune.engine import remedy

        self.busy_task = "remedy"
        try:
            child = remedy.apply(parent, finding)
        except Exception as err:  # noqa: BLE001
            self.busy_task = None
            self.call_from_thread(self.notify, f"{type(err).__name__}: {err}", title="Cannot apply the remedy",
                                  severity="error", timeout=10)
            return
        self.busy_task = None
        self.call_from_thread(self._start_child, child, finding)

    def _start_child(self, child: Path, finding: dict) -> None:
        from nanxi_tune.engine import remedy

        cfg = C.load(child / "config.toml")
        self._begin(child, cfg.budget.max_days)
        max_steps = self.max_steps
        resume = remedy.has_checkpoint(child)

        def make(cb: Callable) -> Any:
            cls = self._trainer_class()
            if resume:
                return cls.resume(child, callback=cb, max_steps=max_steps)
            return cls(cfg, child, callback=cb, max_steps=max_steps)
        self._train_worker(make, child, history=resume)
        changes = ", ".join(f"{k} = {v}" for k, v in (finding.get("remedy") or {}).get("set", {}).items())
        self.notify(f"{child.name}: {changes}" + (" (resumed from the parent's checkpoint)" if resume
                                                  else " (from scratch)"),
                    title=f"remedy {finding.get('rule')} → child run", timeout=10)

    # --- budget (engine.budget: the over-time-budget rule's own projection) -------------------
    @work(thread=True, exclusive=True, group="budget", exit_on_error=False)
    def _project_budget(self, run_dir: Path) -> None:
        from nanxi_tune.engine import budget

        try:
            proj = budget.latest(run_dir)
        except Exception:  # noqa: BLE001 - a half-written run: keep the last projection
            return
        self.call_from_thread(self._show_projection, run_dir, proj)

    def _show_projection(self, run_dir: Path, proj: Any) -> None:
        if run_dir == self.run_dir and self.query("#mon"):
            self.monitor.set_projection(proj)

    def _budget_tick(self) -> None:
        if self.running and self.run_dir is not None:
            self._project_budget(self.run_dir)

    # --- runs: compare two -------------------------------------------------------------------
    def action_compare_runs(self) -> None:
        from nanxi_tune.tui.compare_view import CompareScreen

        pane = self.query_one("#runs-pane", RunsPane) if self.query("#runs-pane") else None
        pair = pane.pair() if pane else None
        if pair is None:
            self.action_tab("runs")
            self.notify("Mark two runs with space on the Runs tab (or mark one and put the cursor on the other), "
                        "then press c.", severity="warning", timeout=8)
            return
        self.push_screen(CompareScreen(*pair))

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
                self.form.show_key(key).editor.focus()
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
        self._train_done.clear()
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
        try:
            self._train(make, run_dir, history)
        finally:
            self._train_done.set()

    def _train(self, make: Callable, run_dir: Path, history: bool) -> None:
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

        runs = sorted(runctl.list_runs(self.runs_root), key=lambda r: r.started or 0)
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
            if self.run_dir is not None:
                self._project_budget(self.run_dir)
        for ev in other:
            kind = ev.kind
            if kind == "state":
                mon.set_state(ev.state)
            elif kind == "diagnosis":
                mon.add_diagnosis(ev.to_json() if hasattr(ev, "to_json") else ev)
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
        self.monitor.redraw_plots(force=True)
        self.notify(f"Run {message.run_dir.name}: {message.result}",
                    severity="error" if message.result == "failed" else "information")
        self._project_budget(message.run_dir)
        if self.query_one("#tabs", TabbedContent).active == "runs":
            self.refresh_runs()
        if self._quit_pending:
            if self.hangup:
                try:
                    self._record_hangup(message.run_dir)
                except OSError:
                    pass
            else:
                self.exit_text = self.exit_note(message.run_dir, message.result)
            self.exit()
            return
        if self._remedy_pending is not None:
            parent, finding = self._remedy_pending
            self._remedy_pending = None
            self._remedy_worker(parent, finding)

    def exit_note(self, run_dir: Path, result: str) -> str:
        """What the shell shows after quitting during a run: where it stopped and how to go on."""
        ckpt = run_dir / "checkpoints" / "last.pt"
        if result != "stopped" or not ckpt.exists():
            return f"nanxi-tune: run {run_dir.name} {result}; see {run_dir / 'events.jsonl'}"
        return (f"nanxi-tune: run {run_dir.name} stopped at step {self.monitor.step} with a checkpoint ({ckpt}).\n"
                f"Resume it with (or F8 on the TUI's Runs tab):\n  nanxi-tune resume {run_dir}")

    # --- runs tab ----------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        """Re-list runs_root in a thread (each run's events are read: many runs must not stall a key)."""
        self._list_runs()

    @work(thread=True, exclusive=True, group="runs-list", exit_on_error=False)
    def _list_runs(self) -> None:
        from nanxi_tune.engine import rundir

        try:
            runs = runctl.list_runs(self.runs_root)
        except Exception as err:  # noqa: BLE001
            self.call_from_thread(self.notify, f"cannot list runs: {err}", severity="error")
            return
        rows = []
        for r in sorted(runs, key=lambda r: r.started or 0, reverse=True):
            started = datetime.fromtimestamp(r.started).strftime("%m-%d %H:%M") if r.started else "—"
            best = f"{r.best_map:.4f}" if r.best_map is not None else "—"
            rows.append((str(r.path), (r.name, r.status, best, started, str(r.step), r.preset or "")))
        self.call_from_thread(self._fill_runs, rows)

    def _fill_runs(self, rows: list[tuple[str, tuple]]) -> None:
        table = self.query_one("#runs-table", DataTable)
        pane = self.query_one("#runs-pane", RunsPane)
        if rows == getattr(self, "_runs_rows", None) and table.row_count == len(rows):
            return  # nothing changed: keep the table (and its cursor) as it is
        self._runs_rows = rows
        cur = pane.cursor_key()
        table.clear()
        for key, cells in rows:
            table.add_row("", *cells, key=key)
        keys = [k for k, _ in rows]
        if cur in keys:
            table.move_cursor(row=keys.index(cur), animate=False)
        pane.marked = [k for k in pane.marked if k in keys]
        pane.show_marks()
        self.runs_listed += 1

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
        tail = rundir.JsonlTail(run_dir / rundir.METRICS)
        self._show_history(tail.poll(), live=False)
        try:
            info = rundir.run_info(run_dir)
            status = info.status
        except Exception:  # noqa: BLE001
            status = "unknown"
        mon.set_state(status)
        for ev in rundir.read_events(run_dir):
            if ev.get("kind") == "diagnosis":
                mon.add_diagnosis(ev)
        self.query_one("#tabs", TabbedContent).active = "monitor"
        self.sub_title = f"run {run_dir.name} ({status})"
        if status in ("running", "starting", "paused", "stopping"):
            self._tail = tail
            self._tail_timer = self.set_interval(1.0, self._poll_tail)
        mon.redraw_plots(force=True)
        self._project_budget(run_dir)

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

    # --- dropped SSH / terminal closed: SIGHUP (and SIGTERM) -------------------------------------
    # Textual installs no handler for these: by default the process would die mid-step with no
    # checkpoint. Here they stop the run with a checkpoint (no question asked: nobody can answer),
    # record why in events.jsonl, then exit.
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
                    loop.add_signal_handler(sig, self._on_hangup, name)
                    self._signals_installed.append(sig)
        except (RuntimeError, NotImplementedError, ValueError):  # not the main thread / no such signals
            pass

    def _on_hangup(self, name: str) -> None:
        """Runs in the event loop (asyncio's signal handler), never inside a widget callback.

        With the terminal gone, Textual's output thread can block for good (its queue fills, nothing
        drains it), freezing the event loop. So a plain watchdog thread finishes the job: it waits for
        the training thread, records the stop, gives Textual a moment to exit, then ends the process.
        """
        if self.hangup:
            return
        self.hangup = name
        import threading

        threading.Thread(target=self._hangup_watchdog, name="nanxi-hangup", daemon=True).start()
        if self.running:
            self._quit_pending = True
            self._remedy_pending = None
            self._command("request_stop")
            try:
                self.monitor.set_state("stopping")
            except Exception:  # noqa: BLE001 - the screen may already be gone
                pass
        else:
            self.exit()

    def _hangup_watchdog(self, grace_s: float = 3.0, limit_s: float = 900.0) -> None:
        import os

        run_dir = self.run_dir
        if self.running:
            self._train_done.wait(limit_s)
            if self.trainer is not None:
                self.trainer.request_stop()  # in case the loop froze before passing the request on
            try:
                self._record_hangup(run_dir)
            except OSError:
                pass
        time.sleep(grace_s)  # Textual's own exit, if its output thread still works
        os._exit(0)

    def _record_hangup(self, run_dir: Path | None) -> None:
        """After the trainer has closed its files: one line in events.jsonl saying why the run stopped."""
        from nanxi_tune.engine import rundir

        with self._hangup_lock:
            if self._hangup_recorded or run_dir is None:
                return
            self._hangup_recorded = True

        w = rundir.JsonlWriter(run_dir / rundir.EVENTS)
        try:
            w.write({"kind": "log", "level": "warning", "time": time.time(), "signal": self.hangup,
                     "message": f"{self.hangup}: the terminal went away; the TUI stopped the run with a "
                                f"checkpoint. Resume with: nanxi-tune resume {run_dir}"})
        finally:
            w.close()

    def on_unmount(self) -> None:
        """Whatever ends the app (a hang-up, a crash of the driver), never leave a run training unattended."""
        import asyncio

        if self.running:
            if self.trainer is not None:
                self.trainer.request_stop()
            else:
                self._pending.append("request_stop")
        try:
            loop = asyncio.get_running_loop()
            for sig in getattr(self, "_signals_installed", []):
                loop.remove_signal_handler(sig)
        except RuntimeError:
            pass

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
    app = NanxiTuneApp(preset=preset, open_run=open_run, runs_root=runs_root)
    result = app.run()
    if app.exit_text:  # plain print after the screen is restored: the terminal wraps, paths copy whole
        print(app.exit_text)
    return result


__all__ = ["NanxiTuneApp", "run_app", "key_of"]
