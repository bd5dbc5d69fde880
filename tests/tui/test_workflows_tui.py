"""Workflow screens through Textual's Pilot (a sweep, an NMS tuning, the schedule) and the headless commands."""

from __future__ import annotations

import asyncio
import os
import json
from pathlib import Path

import pytest
import torch
from textual.app import App

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.workflows import sweep as S
from nanxi_tune.engine.train.trainer import Trainer
from nanxi_tune.cli import main as cli
from nanxi_tune.tui.post_view import TunePostScreen
from nanxi_tune.tui.schedule_view import ScheduleScreen
from nanxi_tune.tui.sweep_view import ConfigApplied, SweepScreen, parse_budget
from conftest import wait_for

TINY = {"preprocess.input_size": 64, "data.synthetic_train": 16, "data.synthetic_val": 8, "data.batch_size": 8,
        "backbone.width": 8, "head.channels": 16, "train.epochs": 2, "eval.online": False}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**updates):
    return C.with_updates(C.load_preset("demo"), TINY | updates)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("wf")
    run = root / "runs" / "trained"
    assert Trainer(tiny(**{"train.base_lr": 0.01, "train.epochs": 4}), run).run() == "finished"
    torch.set_num_threads(n)
    return run


class Host(App):
    def __init__(self, screen) -> None:
        super().__init__()
        self.first = screen
        self.applied: list[ConfigApplied] = []

    def on_mount(self) -> None:
        self.push_screen(self.first)

    def on_config_applied(self, message: ConfigApplied) -> None:
        self.applied.append(message)




def test_parse_budget():
    assert parse_budget("200") == (200, None) and parse_budget("5m") == (None, 5.0)
    assert parse_budget("1.5 min") == (None, 1.5)
    with pytest.raises(ValueError):
        parse_budget("0")


def test_pilot_drives_a_sweep_and_applies_the_best(tmp_path):
    """F5 starts the sweep as a detached study; the screen follows it to the end and F8 applies the best."""
    cfg = tiny()
    screen = SweepScreen(cfg, tmp_path, key="train.base_lr", start=0.001, budget="3")

    async def go():
        app = Host(screen)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            start = screen.query_one("#sweep-start")
            start.value = "0.0001"
            await pilot.press("f5")
            await wait_for(pilot, lambda: screen.sweep_dir is not None)
            owner = runctl.read_owner(screen.sweep_dir)
            await wait_for(pilot, lambda: screen.state == "finished" and not screen.alive, timeout=300)
            assert owner is None or owner.pid != os.getpid()  # its own process, not this one
            table = screen.query_one("#sweep-table")
            assert table.row_count == 7
            rows = screen.rows()
            assert [r["value"] for r in rows] == S.window(0.0001)
            assert all(r["status"] == "finished" for r in rows) and sum(r["best"] for r in rows) == 1
            chart = str(screen.query_one("#sweep-chart").render())
            assert "★" in chart
            await pilot.press("f8")
            await pilot.pause()
            best = next(r["value"] for r in rows if r["best"])
            assert app.applied and app.applied[-1].updates == {"train.base_lr": best}
            assert app.applied[-1].cfg.train.base_lr == best
            await pilot.press("escape")
            await pilot.pause()
        return screen

    asyncio.run(go())
    assert (screen.sweep_dir / S.SWEEP_JSON).exists() and (screen.sweep_dir / rundir.JOURNAL).exists()


def test_open_a_study_shows_its_screen(tmp_path):
    """`nanxi-tune open STUDY` (and Enter on its Runs row) opens the study's screen with its trials."""
    from nanxi_tune.tui.app import NanxiTuneApp

    sw = S.Sweep(tmp_path / "sweep-x", tiny(), "train.base_lr", [0.001, 0.01], trial_steps=2)
    assert sw.run() == "finished"

    async def go():
        app = NanxiTuneApp(open_run=sw.dir, runs_root=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen), timeout=60)
            await wait_for(pilot, lambda: len(app.screen.rows()) == 2, timeout=30)
            assert app.screen.state == "finished"
            assert [r["status"] for r in app.screen.rows()] == ["finished", "finished"]

    asyncio.run(go())


