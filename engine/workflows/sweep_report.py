"""A seven-stars sweep as text: the chart (CLI, TUI, journal), the notes' one-line record, the study's journal.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..run import rundir, runctl
from .study import Study, value_name
from .study_results import best_row, next_window_of, rows, table
from ..files import write_atomic


def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def text_chart(rows: list[dict[str, Any]], metric: str = "mAP", width: int = 48, height: int = 10) -> str:
    """metric vs value on a log axis, as plain text (one column per grid value, ★ the best, x a failed trial, - a
    trial cut half-way)."""
    pts = [(r["value"], r.get(metric)) for r in rows]
    ys = [y for _, y in pts if y is not None]
    if not pts:
        return "(no trials)"
    top = max(ys) if ys and max(ys) > 0 else 1.0
    n = len(pts)
    names = [r.get("label") or value_name(v) for r, (v, _) in zip(rows, pts)]
    col = max(3, min(8, width // max(n, 1)), max(map(len, names)) + 1)  # a space between the value labels
    grid = [[" "] * (n * col) for _ in range(height)]
    for j, (r, (_, y)) in enumerate(zip(rows, pts)):
        x = j * col + col // 2
        if y is None or r.get("status") == "pruned":  # a half-way figure is not an end figure: no bar
            grid[height - 1][x] = {"failed": "x", "pruned": "-"}.get(r.get("status"), "·")
            continue
        h = int(round((height - 1) * max(y, 0) / top))
        for k in range(h):
            grid[height - 1 - k][x] = "│"
        grid[height - 1 - h][x] = "★" if r.get("best") else "●"
    label_w = 7
    lines = []
    for i, row in enumerate(grid):
        label = f"{top * (height - 1 - i) / (height - 1):.3f}" if i in (0, height // 2, height - 1) else ""
        lines.append(f"{label:>{label_w}} ┤" + "".join(row))
    lines.append(" " * label_w + " └" + "─" * (n * col))
    lines.append(" " * (label_w + 2) + "".join(f"{name:^{col}}" for name in names))
    lines.append(" " * (label_w + 2) + f"{metric} vs value (log axis: one column per half-decade)")
    return "\n".join(lines)


def summary_line(study: Study, results: list | None = None) -> str:
    """The notes' record style: "train.base_lr seven stars 0.0001…0.1 (40 steps each, qmv): best 0.01 mAP 0.21 (…)"."""
    spec = study.spec
    results = rows(study) if results is None else results
    parts = [f"{spec.label(r.value)}: {_fmt(r.mAP) if r.status == 'finished' else r.status}" for r in results]
    b = best_row(results)
    values = [r.value for r in results] or spec.values
    what = (f"arms {', '.join(spec.label(v) for v in values)}" if spec.arms else
            f"{spec.key} seven stars {value_name(values[0])}…{value_name(values[-1])}")
    head = f"{what} ({spec.budget_text()} each, {spec.cfg.eval.val_data_mode})"
    best = f"best {spec.label(b.value)} mAP {_fmt(b.mAP)}" if b else "no finished trial"
    edge = " — best at the window's edge: slide" if not spec.arms and next_window_of(results) else ""
    return f"{head}: {best}{edge} ({'; '.join(parts)})"


def render_journal(study: Study) -> str:
    spec = study.spec
    results = rows(study)
    data = table(study)
    state = runctl.status(study.folder).state.value if study.folder else "?"
    over = "arms (one config each, equal budgets)" if spec.arms else f"seven stars (七星连珠法) over `{spec.key}`"
    lines = [f"# {spec.name}", "", f"- {over}, preset "
             f"`{spec.cfg.preset or '(none)'}`, status {state}", f"- {summary_line(study, results)}", "",
             "| value | mAP | AP50 | train loss | status | device |", "|---|---|---|---|---|---|"]
    for r in data:
        star = " ★" if r["best"] else ""
        lines.append(f"| {r['label']}{star} | {_fmt(r['mAP'])} | {_fmt(r['AP50'])} | "
                     f"{_fmt(r['train_loss'])} | {r['status']}{' ' + r['error'] if r['error'] else ''} | "
                     f"{r['device']} |")
    nxt = None if spec.arms else next_window_of(results)
    if nxt:
        lines += ["", f"The best sits at the window's edge: slide to {', '.join(value_name(v) for v in nxt)}."]
    lines += ["", "```", text_chart(data), "```", ""]
    return "\n".join(lines)


def write_journal(folder: Path | str) -> Path:
    """The study's journal.md (atomic rewrite)."""
    text = render_journal(Study.open(folder))
    return write_atomic(Path(folder) / rundir.JOURNAL, text)
