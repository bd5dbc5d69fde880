"""The notes' tuning schedule as a Screen: round 1 (QMV), round 2 (RSR), after training.

``app.push_screen(ScheduleScreen(cfg, runs_root))``. Each row is a step of engine.workflows.schedule.SCHEDULE
with what the journal recorded for it; Enter (or F5) does the step's action — a seven-stars sweep
(pushes SweepScreen), mean/std after augmentation, the largest batch, NMS tuning on the newest trained
run (pushes TunePostScreen), or a config step (sets the round's eval mode). Config changes go out as
``ConfigApplied`` messages; ``self.cfg`` follows them. Torch loads only in workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.run import listing
from nanxi_tune.engine.workflows import schedule as SCH
from nanxi_tune.tui.post_view import TunePostScreen
from nanxi_tune.tui.sweep_view import ConfigApplied, SweepScreen


def newest_trained_run(root: Path) -> Path | None:
    runs = [r.path for r in listing.list_runs(root) if rundir.best_checkpoint(r.path).exists()
            or rundir.last_checkpoint(r.path).exists()]
    return runs[0] if runs else None


def _short_round(name: str) -> str:
    """"round 1 — QMV 100" → "R1 QMV"; "after training" → "after" (the table fits 80 columns)."""
    head = name.split(" — ")
    if head[0].startswith("round "):
        return f"R{head[0].split()[1]}" + (f" {head[1].split()[0]}" if len(head) > 1 else "")
    return head[0].split()[0]


class ScheduleScreen(Screen):
    BINDINGS = [
        Binding("enter", "do", "Do step", priority=False),
        Binding("f5", "do", "Do step", show=False),
        # F8 applies, as on the sweep screen; F7 is Stop everywhere
        Binding("f8", "apply", "Apply result", tooltip="Apply the stats / autobatch result to the config"),
        Binding("a", "apply", "Apply result", show=False),
        Binding("u", "unattended", "Run unattended", id="run_unattended",
                tooltip="The whole schedule on this config's data within a budget, detached (the autopilot)"),
        Binding("r", "refresh", "Refresh"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, cfg: C.Config, runs_root: Path | str = "runs", stats_samples: int = 200,
                 autobatch_cap_gb: float | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.runs_root = Path(runs_root)
        self.stats_samples = stats_samples
        self.autobatch_cap_gb = autobatch_cap_gb
        self.recorded: list[tuple[SCH.Step, list[str]]] = []
        self.proposal: tuple[C.Config, str, dict[str, Any]] | None = None
        self.busy = False

    def compose(self) -> ComposeResult:
        yield Label("[b]调参流程 the tuning schedule[/b] — round 1 QMV 100 → round 2 RSR 3000 → after training",
                    id="sched-title")
        yield DataTable(id="sched-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="sched-detail")
        yield Footer(compact=True)  # 80 columns: the screen's keys and ^p fit

    def on_mount(self) -> None:
        t = self.query_one("#sched-table", DataTable)
        t.add_columns("round", "step", "action", "§", "journal")
        self.action_refresh()
        t.focus()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    # --- rows ------------------------------------------------------------------------------------------
    def action_refresh(self) -> None:
        self.recorded = SCH.status(self.runs_root)
        t = self.query_one("#sched-table", DataTable)
        row = t.cursor_row
        t.clear()
        for step, lines in self.recorded:
            t.add_row(_short_round(step.round), step.title, step.action, step.section,
                      f"{len(lines)} record{'s' if len(lines) != 1 else ''}" if lines else "—", key=step.id)
        if self.recorded:
            t.move_cursor(row=min(row, len(self.recorded) - 1))
        self._detail()

    def on_data_table_row_highlighted(self, _event) -> None:
        self._detail()

    def on_data_table_row_selected(self, event) -> None:  # Enter on the table
        event.stop()
        self.action_do()

    def current(self) -> SCH.Step:
        t = self.query_one("#sched-table", DataTable)
        return SCH.SCHEDULE[max(0, min(t.cursor_row, len(SCH.SCHEDULE) - 1))]

    def _detail(self, extra: str = "") -> None:
        if not self.recorded:
            return
        step = self.current()
        lines = dict((s.id, ls) for s, ls in self.recorded).get(step.id, [])
        now = ", ".join(f"{k} = {C.flatten(self.cfg).get(k)}" for k in step.keys)
        text = [f"[b]{step.round}: {step.title}[/b]  (§{step.section}, action: {step.action})", step.note,
                f"now: {now}"]
        if step.val_data_mode:
            text.append(f"validation for this round: {step.val_data_mode} (config: {self.cfg.eval.val_data_mode})")
        text += ["", "[b]journal[/b]:"] + ([f"• {ln}" for ln in lines] or ["  nothing recorded yet"])
        if extra:
            text += ["", extra]
        self.query_one("#sched-detail", Static).update("\n".join(text))

    # --- actions ---------------------------------------------------------------------------------------
    def action_do(self) -> None:
        step = self.current()
        if self.busy:
            self.notify("busy: wait for the running action", severity="warning")
            return
        if step.action == "sweep":
            self.app.push_screen(SweepScreen(self.cfg, self.runs_root, key=step.keys[0], start=step.start,
                                             on_apply=self._take))
        elif step.action == "tune-post":
            run = newest_trained_run(self.runs_root)
            if run is None:
                self.notify(f"no trained run in {self.runs_root} yet", severity="warning")
                return
            self.app.push_screen(TunePostScreen(run))
        elif step.action in ("stats", "autobatch"):
            self.busy = True
            self._detail(f"running {step.action}…")
            self.run_worker(lambda: self._work(step.action), thread=True, exclusive=True, group="schedule",
                            exit_on_error=False)
        elif step.set:
            new = C.with_updates(self.cfg, step.set, f"schedule {step.id}")
            self._take(new)
            self.post_message(ConfigApplied(new, f"schedule {step.id}", dict(step.set)))
            self.notify(", ".join(f"{k} = {v}" for k, v in step.set.items()))
            self._detail()
        else:
            self.notify(f"edit {', '.join(step.keys)} in the config panels", severity="information")

    def _work(self, action: str) -> None:
        try:
            if action == "stats":
                from nanxi_tune.engine.workflows import normalization as ST

                st = ST.compute(self.cfg, self.stats_samples)
                upd = ST.updates(st)
                new = C.with_updates(self.cfg, upd, "stats")
                msg = (f"mean {upd['normalize.mean']}, std {upd['normalize.std']} over {st.samples} augmented "
                       "samples — F8 applies")
            else:
                from nanxi_tune.engine.workflows import autobatch as AB

                r = AB.find_batch(self.cfg, cap_gb=self.autobatch_cap_gb)
                new = AB.apply(self.cfg, r)
                msg = (f"data.batch_size = {r.batch_size} ({r.method}, limited by {r.limited_by}); lr {r.lr:.4g} — "
                       f"F8 applies\n{r.detail}")
                upd = {"data.batch_size": r.batch_size}
            self.proposal = (new, action, upd)
        except Exception as err:  # noqa: BLE001
            msg = f"[red]{action} failed: {type(err).__name__}: {err}"
        self.busy = False
        try:
            self.app.call_from_thread(self._detail, msg)
        except Exception:  # noqa: BLE001
            pass

    def action_apply(self) -> None:
        if self.proposal is None:
            self.notify("nothing to apply: run stats or autobatch first", severity="warning")
            return
        new, source, upd = self.proposal
        self._take(new)
        self.post_message(ConfigApplied(new, source, upd))
        self.proposal = None
        self.notify(f"{source} applied: " + ", ".join(f"{k} = {v}" for k, v in upd.items()))
        self._detail()

    def action_unattended(self) -> None:
        from nanxi_tune.tui.autopilot_view import ask_and_start

        ask_and_start(self.app, self.cfg, self.runs_root)

    def _take(self, cfg: C.Config) -> None:
        self.cfg = cfg

    def action_close(self) -> None:
        self.dismiss(self.cfg)
