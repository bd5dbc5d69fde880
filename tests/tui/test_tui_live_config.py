"""The Config tab while a run trains: non-live fields are read-only, Enter on a live field applies it to the run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import recorder, rundir
from nanxi_tune.tui.app import NanxiTuneApp
from conftest import TINY, wait_for

pytestmark = pytest.mark.slow


def test_live_fields_apply_to_the_running_run_and_the_rest_are_read_only(tmp_path: Path):
    cfg = C.with_updates(C.load_preset("demo"), TINY | {"train.epochs": 1000, "eval.interval": 1000})
    preset = str(C.save(cfg, tmp_path / "tiny.toml"))

    async def go():
        app = NanxiTuneApp(preset=preset, runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.form.all_mounted and app.query("#mon"))
            assert not app.form.row("data.batch_size").editor.disabled
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.session is not None and app.session.alive and app.monitor.step >= 1)
            await pilot.press("alt+1")
            form = app.form
            assert form.row("data.batch_size").editor.disabled  # not live: read-only while it trains
            assert not form.row("train.base_lr").editor.disabled
            assert "trains: only ⟳ live keys change" in str(app.query_one("#config-status").render())
            row = form.show_key("train.base_lr")
            row.editor.focus()
            # the value set, Enter pressed: Pilot waits for the app to go idle after every key, which a training
            # run streaming curves keeps from happening for ~2 s a key (typing is tested in test_tui.py)
            row.editor.value = "0.0005"
            await pilot.press("enter")
            run = app.run_dir
            await wait_for(pilot, lambda: any(e.get("kind") == "ack" and e.get("applied")
                                              for e in rundir.read_events(run)), timeout=60)
            ack = next(e for e in rundir.read_events(run) if e.get("kind") == "ack")
            assert ack["changes"] == [["train.base_lr", 0.003, 0.0005]]
            assert C.load(run / rundir.CONFIG).train.base_lr == 0.0005
            await pilot.press("f7")
            await wait_for(pilot, lambda: not app.running, timeout=60)
            assert not form.row("data.batch_size").editor.disabled  # editable again once the run is over

    asyncio.run(go())


def test_d_dismisses_the_selected_finding(tmp_path: Path):
    from nanxi_tune.engine.run.events import Diagnosis
    from nanxi_tune.engine.workflows.remedy import open_findings
    from nanxi_tune.engine.train.trainer import Trainer

    run = tmp_path / "runs" / "r"
    assert Trainer(C.with_updates(C.load_preset("demo"), TINY | {"train.epochs": 1}), run).run() == "finished"
    finding = Diagnosis(rule="train-val-gap", severity="warning", section="13.2", message="val loss far from train",
                        evidence={}, remedy={"set": {"train.base_lr": 0.001}, "text": "lower the lr"}, step=6)
    recorder.append(run, finding)
    assert "train-val-gap" in [f["rule"] for f in open_findings(run)]

    async def go():
        app = NanxiTuneApp(open_run=run, runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.query("#mon") and any(f["rule"] == "train-val-gap"
                                                                     for f in app.monitor.findings), timeout=30)
            mon = app.monitor
            row = next(i for i, f in enumerate(mon.findings) if f["rule"] == "train-val-gap")
            table = mon.query_one("#diagnoses")
            table.move_cursor(row=row)
            mon.focus()
            await pilot.press("d")
            await wait_for(pilot, lambda: "train-val-gap" not in [f["rule"] for f in open_findings(run)], timeout=10)
            assert "dismissed" in str(table.get_cell(str(row), "severity"))

    asyncio.run(go())


def test_config_status_shows_the_global_batch_of_a_data_parallel_run(tmp_path: Path):
    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(120, 24)) as pilot:
            await wait_for(pilot, lambda: app.form.all_mounted)
            status = app.query_one("#config-status")
            assert "global" not in str(status.render())
            app.form.set_key("train.devices", 4)
            await wait_for(pilot, lambda: "batch 16/device × 4 = 64 global" in str(status.render()), timeout=10)

    asyncio.run(go())
