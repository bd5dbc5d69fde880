"""An autopilot as a Screen: its rounds as a checklist, the current round's trials with the best so far, time left
against the budget, and the journal (``j``). It follows the folder (the owner is a detached process: closing the
TUI never stops it) and drives it over its control channel: F6 pause / continue, F7 stop, F8 resume a stopped
one, ``b`` a new budget (the owner re-plans).

``app.push_screen(AutopilotScreen(folder))``; ``BudgetDialog`` asks for a budget (90m, 12h, 2d).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Static

from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.run.runctl import Op
from nanxi_tune.engine.workflows import autopilot_plan as P
from nanxi_tune.tui.dialogs import Dialog
from nanxi_tune.tui.field_row import format_value

REFRESH_S = 1.0
MARKS = {"done": "✓", "skipped": "–", "running": "▶", "pending": " "}


class BudgetDialog(Dialog):
    """The autopilot's whole budget: minutes, hours or days."""

    def __init__(self, prefill: str = "30m", title: str = "Run unattended: the whole budget",
                 enter: str = "start") -> None:
        super().__init__()
        self.prefill, self.title_text, self.enter = prefill, title, enter

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"{self.title_text} (90m, 12h, 2d), Enter to {self.enter}, Esc to cancel",
                        classes="dialog-title")
            yield Input(self.prefill, id="budget-input")
            yield Static("", id="budget-error", classes="dialog-error")

    @on(Input.Submitted, "#budget-input")
    def _submit(self, event: Input.Submitted) -> None:
        try:
            self.dismiss(P.parse_budget(event.value))
        except P.AutopilotError as err:
            self.query_one("#budget-error", Static).update(str(err))


def ask_and_start(app, cfg, runs_root: Path) -> None:
    """Ask for a budget, then start an autopilot on ``cfg`` with its owner detached (closing the TUI never stops
    it) and show its screen."""

    def start(minutes: float | None) -> None:
        if minutes is None:
            return
        from nanxi_tune.engine.data.datapaths import DataError, check
        from nanxi_tune.engine.workflows.autopilot import create, spawn_detached

        try:
            check(cfg)
            folder = rundir.new_run_dir(Path(runs_root), rundir.run_name(f"autopilot-{cfg.preset or 'config'}"))
            create(folder, cfg.preset or "config", cfg, minutes)
        except (DataError, P.AutopilotError) as err:
            app.notify(str(err), severity="error")
            return
        spawn_detached(folder)
        app.push_screen(AutopilotScreen(folder))

    app.push_screen(BudgetDialog(), start)


