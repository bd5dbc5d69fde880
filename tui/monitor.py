"""The run monitor: plots, latest values, progress against the budget, diagnoses, what costs AP50, system strip.

Events reach it through tui.bridge (the trainer's callback, with back-pressure)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from nanxi_tune.engine.metric_keys import LOG_WEIGHTS, LOSSES
if TYPE_CHECKING:
    from textual_plotext import PlotextPlot
from nanxi_tune.tui.monitor_widgets import (LatestTable, SystemStrip, value_of, errors_text, finding_detail, finding_of,
                                          fmt_duration, fmt_num, rank_memory)
from nanxi_tune.tui.plots import Series, thin, visible, wants_log, cached_plot_class

PLOTS = [  # id, title, train key, val key
    ("branches", "loss_map • · offset + · shape x (train)", None, None),  # narrow terminals: the three at once
    ("loss", "total loss", "loss", "loss"),
    ("loss_map", "loss_map", "loss_map", "loss_map"),
    ("loss_offset", "loss_offset", "loss_offset", "loss_offset"),
    ("loss_shape", "loss_shape", "loss_shape", "loss_shape"),
    ("lr", "lr", "lr", None),
    ("mAP", "mAP (val)", None, "mAP"),
]
TABLE_ROWS = [*LOSSES, "lr", "grad_norm", *LOG_WEIGHTS, "images_per_s", "mAP", "AP50"]
BRANCH_MARKERS = (("loss_map", "•"), ("loss_offset", "+"), ("loss_shape", "x"))  # told apart without colour


class Monitor(VerticalScroll):
    """Everything about one run: what it is doing now and the curves so far."""

    BINDINGS = [
        Binding("f", "show_findings", "Findings", id="show_findings",
                tooltip="The findings: their list, and the selected one's evidence and remedy", show=False),
        Binding("p", "app.show_predictions", "Predictions", id="show_predictions",
                tooltip="The run's val images with ground truth and predicted boxes, worst first", show=False),
        Binding("r", "app.apply_remedy", "Remedy", id="apply_remedy",
                tooltip="Apply the selected finding's remedy: stop with a checkpoint, rewind, start the child run",
                show=False),
        Binding("d", "app.dismiss_finding", "Dismiss", id="dismiss_finding",
                tooltip="Dismiss the selected finding (its pinned rewind checkpoint is released)", show=False),  # the footer stays the same on every tab (cheap tab switches); the title says "r"
    ]

    PLOT_INTERVAL = 0.4  # s between single-plot redraws (round-robin) while a run streams in, at least
    PLOT_DUTY = 20  # … and at least 20 × the last plot's build time (≤ 5% of the time spent plotting)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._narrow: bool | None = None
        self._rr = 0  # next plot in the round-robin
        self._next_plot = 0.0
        self.series: dict[str, Series] = {}
        self.latest_train: dict[str, Any] = {}
        self.latest_val: dict[str, Any] = {}
        self.run_name = ""
        self.state = "idle"
        self.step = 0
        self.total_steps = 0
        self.epoch = 0
        self.images_per_s = 0.0
        self.max_days = 4.0
        self._rate_start: tuple[float, int] | None = None
        self._rate_last: tuple[float, int] | None = None
        self._dirty_plots: set[str] = set()
        self.diagnoses: list[tuple[str, str, str, str, str]] = []
        self.findings: list[dict[str, Any]] = []
        self.projection: Any = None  # engine.diagnosis.projection.Projection of the shown run
        self.plan_text = ""  # engine.train.lr_plan's line when the run fits a time budget
        self.last_errors: dict[str, Any] | None = None  # the last evaluation's breakdown (engine.evaluation.errors)
        self.saved_step: int | None = None  # the newest checkpoint, shown on the status line
        self.saved_best = False

    def compose(self) -> ComposeResult:
        PlotextPlot = cached_plot_class()  # noqa: N806 - plotext costs ~0.1 s to import: after the first frame

        yield Static(self._status_text(), id="run-status")
        yield Static(self._budget_text(), id="budget")
        yield SystemStrip(id="system")
        yield Static(self._summary_text(), id="diag-summary")
        with Horizontal(id="mid"):
            with Grid(id="plots"):
                for pid, title, *_ in PLOTS:
                    yield PlotextPlot(id=f"plot-{pid}", classes="plot")
            yield LatestTable(TABLE_ROWS, id="latest")
        yield Static("", id="errors")
        with Vertical(id="diag-box"):
            yield Static("Diagnoses — ↑↓ select · r applies the remedy · d dismisses", classes="section-title")
            yield DataTable(id="diagnoses", cursor_type="row")
            yield Static("", id="diag-detail")

    def on_mount(self) -> None:
        diag = self.query_one("#diagnoses", DataTable)
        for col, label in (("step", "step"), ("severity", "sev"), ("rule", "rule"), ("section", "§"),
                           ("message", "message")):
            diag.add_column(label, key=col)
        for pid, title, *_ in PLOTS:
            self._dirty_plots.add(pid)
        self.on_resize()
        self.set_interval(self.PLOT_INTERVAL, self.redraw_plots)
        self.redraw_plots()

    def on_resize(self, _event: Any = None) -> None:
        """Narrow terminals (the app's -narrow class) show the branches' curves first, the findings as one line
        above them, their list and detail one key (f) away."""
        narrow = self.app.size.width < 120
        if narrow != self._narrow:
            self._narrow = narrow
            self._dirty_plots.add("branches")

    def action_show_findings(self) -> None:
        """What is wrong: what costs AP50 at the last evaluation, then the findings (the list focused)."""
        table = self.query_one("#diagnoses", DataTable)
        table.focus(scroll_visible=False)  # the scroll below shows the table too; focus's own would overshoot
        target = "#errors" if self.last_errors else "#diag-box"
        self.scroll_to_widget(self.query_one(target), top=True, animate=False)

    def _summary_text(self) -> Text:
        t = Text()
        if not self.findings:
            t.append("findings: none so far", style="dim")
            return t
        f = self.findings[-1]
        t.append(f"findings {len(self.findings)}", style="bold")
        t.append(f"  newest: {f.get('severity', '')} {f.get('rule', '')} §{f.get('section', '')} step "
                 f"{f.get('step', '')}  ")
        t.append("f", style="bold reverse")
        t.append(" details · r remedy", style="dim")
        return t

    # --- data in -------------------------------------------------------------------------
    def reset(self, run_name: str, max_days: float = 4.0) -> None:
        self.series.clear()
        self.latest_train.clear()
        self.latest_val.clear()
        self.run_name = run_name
        self.state = "starting"
        self.step = self.total_steps = self.epoch = 0
        self.images_per_s = 0.0
        self.max_days = max_days
        self._rate_start = self._rate_last = None
        self.diagnoses.clear()
        self.findings.clear()
        self.projection = None
        self.plan_text = ""
        self.saved_step, self.saved_best = None, False
        self.scroll_home(animate=False)  # a new run starts at its step/state line, wherever the last one was read
        self.query_one(SystemStrip).show_run("")
        self.query_one("#diagnoses", DataTable).clear()
        self.query_one("#diag-detail", Static).update("")
        self.last_errors = None
        self.query_one("#errors", Static).update("")
        self.query_one("#diag-summary", Static).update(self._summary_text())
        table = self.query_one("#latest", LatestTable)
        for name in TABLE_ROWS:
            table.update_cell(name, "train", "—")
            table.update_cell(name, "val", "—")
        self._dirty_plots.update(p[0] for p in PLOTS)
        self.refresh_texts()

    def _point(self, key: str, x: float, y: Any) -> None:
        if y is None:
            return
        self.series.setdefault(key, Series()).add(x, float(y))

    def add_train(self, rows: list[Any], live: bool = True) -> None:
        if not rows:
            return
        last = self._collect(rows, "train", 2, self.latest_train)
        self.step = value_of(last, "step") or self.step
        self.epoch = value_of(last, "epoch") or self.epoch
        self.total_steps = value_of(last, "total_steps") or self.total_steps
        self.images_per_s = value_of(last, "images_per_s") or self.images_per_s
        self.query_one(SystemStrip).show_run(rank_memory(value_of(last, "memory_mib"), value_of(last, "memory_total_mib") or 0,
                                                         value_of(last, "memory_of") or ""))
        if live:
            now = time.monotonic()
            if self._rate_start is None:
                self._rate_start = (now, self.step)
            self._rate_last = (now, self.step)
        self.refresh_texts()

    def add_val(self, rows: list[Any]) -> None:
        if rows:
            last = self._collect(rows, "val", 3, self.latest_val)
            errors = value_of(last, "errors")
            if errors:
                self.last_errors = errors
                self.query_one("#errors", Static).update(errors_text(errors))

    def _collect(self, rows: list[Any], split: str, col: int, latest: dict[str, Any]) -> Any:
        """Plot points of one split (its key in column ``col`` of PLOTS) and the latest values for the table;
        returns the last row."""
        for ev in rows:
            step = value_of(ev, "step") or 0
            for plot in PLOTS:
                if plot[col]:
                    self._point(f"{split}:{plot[col]}", step, value_of(ev, plot[col]))
        last = rows[-1]
        for name in TABLE_ROWS:
            v = value_of(last, name)
            if v is not None:
                latest[name] = v
        self._dirty_plots.update(p[0] for p in PLOTS if p[col])
        if split == "train":
            self._dirty_plots.add("branches")
        self._update_table(split, latest)
        return last

    def add_diagnosis(self, step: Any, severity: str = "", rule: str = "", section: str = "", message: str = "",
                      evidence: dict | None = None, remedy: dict | None = None) -> None:
        """A finding (a Diagnosis event, its dict from events.jsonl, or the fields) into the list."""
        f = finding_of(step, severity, rule, section, message, evidence, remedy)
        row = (str(f.get("step", "")), f.get("severity", ""), f.get("rule", ""), f.get("section", ""),
               f.get("message", ""))
        self.diagnoses.append(row)
        self.findings.append(f)
        style = {"error": "bold red", "warning": "bold yellow"}.get(row[1], "")
        table = self.query_one("#diagnoses", DataTable)
        table.add_row(row[0], Text(row[1], style=style), row[2], row[3], row[4], key=str(len(self.findings) - 1))
        if len(self.findings) == 1:
            self._show_detail(0)
        self.query_one("#diag-summary", Static).update(self._summary_text())

    def selected_finding(self) -> dict[str, Any] | None:
        if not self.findings:
            return None
        table = self.query_one("#diagnoses", DataTable)
        i = table.cursor_row if 0 <= table.cursor_row < len(self.findings) else len(self.findings) - 1
        return self.findings[i]

    def mark_selected(self, label: str) -> None:
        """Show the selected finding as handled (e.g. "dismissed") in the severity column."""
        table = self.query_one("#diagnoses", DataTable)
        i = table.cursor_row
        if 0 <= i < len(self.findings):
            table.update_cell(str(i), "severity", Text(label, style="dim"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "diagnoses":
            self._show_detail(event.cursor_row)

    def _show_detail(self, i: int) -> None:
        if 0 <= i < len(self.findings):
            self.query_one("#diag-detail", Static).update(finding_detail(self.findings[i]))

    def set_projection(self, projection: Any) -> None:
        """engine.diagnosis.projection.Projection (or None): the projected full-run time against budget.max_days."""
        self.projection = projection
        if projection is not None:
            self.max_days = projection.max_days
        self.refresh_texts()

    def set_plan(self, text: str) -> None:
        self.plan_text = text
        self.refresh_texts()

    def set_checkpoint(self, step: int, best: bool) -> None:
        self.saved_step, self.saved_best = step, best
        self.refresh_texts()

    def set_state(self, state: str) -> None:
        self.state = state
        if state in ("running",):
            self._rate_start = None  # measure speed afresh after a pause / resume
        self.refresh_texts()

    def _update_table(self, col: str, values: dict[str, Any]) -> None:
        table = self.query_one("#latest", LatestTable)
        for name in TABLE_ROWS:
            if name in values:
                table.update_cell(name, col, fmt_num(values[name]))

    # --- derived ------------------------------------------------------------------------
    def steps_per_s(self) -> float | None:
        if self._rate_start and self._rate_last and self._rate_last[1] > self._rate_start[1]:
            dt = self._rate_last[0] - self._rate_start[0]
            if dt > 0:
                return (self._rate_last[1] - self._rate_start[1]) / dt
        return None

    def eta_s(self) -> float | None:
        rate = self.steps_per_s()
        if not rate or not self.total_steps:
            return None
        return max(self.total_steps - self.step, 0) / rate

    def _status_text(self) -> Text:
        t = Text()
        t.append(self.run_name or "no run", style="bold")
        t.append(f"  [{self.state}]", style="bold reverse" if self.state in ("running",) else "bold")
        total = f"/{self.total_steps}" if self.total_steps else ""
        if self.state in ("paused", "stopped", "finished", "failed"):  # no speed, no ETA while not moving
            t.append(f"  step {self.step}{total}  epoch {self.epoch}  — img/s  ETA —")
        else:
            t.append(f"  step {self.step}{total}  epoch {self.epoch}  {self.images_per_s:.1f} img/s"
                     f"  ETA {fmt_duration(self.eta_s())}")
        if self.saved_step is not None:
            t.append(f"  saved @{self.saved_step}{'★' if self.saved_best else ''}", style="dim")
        return t

    def _budget_text(self) -> Text:
        """The bar of engine.diagnosis.projection's projection (the over-time-budget rule's own estimate) vs budget.max_days."""
        if self.plan_text:  # train.time_budget_min: the run is planned to fit its budget (engine.train.lr_plan)
            return Text("plan ", style="bold").append(self.plan_text, style="")
        p = self.projection
        width = 20
        t = Text("budget ")
        days = None
        if p is not None:
            days = p.projected_days_with_evals if p.projected_days_with_evals is not None else p.projected_days
        if days is None:
            t.append("░" * width, style="dim")
            t.append(f" projected — of {self.max_days:g} d")
            if p is not None or self.state in ("running", "starting"):
                t.append(" (projected at each eval)", style="dim")
            return t
        frac = days / self.max_days if self.max_days else float("inf")
        filled = min(width, int(round(frac * width)))
        style = "red" if (frac > 1 or p.over) else ("yellow" if frac > 0.8 else "green")
        t.append("█" * filled, style=style)
        t.append("░" * (width - filled), style="dim")
        t.append(f" projected {fmt_duration(days * 86400)} of {self.max_days:g} d ({frac:.1%}) @ step {p.step}")
        if p.over or frac > 1:
            t.append("  OVER BUDGET", style="bold red")
        return t

    def refresh_texts(self) -> None:
        # one-line strips of fixed height: repaint them without re-laying out the screen
        self.query_one("#run-status", Static).update(self._status_text(), layout=False)
        self.query_one("#budget", Static).update(self._budget_text(), layout=False)

    def redraw_plots(self, force: bool = False) -> None:
        """Redraw dirty plots: all of them when forced, else one per call, round-robin, on-screen only.

        plotext renders in pure Python (~50 ms a plot under load); six at once would hold the UI (and
        the GIL) for a third of a second. One per tick spreads the cost, so a key never waits behind
        a burst of plots, and each plot still refreshes every ~PLOT_INTERVAL × 6 while data streams in.
        """
        if not self._dirty_plots:
            return
        if not force and not self.is_on_screen_tab():
            return
        order = [p for p in PLOTS if p[0] in self._dirty_plots]
        if not force:
            # pace: a plot build holds the GIL (the trainer's Python waits), so keep plotting under
            # ~1/PLOT_DUTY of the time: 50 ms builds → one plot a second, each plot every ~6 s
            now = time.monotonic()
            if now < self._next_plot:
                return
            self._next_plot = now + self.PLOT_DUTY * getattr(cached_plot_class(), "cost", 0.0)
            start = self._rr % len(PLOTS)
            order = sorted(order, key=lambda p: (PLOTS.index(p) - start) % len(PLOTS))
        for pid, title, tkey, vkey in order:
            plot = self.query_one(f"#plot-{pid}")
            if not force and not visible(plot):
                continue
            self._draw(plot, title, tkey, vkey, pid)
            self._dirty_plots.discard(pid)
            if not force:
                self._rr = PLOTS.index((pid, title, tkey, vkey)) + 1
                return

    def _draw(self, plot: PlotextPlot, title: str, tkey: str | None, vkey: str | None, pid: str) -> None:
        plt = plot.plt
        plt.clear_figure()
        plt.title(title)
        drawn = False
        if pid == "branches":
            for key, marker in BRANCH_MARKERS:
                if f"train:{key}" in self.series:
                    plt.plot(*thin(*self.series[f"train:{key}"]), marker=marker)
                    drawn = True
        if tkey and f"train:{tkey}" in self.series:
            xs, ys = thin(*self.series[f"train:{tkey}"])
            plt.plot(xs, ys, label="train", marker="braille")
            drawn = True
        if vkey and f"val:{vkey}" in self.series:
            xs, ys = thin(*self.series[f"val:{vkey}"])
            plt.plot(xs, ys, label="val", marker="dot")  # never braille: train and val read apart without colour
            drawn = True
        if pid == "lr" and drawn and wants_log(self.series.get("train:lr")):
            plt.yscale("log")
        if not drawn:
            plt.xlim(0, 1)
            plt.ylim(0, 1)
        plot.version = getattr(plot, "version", 0) + 1
        plot.refresh()

    def is_on_screen_tab(self) -> bool:
        try:
            return self.display and self.is_on_screen
        except Exception:  # noqa: BLE001
            return True
