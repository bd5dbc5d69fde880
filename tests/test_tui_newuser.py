"""What a new user hit in the TUI (issue 9, item 7): each defect reproduced here first, then fixed."""

from __future__ import annotations

import asyncio
import re

from nanxi_tune.tui import monitor as M
from nanxi_tune.tui.app import NanxiTuneApp
from conftest import wait_for


def run(coro):
    return asyncio.run(coro)


BRAILLE = re.compile("[\u2801-\u28ff]")
LABEL = re.compile(r"^\s*([0-9.eE+-]+)┤")


def _axis(text: str) -> tuple[list[tuple[int, float]], list[int]]:
    """(row, value) of each y-axis label and the rows where the curve is drawn, from a rendered plot."""
    labels, curve = [], []
    for i, line in enumerate(text.splitlines()):
        m = LABEL.match(line)
        if m:
            labels.append((i, float(m.group(1))))
        if BRAILLE.search(line) and not re.search(r"⢕ (train|val)", line):  # not the legend
            curve.append(i)
    return labels, curve


def _value_at(labels: list[tuple[int, float]], row: float) -> float:
    """The axis value at ``row``, interpolated between the two nearest labels (a linear axis)."""
    (r0, v0), (r1, v1) = sorted(labels, key=lambda rv: abs(rv[0] - row))[:2]
    return v0 + (v1 - v0) * (row - r0) / (r1 - r0)


async def _lr_plot(app, pilot, lrs: list[float]) -> str:
    await wait_for(pilot, lambda: app.query("#mon"))
    app.action_tab("monitor")
    await pilot.pause()
    mon = app.monitor
    mon.reset("run-flat-lr", 4.0)
    mon.add_train([dict(step=s, epoch=0, loss=1.0, lr=lr, total_steps=len(lrs)) for s, lr in enumerate(lrs, 1)],
                  live=False)
    mon.redraw_plots(force=True)
    await pilot.pause()
    return app.query_one("#plot-lr").render().plain


def test_flat_lr_chart_axis_reads_top_down_and_the_line_sits_on_the_lr(tmp_path):
    """A constant lr of 0.003: labels fall from top to bottom, and the flat line sits at 0.003 (not 0.00114)."""
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(160, 48)) as pilot:
            text = await _lr_plot(app, pilot, [0.003] * 30)
            labels, curve = _axis(text)
            assert len(labels) >= 3 and curve, text
            values = [v for _, v in labels]
            assert values == sorted(values, reverse=True), f"y-axis upside down: {values}\n{text}"
            line = sum(curve) / len(curve)
            assert abs(_value_at(labels, line) - 0.003) < 0.0003, text

    run(go())


def test_decaying_lr_chart_keeps_a_log_axis_the_right_way_up(tmp_path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(160, 48)) as pilot:
            text = await _lr_plot(app, pilot, [0.003] * 20 + [0.0003] * 20)
            values = [v for _, v in _axis(text)[0]]
            assert values == sorted(values, reverse=True), text
            assert values[0] >= 0.0029 and values[-1] <= 0.00031, text

    run(go())


def test_wants_log_only_for_a_real_range():
    s = M.Series()
    for i, y in enumerate([0.003] * 5):
        s.add(i, y)
    assert not M._wants_log(s)
    s.add(6, 0.0003)
    assert M._wants_log(s)
    z = M.Series()
    z.add(0, 0.0)
    z.add(1, 0.003)  # warmup from zero: no log of 0
    assert not M._wants_log(z)
