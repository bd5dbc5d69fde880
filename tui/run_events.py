"""What a run tells the app: its history when attached, its events as they come (drained in batches, so the UI never
drowns), and its end (the exit note). Mixed into the app beside tui.run_actions."""

from __future__ import annotations


from textual.widgets import TabbedContent

from nanxi_tune.engine.run import events as E
from nanxi_tune.engine.run import rundir
from nanxi_tune.tui.bridge import RunUpdate
from nanxi_tune.tui.runs_view import RunsPane
from nanxi_tune.tui.session import Kind, RunEnded, RunHistory, RunSession


class RunEvents:
    """Mixed into the app (tui.app.NanxiTuneApp). Needs of it: ``session`` (the RunSession shown), the monitor and
    the config form it composes, ``notify``, ``set_timer``, and RunActions' ``_sync_lock``."""

    def on_run_history(self, message: RunHistory) -> None:
        if message.session is not self.session or not self.query("#mon"):
            return
        mon = self.monitor
        if message.reset:
            mon.reset(message.session.run_dir.name, mon.max_days)
        mon.add_train([r for r in message.rows if r.get("split", "train") == "train"], live=False)
        mon.add_val([r for r in message.rows if r.get("split") == "val"])
        for ev in message.events:
            if isinstance(ev, E.Diagnosis):
                mon.add_diagnosis(ev.to_json())
            elif isinstance(ev, E.StateChanged):
                mon.set_state(ev.state)
            elif isinstance(ev, E.PlanChanged):
                mon.set_plan(ev.text)
        mon.redraw_plots(force=True)
        self._project_budget(message.session.run_dir)

    def on_run_update(self, message: RunUpdate) -> None:
        if self.session is not None and message.bridge is self.session.bridge:
            self._drain()

    def _drain_timer(self) -> None:
        if self.session is not None:
            self._drain()
            self._sync_lock()  # an attached run's liveness is learnt by polling: lock once it is known alive

    def _drain(self) -> None:
        if not self.query("#mon"):  # not mounted yet, or the app is closing
            return
        train, val, other = self.session.bridge.drain()
        mon = self.monitor
        mon.add_train(train)
        if val:
            mon.add_val(val)
            self._project_budget(self.session.run_dir)
        for ev in other:
            self._on_event(ev)

    def _on_event(self, ev: E.Event) -> None:
        mon = self.monitor
        if isinstance(ev, E.StateChanged):
            mon.set_state(ev.state)
            self._sync_lock()
        elif isinstance(ev, E.Diagnosis):
            mon.add_diagnosis(ev.to_json())
            if ev.severity != "info":
                self.notify(f"[{ev.section}] {ev.message}", title=f"diagnosis: {ev.rule}",
                            severity="warning" if ev.severity == "warning" else "error", timeout=8)
        elif isinstance(ev, E.Error):
            mon.add_diagnosis(ev.step, "error", "error", "", f"{ev.error} — {ev.hint}")
            self.notify(f"{ev.error}\n{ev.hint}", title="Run failed", severity="error", timeout=15)
        elif isinstance(ev, E.CommandAck):
            if self.form.locked_by:  # the panels follow the run's live edits, whoever made them
                for key, _old, new in ev.changes:
                    self.form.set_key(key, new)
            mine = ev.sender.startswith("tui")
            title = f"{ev.op}: {'applied' if ev.applied else 'refused'}"
            if mine:
                self.notify(ev.message, title=title, severity="information" if ev.applied else "error",
                            timeout=6 if ev.applied else 12)
            else:  # another client's command: one line (its sender had the whole answer; journal.md keeps it)
                first = ev.message.split("\n")[0].split("; ")[0]
                self.notify(f"{title} (from {ev.sender.split(' pid')[0]}): {first[:70]}",
                            severity="information" if ev.applied else "warning", timeout=5)
        elif isinstance(ev, E.PlanChanged):
            mon.set_plan(ev.text)
        elif isinstance(ev, E.CheckpointSaved):  # on the status line, not a toast: it comes often
            mon.set_checkpoint(ev.step, ev.best)
        elif isinstance(ev, E.Log) and ev.level == "warning":
            self.notify(ev.message, severity="warning", timeout=6)

    def on_run_ended(self, message: RunEnded) -> None:
        s = message.session
        if s is not self.session:
            return
        self._drain()
        self.last_result = message.state
        self._sync_lock()
        mon = self.monitor
        mon.set_state(message.state)
        mon.redraw_plots(force=True)
        if s.kind != Kind.ATTACHED or s.status.owner is not None or mon.step:
            self.notify(f"Run {s.run_dir.name}: {message.state}",
                        severity="error" if message.state in ("failed", "dead") else "information")
        self.sub_title = f"run {s.run_dir.name} ({message.state})"
        self._project_budget(s.run_dir)
        if self.query_one("#tabs", TabbedContent).active == "runs":
            self.query_one("#runs-pane", RunsPane).refresh_runs()
        if self._quit_pending:
            self.exit_text = self.exit_note(s, message.state)
            self.exit()
        elif self._remedy_pending is not None:
            parent, finding = self._remedy_pending
            self._remedy_pending = None
            self._remedy_worker(parent, finding)

    def exit_note(self, s: RunSession, result: str) -> str:
        """What the shell shows after quitting: where the run stopped and how to go on, or that it goes on."""
        if s.kind != Kind.IN_PROCESS and not s.ended:
            return (f"nanxi-tune: {s.run_dir.name} keeps training in its own process.\n"
                    f"Come back to it with:\n  nanxi-tune open {s.run_dir}")
        ckpt = rundir.last_checkpoint(s.run_dir)
        if result != "stopped" or not ckpt.exists():
            return f"nanxi-tune: run {s.run_dir.name} {result}; see {s.run_dir / rundir.EVENTS}"
        return (f"nanxi-tune: run {s.run_dir.name} stopped at step {self.monitor.step} with a checkpoint ({ckpt}).\n"
                f"Resume it with (or F8 on the TUI's Runs tab):\n  nanxi-tune resume {s.run_dir}")
