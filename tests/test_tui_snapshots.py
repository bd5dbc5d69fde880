"""Layout snapshots of the Config and Monitor screens at 80×24 and 160×48 (pytest-textual-snapshot).

Update after an intended layout change with ``pytest tests/test_tui_snapshots.py --snapshot-update``
and review the SVGs by eye (tests/__snapshots__/).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nanxi_tune.tui import monitor as M
from nanxi_tune.tui.app import NanxiTuneApp

SIZES = [(80, 24), (160, 48)]


@pytest.fixture(autouse=True)
def _frozen_system(monkeypatch):
    monkeypatch.setattr(M.SystemStrip, "sample",
                        lambda self: self.update("CPU  97%  RAM 3.1/7.7 GiB  RSS 812 MiB  GPU —"))


def fake_rows(n: int = 60, total: int = 240):
    train, val = [], []
    for s in range(1, n + 1):
        decay = math.exp(-s / 25)
        lm, lo, ls = 2.0 * decay + 0.3, 0.8 * decay + 0.2, 1.5 * decay + 0.4 + 0.05 * math.sin(s / 3)
        train.append(dict(step=s, epoch=(s - 1) // 20, loss=lm + lo + ls, loss_map=lm, loss_offset=lo,
                          loss_shape=ls, lr=0.003 if s < 40 else 0.0003, grad_norm=3.0 * decay + 0.5,
                          s_map=-0.01 * s / 10, s_offset=0.0, s_shape=0.01 * s / 10, images_per_s=41.5,
                          total_steps=total, split="train"))
        if s % 20 == 0:
            val.append(dict(step=s, epoch=s // 20, mAP=0.1 * s / 20, AP50=0.25 * s / 20, loss=lm + lo + ls + 0.2,
                            loss_map=lm + 0.1, loss_offset=lo + 0.05, loss_shape=ls + 0.05, split="val"))
    return train, val


async def show_monitor(pilot):
    app = pilot.app
    await pilot.pause()
    app.action_tab("monitor")
    await pilot.pause()
    mon = app.monitor
    mon.reset("run-20260101-120000", 4.0)
    train, val = fake_rows()
    mon.add_train(train, live=False)
    mon.add_val(val)
    mon._rate_start, mon._rate_last = (0.0, 0), (30.0, 60)  # 2 steps/s, fixed for the snapshot
    mon.set_state("running")
    mon._rate_start, mon._rate_last = (0.0, 0), (30.0, 60)
    mon.refresh_texts()
    mon.add_diagnosis(40, "warning", "loss_flat_after_epoch2", "13.1",
                      "loss stays flat from the 2nd epoch on: lr too large; lower train.base_lr")
    mon.focus()
    await pilot.pause()
    mon.redraw_plots(force=True)
    await pilot.pause()


async def show_config(pilot):
    app = pilot.app
    for _ in range(100):
        if app.form.all_mounted:
            break
        await pilot.pause(0.05)
    app.form.set_key("train.base_lr", 0.01)  # one changed value
    app.form.set_key("preprocess.input_size", 100)  # one invalid value
    app.form.scroll_home(animate=False)
    app.screen.set_focus(None)
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_config_screen(snap_compare, tmp_path, size):
    assert snap_compare(NanxiTuneApp(runs_root=tmp_path / "runs"), terminal_size=size, run_before=show_config)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_monitor_screen(snap_compare, tmp_path, size):
    assert snap_compare(NanxiTuneApp(runs_root=tmp_path / "runs"), terminal_size=size, run_before=show_monitor)
