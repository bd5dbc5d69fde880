"""The app with the workflow screens, findings with one-key remedy, budget projection and runs compare (Pilot)."""

from __future__ import annotations

import asyncio
import json

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.tui.app import NanxiTuneApp
from nanxi_tune.tui.palette import ACTIONS
from nanxi_tune.tui.sweep_view import ConfigApplied
from conftest import notices, palette, wait_for

TINY = {"preprocess.input_size": 64, "data.synthetic_train": 48, "data.synthetic_val": 8, "data.batch_size": 8,
        "backbone.width": 8, "head.channels": 16, "train.epochs": 3, "eval.interval": 1, "eval.online": True}


def tiny(**updates) -> C.Config:
    return C.with_updates(C.load_preset("demo"), TINY | updates)




async def ready(pilot):
    await wait_for(pilot, lambda: pilot.app.form.all_mounted and pilot.app.query("#mon")
                   and pilot.app.query("#runs-table"), timeout=30)
    await pilot.pause()


def test_actions_have_bindings_with_ids_tooltips_and_palette_entries():
    names = {a for a, _n, _h in ACTIONS}
    by_action = {b.action: b for b in NanxiTuneApp.BINDINGS}
    for action in ("open_sweep", "tune_post", "open_schedule", "compute_stats", "autobatch"):
        assert action in names
        assert by_action[action].id == action and by_action[action].tooltip
    from nanxi_tune.tui.runs_view import RunsPane
    from nanxi_tune.tui.monitor import Monitor

    (r,) = [b for b in Monitor.BINDINGS if b.id == "apply_remedy"]
    assert r.key == "r" and r.action == "app.apply_remedy" and r.tooltip and "apply_remedy" in names
    assert {b.id for b in RunsPane.BINDINGS} == {"mark_run", "compare_runs", "show_predictions_runs"}
    assert "compare_runs" in names and "show_predictions" in names
    (p,) = [b for b in Monitor.BINDINGS if b.id == "show_predictions"]
    assert p.key == "p" and p.action == "app.show_predictions" and p.tooltip
    # the footer keeps the run keys, the tab key and quit; the rest live in the palette
    shown = {b.action for b in NanxiTuneApp.BINDINGS if b.show}
    assert shown == {"start_run", "start_detached", "pause_run", "stop_run", "resume_run", "quit"}


def test_workflow_screens_open_and_config_applied_marks_changes(tmp_path):
    from nanxi_tune.tui.schedule_view import ScheduleScreen
    from nanxi_tune.tui.sweep_view import SweepScreen

    async def go():
        app = NanxiTuneApp(preset=str(C.save(tiny(), tmp_path / "tiny.toml")), runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await ready(pilot)
            app.form.set_key("train.base_lr", 0.002)
            await pilot.press("f9")
            await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen), timeout=10)
            sweep = app.screen
            assert isinstance(sweep, SweepScreen) and sweep.cfg.train.base_lr == 0.002  # seeded with the form
            sweep.post_message(ConfigApplied(sweep.cfg, "sweep x", {"train.base_lr": 0.01}))
            await wait_for(pilot, lambda: app.form.config.train.base_lr == 0.01, timeout=10)
            await pilot.press("escape")
            await wait_for(pilot, lambda: any("config updated (sweep x)" in n for n in notices(app)), timeout=10)
            assert app.form.row("train.base_lr").has_class("-changed")
            await pilot.press("ctrl+g")
            await wait_for(pilot, lambda: isinstance(app.screen, ScheduleScreen), timeout=10)
            await pilot.press("enter")  # round 1: QMV → ConfigApplied from the schedule
            await wait_for(pilot, lambda: app.form.config.eval.val_data_mode == "qmv", timeout=10)
            assert "eval.val_data_mode" in app.form.changed_keys()
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, ScheduleScreen), timeout=10)
            await pilot.press("ctrl+n")  # no trained run yet
            await wait_for(pilot, lambda: any("No trained run" in n for n in notices(app)), timeout=10)
            # the palette finds the workflow actions
            await palette(pilot, "seven-stars")
            await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen), timeout=10)

    asyncio.run(go())