class AutopilotScreen(Screen):
    BINDINGS = [
        Binding("f6", "pause", "Pause/Cont.", id="autopilot_pause",
                tooltip="Pause the autopilot (its trials hold) or continue it"),
        Binding("f7", "stop", "Stop", id="autopilot_stop", tooltip="Stop it with a checkpoint; F8 resumes it"),
        Binding("f8", "resume", "Resume", id="autopilot_resume",
                tooltip="Resume a stopped autopilot (detached) at the round it was in"),
        Binding("b", "budget", "Budget", id="autopilot_budget", tooltip="A new whole budget: what is left re-plans"),
        Binding("j", "journal", "Journal", id="autopilot_journal", tooltip="journal.md / the current round's trials"),
        Binding("escape", "close", "Close", id="autopilot_close", tooltip="Back; the autopilot goes on"),
    ]

    def __init__(self, folder: Path | str) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.show_journal = False
        self.ap: P.Autopilot | None = None
        self.state = ""
        self.alive = False
        self._final_tail = rundir.JsonlTail(self.folder / "final" / rundir.METRICS)
        self._final_last: dict[str, dict[str, Any]] = {}  # the final run's last step and val lines

    def compose(self) -> ComposeResult:
        yield Label(f"[b]自动调参 autopilot[/b] {self.folder.name}", id="ap-title")
        yield DataTable(id="ap-rounds", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="ap-scroll"):
            yield Static("reading…", id="ap-detail", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        t = self.query_one("#ap-rounds", DataTable)
        t.add_column("", width=1)
        t.add_column("round", width=44)
        t.add_column("chosen", width=27)
        self.refresh_view()
        self.set_interval(REFRESH_S, self.refresh_view)

    # --- reading the folder (a worker: a study's storage is read with Optuna) -------------------------------------
    @work(thread=True, exclusive=True, group="autopilot-read", exit_on_error=False)
    def refresh_view(self) -> None:
        try:
            ap = P.load(self.folder)
        except P.AutopilotError as err:
            self.app.call_from_thread(self._show_error, str(err))
            return
        st = runctl.status(self.folder)
        detail = self._journal() if self.show_journal else self._trials(ap, st.state.value)
        self.app.call_from_thread(self._show, ap, st.state.value, st.alive, detail)

    def _journal(self) -> str:
        try:
            return (self.folder / rundir.JOURNAL).read_text(encoding="utf-8")
        except OSError:
            return "no journal yet"

    def _trials(self, ap: P.Autopilot, state: str = "") -> str:
        r = next((x for x in ap.rounds if x.status == "running"), None)
        if r is None:
            last = [x for x in ap.rounds if x.status in ("done", "skipped")]
            r = last[-1] if last else None
        if r is None:
            return "not started"
        lines = [f"{P.TITLES[r.name]} — {'paused' if state == 'paused' and r.status == 'running' else r.status}"]
        rows = r.rows
        if r.status == "running" and r.folder and (self.folder / r.folder / rundir.STUDY).is_file():
            rows = _study_rows(self.folder / r.folder)
        for x in rows:
            m = x.get("mAP")
            score = "—" if m is None else f"{m:.4f}"
            lines.append(f"  {'★' if x.get('best') else ' '} {str(x.get('label', '')):<30} mAP {score}  "
                         f"{x.get('status', '')} {x.get('steps', '') or ''}")
        if r.name == "final" and r.status == "running":
            lines.append(self._final_progress())
        if r.why:
            lines += ["", r.why]
        return "\n".join(lines)

    def _final_progress(self) -> str:
        """The final run — the longest round — as it trains: its step, train loss and last val figure (read from the
        file's new lines only: a long run's metrics are long)."""
        for m in self._final_tail.poll():
            if m.get("kind") == "step":
                self._final_last["step"] = m
            elif m.get("split") == "val":
                self._final_last["val"] = m
        step, val = self._final_last.get("step"), self._final_last.get("val")
        if step is None:
            return "  starting…"
        text = f"  step {step['step']} · loss {step.get('loss', float('nan')):.3f}"
        if val is not None and val.get("mAP") is not None:
            text += f" · val mAP {val['mAP']:.4f} ({val.get('mode', 'val')}) at step {val['step']}"
        return text

    def _show_error(self, message: str) -> None:
        self.query_one("#ap-detail", Static).update(message)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only the keys that can act now: pause, stop and budget on a live owner; resume on a stopped one;
        neither on a finished one (its footer offered F6–F8 and `b`, each refused after the asking)."""
        if self.ap is None or action not in ("pause", "stop", "budget", "resume"):
            return True
        if all(r.status in ("done", "skipped") for r in self.ap.rounds):
            return False
        return self.alive != (action == "resume")

    def _show(self, ap: P.Autopilot, state: str, alive: bool, detail: str) -> None:
        changed = self.ap is None or alive != self.alive or state != self.state
        self.ap, self.state, self.alive = ap, state, alive
        if changed:
            self.refresh_bindings()
        left = max(0.0, ap.spec.budget_min - ap.used_s / 60)
        best = f" · val mAP {ap.final['mAP']:.4f}" if ap.final else ""
        self.query_one("#ap-title", Label).update(
            f"[b]自动调参 autopilot[/b] {self.folder.name}\n{state}{'' if alive else ' (no owner)'} · "
            f"{left:.1f} min left of {P.budget_text(ap.spec.budget_min)}{best}")
        t = self.query_one("#ap-rounds", DataTable)
        row = t.cursor_row
        t.clear()
        for i, r in enumerate(ap.rounds, start=1):
            chosen = ", ".join(f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in r.choice.items())
            t.add_row(MARKS.get(r.status, "?"), f"{i}. {P.TITLES[r.name]}"[:44], chosen[:27], key=r.name)
        t.move_cursor(row=min(max(row, 0), len(ap.rounds) - 1))
        self.query_one("#ap-detail", Static).update(detail)

    # --- commands -------------------------------------------------------------------------------------------------
    def action_pause(self) -> None:
        self._send(Op.CONTINUE if self.state == "paused" else Op.PAUSE)

    def action_stop(self) -> None:
        self._send(Op.STOP)

    def action_budget(self) -> None:
        now = f"{self.ap.spec.budget_min:g}m" if self.ap else "30m"
        self.app.push_screen(BudgetDialog(now, "A new whole budget", "re-plan"),
                             lambda m: m is not None and self._send(Op.SET, {P.BUDGET_KEY: m}))

    def action_resume(self) -> None:
        if runctl.status(self.folder).alive:
            self.notify("it is running; F6 pauses or continues it")
            return
        if self.ap is not None and all(r.status in ("done", "skipped") for r in self.ap.rounds):
            self.notify(f"finished: the recipe is {self.folder / 'recipe.toml'}")
            return
        from nanxi_tune.engine.workflows.autopilot import spawn_detached

        spawn_detached(self.folder)
        self.notify(f"{self.folder.name}: resumed (detached) at the round it was in")

    def action_journal(self) -> None:
        self.show_journal = not self.show_journal
        if self.show_journal:  # End / PageUp scroll it at once, whichever screen opened this one
            self.query_one("#ap-scroll").focus()
        self.refresh_view()

    def action_close(self) -> None:
        self.dismiss(None)

    @work(thread=True, group="autopilot-send", exit_on_error=False)
    def _send(self, op: Op, updates: dict[str, Any] | None = None) -> None:
        try:
            ack = runctl.request(self.folder, op, updates, runctl.sender_name("tui"), 60)
        except runctl.NotAlive as err:
            self.app.call_from_thread(self.notify, str(err), severity="warning")
            return
        text = ack["message"] if ack else "no answer yet"
        self.app.call_from_thread(self.notify, text, severity="information" if not ack or ack["applied"] else "error")
        self.refresh_view()


def _study_rows(folder: Path) -> list[dict[str, Any]]:
    from nanxi_tune.engine.workflows.study import Study
    from nanxi_tune.engine.workflows.study_results import table

    try:
        return table(Study.open(folder))
    except Exception:  # noqa: BLE001 - a study being created: shown at the next refresh
        return []
