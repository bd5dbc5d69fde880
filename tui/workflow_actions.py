"""The app's workflow keys: the notes' methods (seven-stars sweep, NMS tuning, tuning schedule, mean/std, largest
batch), one-key remedies of findings, the budget projection and run comparison."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from textual import work
from textual.widgets import ProgressBar, Static, TabbedContent

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.run.runctl import Op
from nanxi_tune.tui.config_form import ConfigForm
from nanxi_tune.tui.monitor import Monitor
from nanxi_tune.tui.runs_view import RunsPane
from nanxi_tune.tui.session import RunSession
from nanxi_tune.tui.sweep_view import ConfigApplied


def _descent_progress(child: Path) -> str:
    """"lr trial 0.0003 step 12 (trial 2)" or "trial with the change step 12": the remedy's trial training now,
    read from the child's trials folder."""
    from nanxi_tune.engine.run import runctl

    trials = sorted((p for p in (child / "trials").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not trials:
        return "preparing the child…"
    st = runctl.status(trials[-1])
    name = trials[-1].name
    if name.startswith("lr-"):
        return f"lr trial {name.removeprefix('lr-')} step {st.step} (trial {len(trials)})"
    return f"trial {'with' if name == 'remedy' else 'without'} the change step {st.step}"


class WorkflowActions:
    """Mixed into the app (tui.app.NanxiTuneApp); handlers follow Textual's on_<message> naming.

    What it needs of the app is declared below: its state, the form and monitor it composes, and the other
    actions' ``running`` / ``run_dir`` / ``trainer_class`` / ``_show`` (RunActions) and ``first_error``
    (ConfigActions); Textual's App gives ``notify``, ``push_screen``, ``query_one``, ``call_from_thread``."""

    form: ConfigForm  # the app's properties
    monitor: Monitor
    runs_root: Path  # set in NanxiTuneApp.__init__
    session: RunSession | None
    busy_task: str | None
    stats_samples: int
    autobatch_cap_gb: float | None
    max_steps: int | None
    remedy_child: Path | None
    _remedy_pending: tuple[Path, dict] | None

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

    def action_show_predictions(self) -> None:
        from nanxi_tune.tui.predictions_view import PredictionsScreen

        run = self.trained_run()
        if run is None:
            self.notify(f"No trained run (with a checkpoint) under {self.runs_root} yet.", severity="warning")
            return
        self.push_screen(PredictionsScreen(run))

    def action_run_unattended(self) -> None:
        from nanxi_tune.tui.autopilot_view import ask_and_start

        cfg = self._config_or_refuse("start the autopilot")
        if cfg is not None:
            ask_and_start(self, cfg, self.runs_root)

    def action_open_schedule(self) -> None:
        from nanxi_tune.tui.schedule_view import ScheduleScreen

        cfg = self._config_or_refuse("open the schedule")
        if cfg is not None:
            self.push_screen(ScheduleScreen(cfg, self.runs_root, stats_samples=self.stats_samples,
                                            autobatch_cap_gb=self.autobatch_cap_gb))

    def on_config_applied(self, message: ConfigApplied) -> None:
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
                from nanxi_tune.engine.workflows import normalization as ST

                st = ST.compute(cfg, self.stats_samples, progress=progress)
                updates = ST.updates(st)
                new = C.with_updates(cfg, updates, "stats")
            else:
                from nanxi_tune.engine.workflows import autobatch as AB

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
        if not rem.get("set"):  # one line: the remedy's own text is on screen below the findings
            how = "its remedy (below) says how" if rem.get("text") else "it has no config change"
            self.notify(f"{finding.get('rule')}: nothing r can apply; {how}", severity="warning", timeout=6)
            return
        if self.run_dir is None:
            self.notify("No run to apply the remedy to.", severity="warning")
            return
        if self.session.owns_run is False and self.running and not self.session.alive and not self.session.ended:
            self.notify("The run is still starting; apply the remedy once it trains.", severity="warning")
            return
        if self._remedy_pending is not None or self.busy_task == "remedy":
            self.notify("A remedy is already being applied.", severity="warning")
            return
        parent = self.run_dir
        if self.running and (self.session.alive or self.session.owns_run):
            self._remedy_pending = (parent, finding)
            self.session.send(Op.STOP)
            self.monitor.set_state("stopping")
            self.notify(f"{finding.get('rule')}: stopping {parent.name} with a checkpoint, then applying the remedy…")
            return
        self._remedy_worker(parent, finding)

    @work(thread=True, exclusive=True, group="remedy", exit_on_error=False)
    def _remedy_worker(self, parent: Path, finding: dict) -> None:
        """The remedy as its own process (`nanxi-tune remedy … --no-train`): its trials (the lr's, or the change
        against the unchanged run) go on if the TUI quits, and F7 / `nanxi-tune ctl CHILD stop` stop them. Once the
        child is made, it trains here as before."""
        import json
        import tempfile

        from nanxi_tune.engine.run import runctl

        rule = str(finding.get("rule"))
        self.busy_task = "remedy"
        child = rundir.new_run_dir(parent.parent, f"{parent.name}-{rule}")
        self.remedy_child = child
        with tempfile.NamedTemporaryFile("w", prefix="nanxi-finding-", suffix=".json", delete=False) as f:
            json.dump(finding, f, allow_nan=True)
        log = Path(tempfile.mkstemp(prefix="nanxi-remedy-", suffix=".log")[1])
        proc = runctl.start_detached(["remedy", str(parent), "--finding", f.name, "--child-dir", str(child),
                                      "--no-train", "--quiet"], log)
        while proc.poll() is None:
            self.call_from_thread(self._task_show, f"remedy {rule}: {_descent_progress(child)} — F7 stops it",
                                  None, None)
            time.sleep(0.5)
        self.remedy_child = None
        self.busy_task = None
        self.call_from_thread(self._task_hide)
        Path(f.name).unlink(missing_ok=True)
        said = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if proc.returncode == 0 and (child / rundir.CONFIG).exists():
            log.unlink(missing_ok=True)
            self.call_from_thread(self._start_child, child, finding)
        elif proc.returncode == 3:
            self.call_from_thread(self.notify, f"{rule}: the remedy's trials were stopped; nothing was applied and "
                                  f"{parent.name} is as it was", title="remedy stopped", timeout=8)
        else:
            self.call_from_thread(self.notify, (said[-1] if said else f"exit {proc.returncode}") + f" (log: {log})",
                                  title="Cannot apply the remedy", severity="error", timeout=10)

    def action_dismiss_finding(self) -> None:
        """Close the selected finding without applying it (its pinned rewind checkpoint is released)."""
        from nanxi_tune.engine.workflows import remedy

        finding = self.monitor.selected_finding() if self.query("#mon") else None
        if finding is None or self.run_dir is None or finding.get("rule") == "error":
            self.notify("No finding selected: findings appear on the Monitor tab.", severity="warning")
            return
        try:
            remedy.dismiss(self.run_dir, finding)
        except Exception as err:  # noqa: BLE001 - shown, never crash the UI
            self.notify(f"{type(err).__name__}: {err}", title="Cannot dismiss", severity="error", timeout=10)
            return
        self.monitor.mark_selected("dismissed")
        self.notify(f"{finding.get('rule')} dismissed; its pinned checkpoint is released", timeout=5)

    def _start_child(self, child: Path, finding: dict) -> None:
        """The child trains in this app, from the parent's checkpoint when the remedy rewinds, else from scratch."""
        from nanxi_tune.engine.workflows import remedy

        cfg = C.load(child / rundir.CONFIG)
        max_steps, resume = self.max_steps, remedy.has_checkpoint(child)

        def make() -> Any:
            cls = self.trainer_class()
            return cls.resume(child, max_steps=max_steps) if resume else cls(cfg, child, max_steps=max_steps)
        self.session.close()
        self._show(RunSession.in_process(self, child, make), cfg.budget.max_days)
        changes = ", ".join(f"{k} = {v}" for k, v in (finding.get("remedy") or {}).get("set", {}).items())
        self.notify(f"{child.name}: {changes}" + (" (resumed from the parent's checkpoint)" if resume
                                                  else " (from scratch)"),
                    title=f"remedy {finding.get('rule')} → child run", timeout=10)

    # --- budget (engine.diagnosis.projection: the over-time-budget rule's own projection) -------------------
    @work(thread=True, exclusive=True, group="budget", exit_on_error=False)
    def _project_budget(self, run_dir: Path) -> None:
        from nanxi_tune.engine.diagnosis import projection

        try:
            proj = projection.latest(run_dir)
        except Exception:  # noqa: BLE001 - a half-written run: keep the last projection
            return
        self.call_from_thread(self._show_projection, run_dir, proj)

    def _show_projection(self, run_dir: Path, proj: Any) -> None:
        if run_dir == self.run_dir and self.query("#mon"):
            self.monitor.set_projection(proj)

    def _budget_tick(self) -> None:
        if self.running:
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