@pytest.mark.slow
def test_stats_and_autobatch_write_into_the_form(tmp_path, one_thread):
    async def go():
        app = NanxiTuneApp(preset=str(C.save(tiny(), tmp_path / "tiny.toml")), runs_root=tmp_path / "runs",
                           stats_samples=4, autobatch_cap_gb=0.05)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await ready(pilot)
            await pilot.press("alt+m")
            await wait_for(pilot, lambda: any("Computing mean/std" in n for n in notices(app)), timeout=5)
            await wait_for(pilot, lambda: app.busy_task is None and app.form.config.normalize.source == "computed")
            assert not app.query_one("#task").display
            assert app.form.row("normalize.mean").has_class("-changed")
            assert app.form.config.normalize.mean != (0.485, 0.456, 0.406)
            await pilot.press("alt+b")
            await wait_for(pilot, lambda: app.busy_task is None and any("autobatch" in n and "batch_size" in n
                                                                         for n in notices(app)))
            assert app.form.config.data.batch_size >= 1

    asyncio.run(go())


@pytest.mark.slow
def test_finding_remedy_with_one_key(tmp_path, one_thread):
    """A live finding on a real run with ring checkpoints: select it, press r → child run, parent recorded."""
    from nanxi_tune.engine.run.events import Diagnosis

    runs = tmp_path / "runs"
    preset = C.save(tiny(**{"train.epochs": 100, "train.base_lr": 0.003}), tmp_path / "tiny.toml")  # outlasts the test

    async def go():
        app = NanxiTuneApp(preset=str(preset), runs_root=runs)
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            await ready(pilot)
            await pilot.press("f5")
            await wait_for(pilot, lambda: app.running and app.run_dir is not None)
            parent = app.run_dir
            mon = app.monitor
            await wait_for(pilot, lambda: rundir.ring_checkpoints(parent), timeout=180)
            # pause: a running parent rotates its checkpoint ring, and under load the one picked here could
            # be gone before "r" (the child would then start from scratch)
            await pilot.press("f6")
            await wait_for(pilot, lambda: mon.state == "paused")
            step = int(rundir.ring_checkpoints(parent)[0].stem.split("-")[1])
            app.session.bridge(Diagnosis(rule="flat-loss-after-epoch-2", severity="warning", section="13.1",
                                 message="train loss flat from epoch 2 on (lr too large)",
                                 evidence={"median_before": 1.23, "median_after": 1.22},
                                 remedy={"set": {"train.base_lr": 0.001}, "resume_from_step": step,
                                         "text": "lower lr one step on the grid"}, step=step + 1))
            mine = lambda: [i for i, f in enumerate(mon.findings) if f["rule"] == "flat-loss-after-epoch-2"]  # noqa: E731
            await wait_for(pilot, mine)
            table = mon.query_one("#diagnoses")
            table.focus()
            table.move_cursor(row=mine()[0])
            assert mon.selected_finding()["rule"] == "flat-loss-after-epoch-2"
            detail = lambda: str(mon.query_one("#diag-detail").render())  # noqa: E731 - repaints via a message
            await wait_for(pilot, lambda: "median_before = 1.23" in detail())
            assert "train.base_lr = 0.001" in detail()
            await pilot.press("r")
            await wait_for(pilot, lambda: app.run_dir != parent and app.running, timeout=180)
            child = app.run_dir
            await wait_for(pilot, lambda: any(child.name in n and "remedy" in n for n in notices(app)), timeout=10)
            await wait_for(pilot, lambda: mon.step > step, timeout=180)
            await pilot.press("f7")
            await wait_for(pilot, lambda: not app.running, timeout=180)
            return parent, child, step

    parent, child, step = asyncio.run(go())
    assert child.is_dir() and child.parent == parent.parent
    first = json.loads((child / rundir.EVENTS).read_text().splitlines()[0])
    assert first["parent"] == str(parent) and first["reason"] == "flat-loss-after-epoch-2"
    assert first["from_step"] == step
    applied = first["trial"]["applied"]  # proven by the seven stars downward from 0.003
    assert C.load(child / rundir.CONFIG).train.base_lr == applied and applied < 0.003
    assert C.load(parent / rundir.CONFIG).train.base_lr == 0.003
    events = rundir.read_events(parent)
    assert any(e.get("kind") == "state" and e.get("state") == "stopped" for e in events)
    steps = [m["step"] for m in rundir.read_metrics(child) if m.get("split") == "train"]
    assert steps[0] == 1 and max(steps) > step  # history up to the rewind point, then the child's own steps


