"""Layout snapshots at 80×24 and 160×48 (pytest-textual-snapshot): Config, Monitor (with a finding selected
and a budget projection), Runs, and the compare / sweep / schedule screens.

Update after an intended layout change with ``pytest tests/tui/test_tui_snapshots.py --snapshot-update``
and review the SVGs by eye (tests/tui/__snapshots__/).
"""

from __future__ import annotations

import math

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
    val[-1]["errors"] = {"map50": 0.75, "per_class_ap50": {"1": 0.8, "2": 0.7},  # what costs AP50 (issue 21)
                         "delta": {"classification": 0.01, "localisation": 0.12, "both": 0.0, "duplicate": 0.02,
                                   "background": 0.04, "missed": 0.06},
                         "counts": {"classification": 3, "localisation": 41, "both": 0, "duplicate": 5,
                                    "background": 12, "missed": 9}}
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
    from nanxi_tune.engine.diagnosis.projection import Projection

    mon.set_projection(Projection(step=60, total_steps=240, seconds_per_step=0.5, projected_days=120 / 86400,
                                  projected_days_with_evals=150 / 86400, eval_seconds=3.0, evals_planned=12,
                                  elapsed_days=30 / 86400, max_days=4.0, over=False, finding=None))
    mon.refresh_texts()
    mon.add_diagnosis({"kind": "diagnosis", "step": 40, "severity": "warning", "rule": "flat-loss-after-epoch-2",
                       "section": "13.1", "message": "train loss flat from epoch 2 on (lr too large; 平了)",
                       "evidence": {"median_before": 1.234, "median_after": 1.229, "epoch": 2},
                       "remedy": {"set": {"train.base_lr": 0.001}, "resume_from_step": 40,
                                  "text": "lower lr one step on the 0.001/0.003/0.01 grid"}})
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


async def show_runs_and_compare(pilot):
    """Two fabricated runs (config + metrics only): the Runs tab, then the compare screen."""
    import json

    from nanxi_tune.engine import config as C

    app = pilot.app
    root = app.runs_root
    train, val = fake_rows()
    for name, lr, t0 in (("run-a", 0.003, 1767261600), ("run-b", 0.01, 1767265200)):
        d = root / name
        d.mkdir(parents=True)
        C.save(C.with_updates(C.load_preset("demo"), {"train.base_lr": lr}), d / "config.toml")
        with open(d / "metrics.jsonl", "w") as f:
            for r in train + val:
                f.write(json.dumps(dict(r, time=t0 + r["step"], mAP=r.get("mAP", 0) * (lr * 100))
                                   if r["split"] == "val" else dict(r, time=t0 + r["step"])) + "\n")
        with open(d / "events.jsonl", "w") as f:
            f.write(json.dumps({"kind": "state", "state": "finished", "step": 60, "time": t0 + 61}) + "\n")
    await pilot.pause()
    app.action_tab("runs")
    for _ in range(100):
        if app.query_one("#runs-table").row_count == 2:
            break
        await pilot.pause(0.05)
    await pilot.pause(0.1)
    if app.size.width < 100:
        return
    await pilot.press("space", "down", "space", "c")
    for _ in range(200):
        if getattr(app.screen, "data", None) is not None:
            break
        await pilot.pause(0.05)
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs_and_compare_screen(snap_compare, tmp_path, size, monkeypatch):
    import time as _time

    monkeypatch.setenv("TZ", "UTC")
    _time.tzset()
    assert snap_compare(NanxiTuneApp(runs_root=tmp_path / "runs"), terminal_size=size,
                        run_before=show_runs_and_compare)


async def show_sweep(pilot):
    await pilot.pause()
    await pilot.press("f9")
    await pilot.pause(0.3)
    pilot.app.screen.set_focus(None)  # no blinking Input cursor in the snapshot
    await pilot.pause(0.1)


async def show_schedule(pilot):
    await pilot.pause()
    await pilot.press("ctrl+g")
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_sweep_screen(snap_compare, tmp_path, size):
    assert snap_compare(NanxiTuneApp(runs_root=tmp_path / "runs"), terminal_size=size, run_before=show_sweep)


