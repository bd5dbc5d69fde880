"""The app driven through the run seam with a fast fake trainer (tests/fake_trainer.py): F5, F6, F8, F7 and
F8-resume as a user presses them, each checked on screen and in the run folder. No torch, seconds not minutes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.tui.app import NanxiTuneApp
from nanxi_tune.tui.dialogs import LiveEditDialog
from conftest import notices, wait_for
from fake_trainer import FakeTrainer


def train_elsewhere(run: Path, updates: dict) -> tuple[FakeTrainer, threading.Thread]:
    """A run another process trains (here a thread the app does not know about)."""
    t = FakeTrainer(C.with_updates(C.load_preset("demo"), updates), run)
    th = threading.Thread(target=t.run, daemon=True)
    th.start()
    return t, th


def acks(run: Path) -> list[dict]:
    return [e for e in rundir.read_events(run) if e.get("kind") == "ack"]


def test_start_pause_live_edit_stop_resume(tmp_path: Path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs", trainer_cls=FakeTrainer)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.form.all_mounted and app.query("#mon"), timeout=30)
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.session is not None and app.session.alive and app.monitor.step >= 3)
            run = app.run_dir
            await pilot.press("f6")
            await wait_for(pilot, lambda: app.monitor.state == "paused")
            assert "[paused]" in str(app.query_one("#run-status").render())
            steps = len(rundir.read_metrics(run))
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, LiveEditDialog))
            assert "train.base_lr = 0.003" in str(app.screen.query_one("#live-keys Static").render())
            await pilot.press(*"train.base_lr=0.0004", "enter")
            await wait_for(pilot, lambda: any(a["op"] == "set" for a in acks(run)))
            assert C.load(run / rundir.CONFIG).train.base_lr == 0.0004
            assert len(rundir.read_metrics(run)) == steps  # still paused
            await pilot.press("f6")
            await wait_for(pilot, lambda: app.monitor.state == "running")
            await pilot.press("f7")
            await wait_for(pilot, lambda: not app.running)
            assert app.last_result == "stopped" and runctl.status(run).state == runctl.RunState.STOPPED
            await pilot.press("f8")  # a stopped run: resume (live edits optional)
            await wait_for(pilot, lambda: isinstance(app.screen, LiveEditDialog) and not app.screen.live)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.running and app.session.alive)
            await wait_for(pilot, lambda: not app.running, timeout=60)
            assert app.last_result == "finished"
            lrs = {m["lr"] for m in rundir.read_metrics(run) if m.get("split") == "train"}
            assert 0.0004 * 16 / 16 in lrs

    asyncio.run(go())


def test_attach_to_a_run_another_process_owns(tmp_path: Path):
    """`nanxi-tune open RUN` on a live run: its curves follow, F6 pauses it over the channel, quitting leaves it."""
    run = tmp_path / "runs" / "r"
    t, th = train_elsewhere(run, {"train.epochs": 1000})

    async def go():
        app = NanxiTuneApp(open_run=run, runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.session is not None and app.session.alive and app.monitor.step > 2)
            assert app.session.kind.value == "attached" and "attached" in app.sub_title
            assert "GPU/rank 3.1 3.0/80 GiB" in str(app.query_one("#system").render())  # the run's, every rank
            await pilot.press("f6")
            await wait_for(pilot, lambda: t.state == "paused")
            await pilot.press("ctrl+q")  # no question: the run is not this app's
        assert "keeps training" in app.exit_text and f"nanxi-tune open {run}" in app.exit_text

    asyncio.run(go())
    assert th.is_alive() and t.state == "paused"
    runctl.request(run, runctl.Op.STOP)
    th.join(10)
    assert t.state == "stopped"


def test_attached_run_brings_its_config_and_others_edits_into_the_panels(tmp_path: Path):
    """The Config tab of an attached run shows the run's values (not the app's preset), and follows a live edit
    made from another shell."""
    run = tmp_path / "runs" / "r"
    t, th = train_elsewhere(run, {"train.epochs": 1000, "train.base_lr": 0.0123})

    async def go():
        app = NanxiTuneApp(open_run=run, runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await wait_for(pilot, lambda: app.session is not None and app.session.alive and app.form.locked_by)
            assert app.form.row("train.base_lr").get_value() == 0.0123
            assert app.form.row("data.batch_size").editor.disabled
            runctl.request(run, runctl.Op.SET, {"train.base_lr": 0.0042}, "ctl pid 1@elsewhere")
            await wait_for(pilot, lambda: app.form.row("train.base_lr").get_value() == 0.0042)
            await wait_for(pilot, lambda: any("from ctl" in n for n in notices(app)), timeout=10)
            await pilot.press("ctrl+q")

    asyncio.run(go())
    runctl.request(run, runctl.Op.STOP)
    th.join(10)
