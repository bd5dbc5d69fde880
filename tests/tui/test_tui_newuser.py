"""What a new user hit in the TUI (issue 9, item 7): each defect reproduced here first, then fixed."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time

import pytest

from nanxi_tune.tui import plots as M
from nanxi_tune.tui.app import NanxiTuneApp
from conftest import wait_for


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


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
    assert not M.wants_log(s)
    s.add(6, 0.0003)
    assert M.wants_log(s)
    z = M.Series()
    z.add(0, 0.0)
    z.add(1, 0.003)  # warmup from zero: no log of 0
    assert not M.wants_log(z)


# --- (b) keys typed in a burst into a config field ----------------------------------------------------------------

async def burst(pilot, *keys: str) -> None:
    """Send ``keys`` the way a terminal read delivers a burst: all queued at once, no pause between them
    (``pilot.press`` waits for the app to go idle after each key, which hides ordering bugs)."""
    from textual import events
    from textual.keys import _character_to_key

    app = pilot.app
    for key in keys:
        char = key if len(key) == 1 else None
        if len(key) == 1 and not key.isalnum():
            key = _character_to_key(key)
        event = events.Key(key, char)
        event.set_sender(app)
        app._driver.send_message(event)


BURSTS = [
    (["end", "ctrl+u", *"0.004"], "0.004"),  # left the field empty
    (["end", *["backspace"] * 5, *"0.002"], "0.002"),  # gave 0.003 (or 0.0.0 in a terminal)
    (["home", "right", "right", "delete", "delete", "delete", *"05"], "0.05"),
]


def test_a_burst_of_keys_in_a_config_field_applies_in_order(tmp_path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.form.all_mounted)
            row = app.form.show_key("train.base_lr")
            await pilot.pause()
            row.editor.focus()
            await pilot.pause()
            for keys, want in BURSTS:
                row.set_value(0.003)
                row.editor.cursor_position = len(row.editor.value)
                await pilot.pause()
                await burst(pilot, *keys)
                await wait_for(pilot, lambda: row.editor.value == want, timeout=5)
                await wait_for(pilot, lambda: app.form.config is not None  # re-validated
                               and app.form.config.train.base_lr == float(want), timeout=5)

    run(go())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_real_terminal_burst_of_keys_in_a_config_field(tmp_path):
    """The same bursts in a real terminal: tmux writes each send-keys call's keys to the app in one go."""
    from conftest import start_tui

    session = start_tui(tmp_path, "burst").session  # the demo preset, as the app opens by default
    try:
        def field() -> str | None:
            m = re.search(r"base_lr\s+基础学习率 ⟳ *(\S*)", tmux("capture-pane", "-p", "-t", session))
            return m and m.group(1)

        def wait(cond, timeout: float) -> None:
            end = time.time() + timeout
            while time.time() < end:
                if cond():
                    return
                time.sleep(0.2)
            raise AssertionError(tmux("capture-pane", "-p", "-t", session))

        wait(lambda: "valid ✓" in tmux("capture-pane", "-p", "-t", session), 60)
        tmux("send-keys", "-t", session, "C-p")
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "-l", "train.base_lr")
        time.sleep(1.0)
        tmux("send-keys", "-t", session, "Enter")  # the palette jumps to the field and focuses it
        wait(lambda: field() == "0.003", 10)
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "End", "C-u", "0.004")  # one call: one burst
        time.sleep(1.5)
        assert field() == "0.004", tmux("capture-pane", "-p", "-t", session)
        tmux("send-keys", "-t", session, "End", *["BSpace"] * 5, "0.002")
        time.sleep(1.5)
        assert field() == "0.002", tmux("capture-pane", "-p", "-t", session)
        assert "1 changed" in tmux("capture-pane", "-p", "-t", session)
    finally:
        tmux("kill-session", "-t", session)


# --- (c) the sweep screen -------------------------------------------------------------------------------------

SWEEP_TINY = {"preprocess.input_size": 64, "data.synthetic_train": 16, "data.synthetic_val": 8, "data.batch_size": 8,
              "backbone.width": 8, "head.channels": 16, "train.epochs": 2, "eval.online": False}


def _sweep_host(screen, run_active: bool):
    from textual.app import App

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(screen)

        @property
        def run_active(self) -> bool:  # what the app reports while its own run trains
            return run_active

    return Host()


def _tiny_cfg():
    from nanxi_tune.engine import config as C

    return C.with_updates(C.load_preset("demo"), SWEEP_TINY)


def _status_cells(screen) -> list[str]:
    table = screen.query_one("#sweep-table")
    return [str(table.get_row_at(i)[4]) for i in range(table.row_count)]


def test_sweep_shows_the_training_trial_as_running(tmp_path, one_thread):
    from nanxi_tune.tui.sweep_view import SweepScreen

    screen = SweepScreen(_tiny_cfg(), tmp_path / "runs", key="train.base_lr", start=0.001, budget="400")

    async def go():
        app = _sweep_host(screen, run_active=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await pilot.press("f5")
            # the first trial trains (its steps arrive): its row reads "running", the others "pending"
            await wait_for(pilot, lambda: screen.rows() and screen.rows()[0]["steps"] >= 2, timeout=120)
            await wait_for(pilot, lambda: _status_cells(screen)[0] == "running", timeout=5)
            assert _status_cells(screen)[1:] == ["pending"] * 6
            await pilot.press("f7")  # stop: the detached study stops its trial with a checkpoint
            await wait_for(pilot, lambda: screen.state == "stopped" and not screen.alive, timeout=120)
            await wait_for(pilot, lambda: _status_cells(screen)[0] == "stopped", timeout=5)

    run(go())


def test_sweep_refuses_to_start_beside_a_training_run(tmp_path):
    from nanxi_tune.tui.sweep_view import SweepScreen

    screen = SweepScreen(_tiny_cfg(), tmp_path / "runs", key="train.base_lr", start=0.001, budget="3")

    async def go():
        app = _sweep_host(screen, run_active=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await pilot.press("f5")
            await wait_for(pilot, lambda: "a run is training" in str(screen.query_one("#sweep-status").render()),
                           timeout=10)
            assert screen.state == "idle" and screen.sweep is None
            assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())

    run(go())