@pytest.mark.parametrize("size", [(80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_schedule_screen(snap_compare, tmp_path, size):
    assert snap_compare(NanxiTuneApp(runs_root=tmp_path / "runs"), terminal_size=size, run_before=show_schedule)


def test_monitor_shows_what_costs_ap50():
    """The last evaluation's error breakdown, largest first, with the branch the notes tune for each kind."""
    import asyncio

    async def go():
        app = NanxiTuneApp()
        async with app.run_test(size=(160, 48)) as pilot:
            await show_monitor(pilot)
            text = str(app.monitor.query_one("#errors").render())
            lines = [ln.split() for ln in text.splitlines()[2:] if ln.strip()]
            assert [ln[0] for ln in lines[:3]] == ["localisation", "missed", "background"], text
            assert lines[0][1:4] == ["0.120", "41", "shape"], text

    asyncio.run(go())


async def show_predictions(pilot):
    """The Predictions view on a fabricated image (no model: the worker's result is handed in as it would be)."""
    from PIL import Image, ImageDraw

    from nanxi_tune.engine.inference.predict import Prediction
    from nanxi_tune.tui.predictions_view import PredictionsScreen

    img = Image.new("RGB", (160, 120), (40, 60, 90))
    d = ImageDraw.Draw(img)
    d.ellipse([20, 20, 60, 60], fill=(230, 200, 40))
    d.rectangle([100, 60, 140, 100], fill=(200, 60, 60))
    pred = Prediction("000001.png", 1, 160, 120, [(18, 19, 61, 62), (98, 58, 141, 101), (60, 5, 90, 30)],
                      [0.91, 0.55, 0.4], [1, 1, 2], ["circle", "circle", "square"])
    screen = PredictionsScreen("runs/run-a")
    screen._predict = lambda: None  # the worker would load torch and the run's weights
    await pilot.app.push_screen(screen)
    await pilot.pause()
    screen._loaded([{"pred": pred, "gt": [(20, 20, 60, 60), (100, 60, 140, 100)], "gt_names": ["circle", "square"],
                     "image": img}], ["circle", "square"])
    await pilot.pause(0.2)


def test_predictions_screen(snap_compare, tmp_path):
    assert snap_compare(NanxiTuneApp(runs_root=tmp_path / "runs"), terminal_size=(80, 24), run_before=show_predictions)


def test_predictions_list_reads_without_colour():
    """Each box in words: ✓ hit, ✗ false (a right place with a wrong class counts false), ○ missed."""
    import asyncio

    async def go():
        app = NanxiTuneApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await show_predictions(pilot)
            text = str(app.screen.query_one("#pred-list").render())
            assert "✓ circle 0.91" in text and "✗ circle 0.55" in text and "✗ square 0.40" in text, text
            assert "○ gt square missed" in text, text
            info = str(app.screen.query_one("#pred-info").render())
            assert "image 1/1" in info and "3 predicted, 2 labelled · 3 errors" in info, info
            await pilot.press("plus", "plus", "plus")
            await pilot.pause()
            assert "score ≥ 0.45" in str(app.screen.query_one("#pred-info").render())
            assert "square 0.40" not in str(app.screen.query_one("#pred-list").render())

    asyncio.run(go())


def test_a_new_score_threshold_keeps_the_image_shown():
    import asyncio

    from PIL import Image

    from nanxi_tune.engine.inference.predict import Prediction

    async def go():
        app = NanxiTuneApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await show_predictions(pilot)
            screen = app.screen
            img = Image.new("RGB", (60, 40))
            # a second image: 3 false boxes at 0.32 and 5 more at 0.27 (− brings them in: it sorts first then)
            boxes = [(0, 0, 10, 10)] + [(4 * k + 12, 20, 4 * k + 14, 22) for k in range(8)]
            scores = [0.9] + [0.32] * 3 + [0.27] * 5
            clean = Prediction("000002.png", 2, 60, 40, boxes, scores, [1] + [2] * 8, ["circle"] + ["square"] * 8)
            screen._loaded([*screen.items, {"pred": clean, "gt": [(0, 0, 10, 10)], "gt_names": ["circle"],
                                            "image": img}], ["circle", "square"])
            await pilot.pause()
            await pilot.press("right")  # to 000002 (3 errors at 0.30, ordered after 000001's 3 by the val order)
            await pilot.pause()
            assert "000002.png" in str(screen.query_one("#pred-info").render())
            await pilot.press("minus")  # 0.25: 000002 has 8 errors and sorts first; it stays on screen
            await pilot.pause()
            info = str(screen.query_one("#pred-info").render())
            assert "image 1/2 000002.png" in info and "score ≥ 0.25" in info and "8 errors" in info, info

    asyncio.run(go())


@pytest.mark.parametrize("found", ["sixel", "kitty"])
def test_predictions_use_real_pixels_where_the_terminal_draws_them(found, monkeypatch):
    """A terminal that answered Sixel / Kitty graphics at start-up gets textual-image's widget, fed the boxed image at
    the cells' pixel size (here 10×20 px a cell); the list in words is the same."""
    import asyncio

    from textual_image.widget import SixelImage, TGPImage

    from nanxi_tune.tui import pixels

    monkeypatch.setattr(pixels, "cell_pixels", lambda: (10, 20))
    pixels.set_found(pixels.Pixels(found))

    async def go():
        app = NanxiTuneApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await show_predictions(pilot)
            widget = app.screen.query_one("#pred-image")
            assert isinstance(widget, SixelImage if found == "sixel" else TGPImage)
            cols, rows = 80 - 34, 24 - 5
            assert max(widget.image.width / (cols * 10), widget.image.height / (rows * 20)) == pytest.approx(1, abs=0.01)
            assert "✓ circle 0.91" in str(app.screen.query_one("#pred-list").render())

    try:
        asyncio.run(go())
    finally:
        pixels.set_found(pixels.Pixels.HALF_BLOCKS)


def test_pixels_are_half_blocks_without_a_terminal_or_when_asked(monkeypatch):
    """No terminal to ask (tests, pipes) or NANXI_TUNE_PIXELS=halfblocks: half blocks, and no query is written."""
    from nanxi_tune.tui import pixels

    assert pixels.detect() is pixels.Pixels.HALF_BLOCKS  # pytest's stdout is not a terminal
    monkeypatch.setenv(pixels.ENV, "halfblocks")
    monkeypatch.setattr("sys.__stdout__.isatty", lambda: True, raising=False)
    assert pixels.detect() is pixels.Pixels.HALF_BLOCKS and pixels.cell_pixels() == (1, 2)
