"""Two runs side by side: every config key that differs, and both runs' curves on one plot.

``app.push_screen(CompareScreen(a, b))``. The data is engine.workflows.records.compare(a, b) (read in a thread
worker: long runs have long metrics.jsonl files); this screen only lays it out. Keys: Tab moves between
the diff table and the plots, ``m`` switches the plot between loss and mAP, Escape closes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual_plotext import PlotextPlot


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


class CompareScreen(Screen):
    BINDINGS = [
        Binding("m", "toggle_metric", "loss/mAP", id="cmp_metric", tooltip="Plot the losses or the val mAP"),
        Binding("escape", "close", "Close", id="cmp_close", tooltip="Back to the runs"),
    ]

    def __init__(self, a: Path | str, b: Path | str) -> None:
        super().__init__()
        self.a, self.b = Path(a), Path(b)
        self.data: dict[str, Any] | None = None
        self.metric = "loss"

    def compose(self) -> ComposeResult:
        yield Static(f"comparing {self.a.name} (a) with {self.b.name} (b)…", id="cmp-summary")
        with Horizontal(id="cmp-body"):
            yield DataTable(id="cmp-diff", cursor_type="row", zebra_stripes=True)
            yield PlotextPlot(id="cmp-plots")
        yield Footer(compact=True)  # 80 columns: the screen's keys and ^p fit

    def on_mount(self) -> None:
        self._columns([])
        self.on_resize()
        self.run_worker(self._load, thread=True, exclusive=True, group="compare", exit_on_error=False)

    def on_resize(self, _event: Any = None) -> None:
        self.set_class(self.app.size.width < 120, "-narrow")

    def _load(self) -> None:
        from nanxi_tune.engine.workflows import records

        try:
            data = records.compare(self.a, self.b)
        except Exception as err:  # noqa: BLE001 - a broken run folder: say so, keep the UI
            self.app.call_from_thread(self._error, f"{type(err).__name__}: {err}")
            return
        self.app.call_from_thread(self._show, data)

    def _error(self, text: str) -> None:
        self.query_one("#cmp-summary", Static).update(Text(f"cannot compare: {text}", style="bold red"))

    def _show(self, data: dict[str, Any]) -> None:
        self.query_one("#cmp-summary", Static).update(Text(data["summary"]))
        rows = [(key, _fmt(x), _fmt(y)) for key, x, y in data["diff"]] or [("(same config)", "", "")]
        table = self._columns(rows)
        for row in rows:
            table.add_row(*row, key=row[0])
        self.data = data  # last: whoever waits on it finds the table filled
        self.draw()

    def _columns(self, rows: list[tuple[str, str, str]]) -> DataTable:
        """The diff table emptied, its columns as wide as ``rows`` need: an auto width grows only on the table's
        idle, and a screen drawn before it showed the header's width ("tra" for train.base_lr)."""
        table = self.query_one("#cmp-diff", DataTable)
        table.clear(columns=True)
        heads = (("key", "key"), (f"a {self.a.name}"[:24], "a"), (f"b {self.b.name}"[:24], "b"))
        for i, (label, key) in enumerate(heads):
            table.add_column(label, key=key, width=max([len(label)] + [len(r[i]) for r in rows]))
        return table

    def draw(self) -> None:
        if self.data is None:
            return
        plot = self.query_one("#cmp-plots", PlotextPlot)
        plt = plot.plt
        plt.clear_figure()
        curves = self.data["curves"]
        series = (("train_loss", "val_loss") if self.metric == "loss" else ("mAP",))
        drawn = False
        for side, name in (("a", self.a.name), ("b", self.b.name)):
            for key in series:
                pts = curves[side].get(key) or []
                if not pts:
                    continue
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                label = f"{side} {key}" if len(series) > 1 else f"{side} {name}"[:20]
                plt.plot(xs, ys, label=label, marker="braille" if len(xs) > 2 else "dot")
                drawn = True
        plt.title("loss (train, val)" if self.metric == "loss" else "val mAP")
        if not drawn:
            plt.xlim(0, 1)
            plt.ylim(0, 1)
        plot.refresh()

    def action_toggle_metric(self) -> None:
        self.metric = "mAP" if self.metric == "loss" else "loss"
        self.draw()

    def action_close(self) -> None:
        self.dismiss(None)
