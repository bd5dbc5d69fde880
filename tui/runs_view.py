"""The Runs tab: every run under the runs folder, live or not, and every study (◆, a sweep) with its trials under
it; Enter opens a run (and attaches to a live one) or a study's screen, space marks two, c compares them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from nanxi_tune.tui.palette import TIP

# Fixed widths, so the first visit (before any row) never squeezes a column; 66 cells and their padding fit 80.
# status fits "stopping ●" (a live run is marked ●).
COLUMNS = (("✓", 2), ("name", 21), ("status", 10), ("best mAP", 8), ("started", 11), ("step", 7), ("preset", 7))
REFRESH_S = 2.0  # while the tab is shown: live runs' steps and states move


def _grouped(runs: list) -> list[tuple[Any, str]]:
    """(run, shown name): a study's row (◆, Enter opens the study) with its trials right under it (└ trial-…)."""
    children: dict[str, list] = {}
    for r in runs:
        if "/" in r.name:
            children.setdefault(r.name.split("/", 1)[0], []).append(r)
    out: list[tuple[Any, str]] = []
    for r in (r for r in runs if "/" not in r.name):
        study, autopilot = r.preset == "study", r.preset == "autopilot"
        mark = "◆ " if study else "▲ " if autopilot else ""
        # the mark says what it is: the name column keeps the part that tells two apart
        out.append((r, mark + r.name.removeprefix("sweep-" if study else "autopilot-" if autopilot else "")))
        out += [(c, "└ " + c.name.split("/", 1)[1]) for c in sorted(children.pop(r.name, []), key=lambda c: c.name)]
    for rest in children.values():  # a folder of runs that is not a study
        out += [(c, c.name) for c in rest]
    return out


class RunsPane(Vertical):
    BINDINGS = [
        Binding("space", "mark", "Mark", id="mark_run", tooltip="Mark / unmark the run under the cursor for compare",
                show=False),
        Binding("c", "app.compare_runs", "Compare", id="compare_runs", tooltip=TIP["compare_runs"], show=False),
        Binding("p", "app.show_predictions", "Predictions", id="show_predictions_runs",
                tooltip=TIP["show_predictions"], show=False),
    ]

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.marked: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("Runs — Enter opens · space marks · c compares · p predictions · F8 resumes",
                     classes="section-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)

    class Open(Message):
        """Enter on a run: show it (and follow it while it trains)."""

        def __init__(self, run_dir: Path) -> None:
            super().__init__()
            self.run_dir = run_dir

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col, width in COLUMNS:
            table.add_column(col, key=col, width=width)
        self.set_interval(REFRESH_S, self._tick)

    def _tick(self) -> None:
        if self.is_on_screen:
            self.refresh_runs()

    @property
    def is_on_screen(self) -> bool:
        return self.display and self.app.query_one("#tabs").active == "runs" and self.screen is self.app.screen

    def refresh_runs(self) -> None:
        """Re-list the runs folder in a thread (each run's record is read: many runs must not stall a key)."""
        self._list_runs(self.app.runs_root)

    @work(thread=True, exclusive=True, group="runs-list", exit_on_error=False)
    def _list_runs(self, root: Path) -> None:
        from nanxi_tune.engine.run import listing

        try:
            runs = listing.list_runs(root)
        except Exception as err:  # noqa: BLE001
            self.app.call_from_thread(self.app.notify, f"cannot list runs: {err}", severity="error")
            return
        rows = []
        for r, name in _grouped(runs):
            started = datetime.fromtimestamp(r.started).strftime("%m-%d %H:%M") if r.started else "—"
            best = f"{r.best_map:.4f}" if r.best_map is not None else "—"
            state = r.status.state.value + (" ●" if r.status.alive else "")
            rows.append((str(r.path), (name, state, best, started, str(r.step), r.preset or "")))
        self.app.call_from_thread(self._fill, rows)

    def _fill(self, rows: list[tuple[str, tuple]]) -> None:
        table = self.query_one(DataTable)
        if rows == getattr(self, "_rows", None) and table.row_count == len(rows):
            return  # nothing changed: keep the table (and its cursor) as it is
        self._rows = rows
        cur = self.cursor_key()
        table.clear()
        for key, cells in rows:
            table.add_row("", *cells, key=key)
        keys = [k for k, _ in rows]
        if cur in keys:
            table.move_cursor(row=keys.index(cur), animate=False)
        self.marked = [k for k in self.marked if k in keys]
        self.show_marks()

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.post_message(self.Open(Path(event.row_key.value)))

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
        """The first column: ▸ on the cursor's row (it reads without colour), 1 / 2 on the runs marked to compare."""
        table = self.query_one(DataTable)
        cur = self.cursor_key()
        for row_key in list(table.rows):
            mark = str(self.marked.index(row_key.value) + 1) if row_key.value in self.marked else ""
            table.update_cell(row_key, "✓", ("▸" if row_key.value == cur else " ") + mark)

    @on(DataTable.RowHighlighted)
    def _highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.show_marks()

    def pair(self) -> tuple[Path, Path] | None:
        """The two runs to compare: the two marked, or the one marked and the one under the cursor."""
        keys = [k for k in self.marked]
        cur = self.cursor_key()
        if len(keys) < 2 and cur and cur not in keys:
            keys.append(cur)
        return (Path(keys[0]), Path(keys[1])) if len(keys) >= 2 else None
