"""The TUI driving the real trainer: start, watch, pause, continue, stop, resume, open, quit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.tui.app import NanxiTuneApp
from nanxi_tune.tui.dialogs import Confirm, LiveEditDialog
from conftest import notices, wait_for

pytestmark = pytest.mark.slow

TINY = {"data.synthetic_train": 16, "data.synthetic_val": 8, "preprocess.input_size": 64,
        "data.batch_size": 8, "train.epochs": 4, "eval.interval": 100, "train.base_lr": 0.001,
        "backbone.width": 8, "head.channels": 16}


def tiny_preset(tmp_path: Path, **updates) -> str:
    cfg = C.with_updates(C.load_preset("demo"), TINY | updates)
    return str(C.save(cfg, tmp_path / "tiny.toml"))




def test_run_pause_continue_stop_resume_and_open(tmp_path):
    runs = tmp_path / "runs"
    epochs = 100  # 200 steps: pause and stop land long before the end, however fast the box
    total = epochs * 2
    preset = tiny_preset(tmp_path, **{"train.epochs": epochs})

    async def go():
        app = NanxiTuneApp(preset=preset, runs_root=runs)
        async with app.run_test(size=(120, 40), notifications=True) as pilot:
            await wait_for(pilot, lambda: app.form.all_mounted and app.query("#mon"))
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.running and app.trainer is not None and app.trainer.step >= 1)
            mon = app.monitor
            # pause at once (the UI may lag the trainer by many steps), then look at what arrived
            await pilot.press("f6")
            await wait_for(pilot, lambda: mon.state == "paused")
            paused_at = app.trainer.step
            status = str(app.query_one("#run-status").render())
            assert "[paused]" in status and "— img/s  ETA —" in status  # no stale speed / ETA while paused
            assert paused_at < total // 2
            await pilot.press("f5")  # a run in progress cannot be started twice
            await wait_for(pilot, lambda: any("already running" in n for n in notices(app)))
            # branch losses arrive in the table and the plots
            await wait_for(pilot, lambda: mon.latest_train.get("loss_shape") is not None)
            table = app.query_one("#latest")
            for name in ("loss_map", "loss_offset", "loss_shape"):
                cell = table.get_cell(name, "train")
                assert cell != "—" and float(cell) == pytest.approx(mon.latest_train[name], rel=1e-3)
                assert mon.series[f"train:{name}"][1]
            assert mon.series["train:loss"][0][0] == 1
            await pilot.pause(0.5)
            assert app.trainer.step == paused_at
            # F8 on the paused run: its live keys with their current values; an lr change applies at the next step
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, LiveEditDialog), timeout=10)
            assert app.screen.live
            assert "train.base_lr = 0.001" in str(app.screen.query_one("#live-keys Static").render())
            app.screen.query_one("#live-updates").value = "train.base_lr=0.0015"
            await pilot.press("enter")
            await wait_for(pilot, lambda: not isinstance(app.screen, LiveEditDialog), timeout=10)
            await wait_for(pilot, lambda: any("set: applied" in n for n in notices(app)), timeout=30)
            assert app.trainer.step == paused_at  # still paused
            # continue
            await pilot.press("f6")
            await wait_for(pilot, lambda: app.trainer.step > paused_at + 1)  # continued (the state may flash by)
            rows = map(json.loads, (app.run_dir / "metrics.jsonl").read_text().splitlines())
            lr = {r["step"]: r["lr"] for r in rows if r.get("split", "train") == "train" and "lr" in r}
            assert lr[paused_at + 1] == pytest.approx(lr[paused_at] * 1.5, rel=1e-6), (paused_at, lr)
            # stop: checkpoint first
            await pilot.press("f7")
            await wait_for(pilot, lambda: not app.running)
            assert app.last_result == "stopped"
            run_dir = app.run_dir
            stopped_at = app.trainer.step
            assert (run_dir / "checkpoints" / "last.pt").exists()
            assert 1 <= stopped_at < total
            # resume with a live edit (lr) through the dialog
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, LiveEditDialog), timeout=10)
            assert not app.screen.live
            inp = app.screen.query_one("#live-updates")
            inp.value = "train.base_lr=0.002"
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.running or app.run_dir != run_dir or app.last_result != "stopped"
                           or app.monitor.state != "stopped", timeout=60)
            await wait_for(pilot, lambda: not app.running, timeout=240)
            assert app.last_result == "finished", notices(app)
            steps = mon.series["train:loss"][0]
            assert steps == sorted(steps) and steps[-1] == total
            assert stopped_at + 1 in steps  # the step count continued from the checkpoint
            assert C.load(run_dir / "config.toml").train.base_lr == 0.002
            assert "val:mAP" in mon.series
            # runs tab lists it; opening it shows its curves from metrics.jsonl
            await pilot.press("alt+3")
            rows = app.query_one("#runs-table")
            await wait_for(pilot, lambda: rows.row_count == 1, timeout=30)
            rows.focus()
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.query_one("#tabs").active == "monitor", timeout=10)
            assert mon.series["train:loss"][0][-1] == total and mon.state == "finished"
        return run_dir

    run_dir = asyncio.run(go())

    # open a run given on the command line (nanxi-tune open RUN_DIR)
    async def reopen():
        app = NanxiTuneApp(open_run=run_dir, runs_root=runs)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.query("#mon") and app.monitor.series.get("train:loss"), timeout=20)
            assert app.monitor.run_name == run_dir.name

    asyncio.run(reopen())


def test_quit_during_run_asks_then_checkpoints(tmp_path):
    runs = tmp_path / "runs"
    preset = tiny_preset(tmp_path, **{"train.epochs": 5000})  # long enough never to finish before the "y"

    async def go():
        app = NanxiTuneApp(preset=preset, runs_root=runs)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.form.all_mounted and app.query("#mon"))
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.monitor.latest_train.get("loss") is not None)
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
            await pilot.press("n")
            await wait_for(pilot, lambda: not isinstance(app.screen, Confirm))
            assert app.running and app.is_running
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
            await pilot.press("y")
            await wait_for(pilot, lambda: not app.is_running, timeout=120)
        return app

    app = asyncio.run(go())
    assert app.last_result == "stopped", app.last_result
    assert "nanxi-tune resume" in app.exit_text and str(app.run_dir) in app.exit_text
    assert (app.run_dir / "checkpoints" / "last.pt").exists()


def test_f5_refuses_a_missing_data_path_before_making_a_run_folder(tmp_path):
    """Issue 22: a missing data path passed validation (valid ✓), failed at start and left a failed run behind."""
    import asyncio

    from nanxi_tune.engine import config as C
    from nanxi_tune.tui.app import NanxiTuneApp
    from conftest import notices, wait_for

    preset = C.save(C.with_updates(C.load_preset("demo"), {"data.train": str(tmp_path / "nowhere")}),
                    tmp_path / "p.toml")
    runs = tmp_path / "runs"

    async def go():
        app = NanxiTuneApp(preset=str(preset), runs_root=runs)
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            await wait_for(pilot, lambda: app.form.all_mounted, timeout=30)
            status = str(app.query_one("#config-status").render())  # said before F5: not "valid ✓"
            assert "valid ✓" not in status and "data not found" in status and "nowhere" in status, status
            await pilot.press("f5")
            await wait_for(pilot, lambda: any("data not found" in n for n in notices(app)), timeout=10)
            assert not app.running

    asyncio.run(go())
    assert not runs.exists() or not list(runs.iterdir())
