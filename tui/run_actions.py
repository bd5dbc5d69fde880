"""The app's run keys and what a run tells it: start (in-process or detached), attach, pause, stop, live edits and
resume, remedies, and the run's events on the monitor. One RunSession (tui.session) holds the run shown."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from textual import work
from textual.widgets import TabbedContent

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.run import listing
from nanxi_tune.engine.workflows.autopilot_plan import is_autopilot
from nanxi_tune.engine.workflows.study import is_study
from nanxi_tune.engine.run.runctl import Op
from nanxi_tune.tui.config_form import ConfigForm
from nanxi_tune.tui.monitor import Monitor
from nanxi_tune.tui.runs_view import RunsPane
from nanxi_tune.tui.dialogs import Confirm, LiveEditDialog
from nanxi_tune.tui.session import Kind, RunSession


class RunActions:
    """Mixed into the app (tui.app.NanxiTuneApp); handlers follow Textual's on_<message> naming."""

    session: RunSession | None = None
    last_result: str | None = None
    # what it needs of the app (set in NanxiTuneApp.__init__, or the app's properties), besides Textual's App
    # (``notify``, ``push_screen``, ``exit``) and WorkflowActions' ``_remedy_worker`` / ``_project_budget``
    form: ConfigForm
    monitor: Monitor
    runs_root: Path
    max_steps: int | None
    hangup: str | None
    exit_text: str
    remedy_child: Path | None
    _remedy_pending: tuple[Path, dict] | None
    _quit_pending: bool
    _trainer_cls: Any

    # --- what the run is -----------------------------------------------------------------------
    @property
    def run_dir(self) -> Path | None:
        return self.session.run_dir if self.session else None

    @property
    def running(self) -> bool:
        """A run is shown and not over (in this process, detached or attached)."""
        return self.session is not None and not self.session.ended

    @property
    def run_active(self) -> bool:
        """A run trains now that competes with this app for the machine (asked by the sweep screen)."""
        return self.running and (self.session.kind != Kind.ATTACHED or self.session.alive)

    def trainer_class(self) -> Any:
        """The class that trains in this process: engine.train.trainer.Trainer (imported here, in the worker: torch is
        heavy), or what the app was given (tests give a fast fake that speaks the same run-folder protocol)."""
        if self._trainer_cls is None:
            from nanxi_tune.engine.train.trainer import Trainer

            self._trainer_cls = Trainer
        return self._trainer_cls

    @property
    def trainer(self) -> Any:
        return self.session.trainer if self.session else None

    def _show(self, session: RunSession, max_days: float) -> None:
        if self.session is not None and self.session is not session:
            self.session.close()
        self.session = session
        self.monitor.reset(session.run_dir.name, max_days)
        self.query_one("#tabs", TabbedContent).active = "monitor"
        self.monitor.focus()  # PageUp/PageDown/arrows scroll the monitor
        self.sub_title = f"run {session.run_dir.name} ({session.kind.value})"
        self._sync_lock()

    def _sync_lock(self) -> None:
        """The Config tab shows the config of the run that trains and takes only its live keys (Enter on one
        applies it); another process's run brings its own values into the panels."""
        if not self.query("#form"):  # the app is closing
            return
        name = self.session.run_dir.name if self.run_active else ""
        if name == self.form.locked_by:
            return
        if name:
            try:
                ran = C.load(self.session.run_dir / rundir.CONFIG)
            except C.ConfigError:
                ran = None
            if ran is not None and (self.form.config is None or C.diff(ran, self.form.config)):
                self.form.load(ran, C.base_of(ran))
        self.form.lock_to_live(name)
        self.form.validate_now()

    def on_config_form_apply_live(self, message: Any) -> None:
        if (s := self._live_session()) is not None:
            self.notify(s.send(Op.SET, {message.key: message.value}), timeout=3)

    def _may_replace(self) -> bool:
        """A new run may take the monitor unless this app's own trainer still runs."""
        if self.session is not None and self.session.owns_run:
            self.notify(f"{self.session.run_dir.name} is already running in this app; stop it first (F7).",
                        severity="warning")
            return False
        if self.running and self.session.alive:
            self.notify(f"{self.session.run_dir.name} keeps training on its own; come back with nanxi-tune open "
                        f"{self.session.run_dir}", timeout=8)
        return True

    # --- start: F5 in this process, Alt+D detached ----------------------------------------------------
    def _valid_config(self) -> C.Config | None:
        cfg = self.form.validate_now()
        if cfg is None:
            key, msg = self.first_error()
            self.notify(f"{key}: {msg}", title="Cannot start: invalid config", severity="error", timeout=8)
            try:
                self.query_one("#tabs", TabbedContent).active = "config"
                self.form.show_key(key).editor.focus()
            except Exception:  # noqa: BLE001 - a general (non-field) error has no editor
                pass
            return None
        from nanxi_tune.engine.data.datapaths import DataError, check

        try:
            check(cfg)  # a missing data path is refused here, before a run folder is made
        except DataError as err:
            self.notify(str(err), title="Cannot start: data not found", severity="error", timeout=10)
            return None
        return cfg

    def action_start_run(self) -> None:
        if not self._may_replace() or (cfg := self._valid_config()) is None:
            return
        if cfg.train.devices != 1:  # data-parallel: its own process group through torchrun
            self.notify(f"train.devices = {cfg.train.devices}: a data-parallel run starts through torchrun, "
                        "detached (as Alt+D)", timeout=6)
            self.action_start_detached()
            return
        run_dir = rundir.new_run_dir(self.runs_root, rundir.run_name(cfg.preset))  # as the CLI names it
        max_steps = self.max_steps

        def make() -> Any:
            return self.trainer_class()(cfg, run_dir, max_steps=max_steps)
        self._show(RunSession.in_process(self, run_dir, make), cfg.budget.max_days)

    def action_start_detached(self) -> None:
        if not self._may_replace() or (cfg := self._valid_config()) is None:
            return
        run_dir = rundir.new_run_dir(self.runs_root, rundir.run_name(cfg.preset))  # as the CLI names it
        argv = RunSession.detached_argv(cfg, run_dir)
        if self.max_steps:
            argv += ["--max-steps", str(self.max_steps)]
        self._show(RunSession.detached(self, run_dir, argv), cfg.budget.max_days)
        self.notify(f"{run_dir.name} trains as its own process: quitting or losing SSH leaves it training; come "
                    f"back with  nanxi-tune open {run_dir}", title="started detached", timeout=10)

    # --- attach: Runs tab Enter, `nanxi-tune open RUN` ------------------------------------------------
    def on_runs_pane_open(self, message: RunsPane.Open) -> None:
        self.open_run(message.run_dir)

    def open_run(self, run_dir: Path) -> None:
        """Show a run's curves; follow it, with F6/F7/F8 over its channel, while a trainer owns it."""
        run_dir = Path(run_dir)
        if is_study(run_dir):  # a sweep: its own screen follows and drives the study
            self.open_study(run_dir)
            return
        if is_autopilot(run_dir):
            from nanxi_tune.tui.autopilot_view import AutopilotScreen

            self.push_screen(AutopilotScreen(run_dir))
            return
        if not (run_dir / rundir.CONFIG).exists():
            self.notify(f"{run_dir}: no such run folder", severity="error")
            return
        if self.session is not None and self.session.run_dir == run_dir and self.running:
            self.query_one("#tabs", TabbedContent).active = "monitor"
            return
        if not self._may_replace():
            return
        try:
            max_days = C.load(run_dir / rundir.CONFIG).budget.max_days
        except C.ConfigError:
            max_days = 4.0
        self._show(RunSession.attach(self, run_dir), max_days)

    @work(thread=True, group="remedy-stop", exit_on_error=False)
    def _stop_remedy(self, child: Path) -> None:
        end = time.monotonic() + 60
        while True:  # the remedy's process may still be loading torch: its channel opens in a few seconds
            try:
                ack = runctl.request(child, Op.STOP, sender=runctl.sender_name("tui"), timeout=30)
                break
            except runctl.NotAlive as err:
                if self.remedy_child != child or time.monotonic() > end:
                    self.call_from_thread(self.notify, str(err), severity="warning")
                    return
                time.sleep(0.3)
        self.call_from_thread(self.notify, ack["message"] if ack else "stop sent", title="remedy", timeout=5)

    def open_study(self, folder: Path) -> None:
        from nanxi_tune.engine.workflows.study import StudyError, read_spec
        from nanxi_tune.tui.sweep_view import SweepScreen

        try:
            cfg = read_spec(folder).cfg
        except (StudyError, C.ConfigError) as err:
            self.notify(str(err), severity="error")
            return
        self.push_screen(SweepScreen(cfg, self.runs_root, sweep_dir=folder))

    # --- commands: F6 pause / continue, F7 stop --------------------------------------------------------
    def _live_session(self) -> RunSession | None:
        if not self.running or (self.session.kind == Kind.ATTACHED and not self.session.alive):
            self.notify("No live run: start one (F5) or open a live one on the Runs tab.", severity="warning")
            return None
        return self.session

    def action_pause_run(self) -> None:
        if (s := self._live_session()) is not None:
            op = Op.CONTINUE if (s.state == "paused" or self.monitor.state == "paused") else Op.PAUSE
            self.notify(s.send(op), timeout=3)

    def action_stop_run(self) -> None:
        if self.remedy_child is not None:  # a remedy's lr trials: stop them, nothing is applied
            self._stop_remedy(self.remedy_child)
            return
        if (s := self._live_session()) is not None:
            self.notify(f"{s.send(Op.STOP)}: a checkpoint is written first", timeout=4)
            self.monitor.set_state("stopping")

    # --- F8: live edits of a live run, or resume a stopped one ------------------------------------------
    def resume_target(self) -> Path | None:
        tabs = self.query_one("#tabs", TabbedContent)
        if tabs.active == "runs" and (key := self.query_one("#runs-pane", RunsPane).cursor_key()):
            return Path(key)
        if self.run_dir is not None:
            return self.run_dir
        runs = listing.list_runs(self.runs_root)
        return Path(runs[0].path) if runs else None

    def live_prefill(self, ran: C.Config) -> str:
        """The Config tab's edits of live keys against the run's config, as key=value text. Only keys edited on
        the tab (vs its preset) count: a run started elsewhere differs from the tab's preset in keys the user
        never touched, and offering those would silently change them (train.epochs) with the next Enter."""
        cur = self.form.config
        if cur is None:
            return ""
        edited = set(self.form.changed_keys())
        return " ".join(f"{k}={C.toml_value(b)}" for k, (_a, b) in C.diff(ran, cur).items()
                        if C.is_live(k) and k in edited)

    def action_resume_run(self) -> None:
        if self.session is not None:
            self._sync_lock()  # the panels hold the live run's config before its edits are read from them
        target = self.resume_target()
        if target is None:
            self.notify("No run to resume: start one (F5) or pick one on the Runs tab.", severity="warning")
            return
        try:
            ran = C.load(target / rundir.CONFIG)
        except C.ConfigError as err:
            self.notify(str(err), title="Cannot read the run's config", severity="error", timeout=10)
            return
        live = runctl.status(target).alive or (self.running and self.run_dir == target and self.session.kind != Kind.ATTACHED)
        if live:
            if self.run_dir != target:
                self.open_run(target)

            def apply(updates: dict | None) -> None:
                if updates:
                    self.notify(self.session.send(Op.SET, updates), timeout=3)
            self.push_screen(LiveEditDialog(target, ran, self.live_prefill(ran), live=True), apply)
            return
        if self.session is not None and self.session.owns_run:
            self.notify("A run is in progress in this app; stop it (F7) before resuming another.", severity="warning")
            return
        if not rundir.last_checkpoint(target).exists():
            self.notify(f"{target.name} has no checkpoint to resume from.", severity="error")
            return

        def done(updates: dict | None) -> None:
            if updates is not None:
                self.resume(target, updates)
        self.push_screen(LiveEditDialog(target, ran, self.live_prefill(ran), live=False), done)

    def resume(self, run_dir: Path, updates: dict | None = None) -> None:
        if not self._may_replace():
            return
        run_dir, max_steps = Path(run_dir), self.max_steps
        cfg = C.load(run_dir / rundir.CONFIG)

        def make() -> Any:
            return self.trainer_class().resume(run_dir, updates=updates or None, max_steps=max_steps)
        self._show(RunSession.in_process(self, run_dir, make), cfg.budget.max_days)

    # --- quit, hang-up ---------------------------------------------------------------------------------
    async def action_quit(self) -> None:
        s = self.session
        if s is None or not s.owns_run:
            if s is not None and s.alive:
                self.exit_text = self.exit_note(s, s.state)
            self.exit()
            return

        def done(yes: bool | None) -> None:
            if yes:
                self._quit_pending = True
                s.request_stop_now()
                self.monitor.set_state("stopping")
                self.notify("Stopping: writing a checkpoint, then quitting…")
        self.push_screen(Confirm("A run is training in this app. Write a checkpoint, stop it and quit?\n"
                                 "(Runs started with Alt+D train on after the TUI quits or SSH drops.)"), done)

    def on_hangup(self, name: str) -> None:
        """SIGHUP / SIGTERM (the terminal went away): an in-process run stops with a checkpoint, recorded in its
        events; a detached or attached one goes on. A watchdog thread ends the process even if Textual's output
        thread froze with the terminal gone."""
        if self.hangup:
            return
        self.hangup = name
        import threading

        s = self.session
        if s is not None and s.owns_run:
            self._quit_pending = True
            self._remedy_pending = None
            s.request_stop_now()
        threading.Thread(target=self._hangup_watchdog, args=(s,), name="nanxi-hangup", daemon=True).start()
        if s is None or not s.owns_run:
            self.exit()

    def _hangup_watchdog(self, s: RunSession | None, grace_s: float = 3.0) -> None:
        import os

        if s is not None and s.owns_run:
            s.stop_for_hangup(self.hangup)
        time.sleep(grace_s)  # Textual's own exit, if its output thread still works
        os._exit(0)

    def on_unmount(self) -> None:
        """Whatever ends the app, never leave this app's own trainer running unattended."""
        if self.session is not None:
            if self.session.owns_run:
                self.session.request_stop_now()
            self.session.close()