def test_pilot_drives_an_nms_tuning(trained):
    cfg0 = C.load(trained / rundir.CONFIG)
    screen = TunePostScreen(trained)

    async def go():
        app = Host(screen)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await pilot.press("f5")
            await wait_for(pilot, lambda: screen.phase != "running")
            assert screen.phase == "done", str(screen.query_one("#post-status").render())
            assert screen.query_one("#post-table").row_count >= 12
            res = screen.result
            assert res.best["mAP"] >= res.default["mAP"]
            assert "vs defaults" in str(screen.query_one("#post-status").render())
            assert "flip test (翻转测试)" in str(screen.query_one("#post-status").render())
            assert "shape vote (邻格投票)" in str(screen.query_one("#post-status").render())
            await pilot.press("f8")
            await pilot.pause()
            assert app.applied and set(app.applied[-1].updates) == {
                "postprocess.nms_iou", "postprocess.score_threshold", "postprocess.top_k", "postprocess.flip_test",
                "postprocess.shape_vote"}
        return screen

    asyncio.run(go())
    cfg1 = C.load(trained / rundir.CONFIG)
    assert cfg1.postprocess.nms_iou == screen.result.best["postprocess.nms_iou"]
    C.save(cfg0, trained / rundir.CONFIG)  # leave the shared run as it was


def test_schedule_walks_the_rounds_and_links_actions(trained, tmp_path):
    root = trained.parent
    sw = S.Sweep(root / "sweep-train.base_lr-x", tiny(), "train.base_lr", [0.001, 0.01], trial_steps=2)
    sw.run()
    screen = ScheduleScreen(tiny(), root, stats_samples=4, autobatch_cap_gb=0.05)

    async def go():
        app = Host(screen)
        async with app.run_test(size=(140, 45)) as pilot:
            await pilot.pause()
            table = screen.query_one("#sched-table")
            assert table.row_count == 10
            # round 1 step 1: QMV
            await pilot.press("enter")
            await pilot.pause()
            assert screen.cfg.eval.val_data_mode == "qmv" and app.applied[-1].updates["eval.val_data_mode"] == "qmv"
            # lr: the journal shows the sweep; Enter opens the sweep screen on train.base_lr
            await pilot.press("down")
            await pilot.pause()
            detail = str(screen.query_one("#sched-detail").render())
            assert "seven stars" in detail and "train.base_lr" in detail
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, SweepScreen) and app.screen.key == "train.base_lr"
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is screen
            # mean/std after augmentation
            ids = [s.id for s, _ in screen.recorded]
            table.move_cursor(row=ids.index("normalize"))
            await pilot.press("enter")
            await wait_for(pilot, lambda: not screen.busy and screen.proposal is not None, timeout=60)
            await pilot.press("f8")
            await pilot.pause()
            assert screen.cfg.normalize.source == "computed"
            # autobatch
            table.move_cursor(row=ids.index("batch"))
            await pilot.press("enter")
            await wait_for(pilot, lambda: not screen.busy and screen.proposal is not None, timeout=60)
            await pilot.press("f8")
            await pilot.pause()
            assert app.applied[-1].source == "autobatch" and screen.cfg.data.batch_size >= 1
            # after training: NMS on the newest trained run
            table.move_cursor(row=9)
            await pilot.pause()
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, TunePostScreen)
            await pilot.press("escape")

    asyncio.run(go())


def test_headless_commands(tmp_path, capsys, trained):
    sets = [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in TINY.items()]
    sets = [s.replace("False", "false") for s in sets]
    runs = tmp_path / "runs"
    assert cli.main(["--runs", str(runs), "sweep", "--preset", "demo", "--param", "loss.loss_scale", "--start", "1",
                     "--trial-steps", "2", "--quiet", "--save", str(tmp_path / "best.toml"), "--set", *sets]) == 0
    out = capsys.readouterr().out
    assert "seven stars: loss.loss_scale" in out and "★" in out and "mAP vs value" in out
    assert C.load(tmp_path / "best.toml").loss.loss_scale in S.window(1)
    (sweep_dir,) = S.list_sweeps(runs)
    assert cli.main(["sweep", "--resume", str(sweep_dir), "--quiet"]) == 0  # finished: nothing to rerun

    assert cli.main(["stats", "--preset", "demo", "--samples", "4", "--save", str(tmp_path / "n.toml"),
                     "--set", *sets]) == 0
    assert "normalize.mean=[" in capsys.readouterr().out
    assert C.load(tmp_path / "n.toml").normalize.source == "computed"

    assert cli.main(["autobatch", "--preset", "demo", "--cap-gb", "0.05", "--set", *sets]) == 0
    assert "cpu-estimate" in capsys.readouterr().out

    cfg0 = C.load(trained / rundir.CONFIG)
    assert cli.main(["tune-post", str(trained), "--top", "3"]) == 0
    assert "best: nms_iou" in capsys.readouterr().out
    assert C.load(trained / rundir.CONFIG) == cfg0  # no --apply: config untouched

    assert cli.main(["journal", "--runs", str(runs), "--markdown"]) == 0
    md = capsys.readouterr().out
    assert "loss.loss_scale seven stars" in md and "  - trial-" in md
    assert cli.main(["journal", "--compare", str(trained), str(Path(sweep_dir) / "trial-1")]) == 0
    assert "mAP" in capsys.readouterr().out
    assert cli.main(["budget", str(trained)]) == 0