@pytest.mark.slow
def test_budget_projection_and_compare_two_runs(tmp_path, one_thread):
    from nanxi_tune.engine.diagnosis import projection
    from nanxi_tune.engine.train.trainer import Trainer
    from nanxi_tune.tui.compare_view import CompareScreen

    runs = tmp_path / "runs"
    a, b = runs / "a-lr3", runs / "b-lr10"
    cfg = tiny(**{"train.epochs": 2, "diagnose.budget_min_lines": 2})
    assert Trainer(cfg, a).run() == "finished"
    assert Trainer(C.with_updates(cfg, {"train.base_lr": 0.01}), b).run() == "finished"

    async def go():
        app = NanxiTuneApp(runs_root=runs)
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            app.open_run(a)
            await wait_for(pilot, lambda: app.monitor.projection is not None, timeout=30)
            want = projection.latest(a)
            assert app.monitor.projection.projected_days == want.projected_days
            text = str(app.query_one("#budget").render())
            assert "projected" in text and "of 4 d" in text
            await pilot.press("alt+3")
            table = app.query_one("#runs-table")
            await wait_for(pilot, lambda: table.row_count == 2, timeout=30)
            assert app.focused is table
            await pilot.press("space", "down", "space", "c")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), timeout=10)
            screen = app.screen
            try:
                await wait_for(pilot, lambda: screen.data is not None, timeout=30)
            except AssertionError:
                raise AssertionError(str(screen.query_one("#cmp-summary").render())) from None
            assert {screen.a, screen.b} == {a, b}
            diff = screen.query_one("#cmp-diff")
            assert "train.base_lr" in [str(diff.get_row_at(i)[0]) for i in range(diff.row_count)]
            assert "mAP" in str(screen.query_one("#cmp-summary").render())
            assert screen.data["curves"]["a"]["train_loss"] and screen.data["curves"]["b"]["train_loss"]
            await pilot.press("m")
            assert screen.metric == "mAP"
            await pilot.press("escape")

    asyncio.run(go())


def test_r_on_a_finding_without_a_change_answers_in_one_line(tmp_path):
    """The remedy's text is on screen below the findings: the toast does not repeat it over them."""
    async def go():
        app = NanxiTuneApp(preset=str(C.save(tiny(), tmp_path / "tiny.toml")), runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await ready(pilot)
            app.action_tab("monitor")
            app.monitor.add_diagnosis({"kind": "diagnosis", "step": 50, "severity": "info",
                                       "rule": "stale-normalization", "section": "8", "message": "defaults",
                                       "remedy": {"set": {}, "text": "compute mean/std over augmented samples, "
                                                  "set normalize.mean/std and start a new run (TUI: Alt+M)"}})
            await pilot.pause()
            app.action_apply_remedy()
            await wait_for(pilot, lambda: any("nothing r can apply" in n for n in notices(app)), timeout=10)
            said = next(n for n in notices(app) if "nothing r can apply" in n)
            assert "\n" not in said and "augmented samples" not in said, said

    asyncio.run(go())
