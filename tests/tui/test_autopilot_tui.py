"""The autopilot in the TUI: its screen at 80×24 (rounds, trials, time left, journal) and "Run unattended" on the
tuning schedule."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from textual.app import App
from textual.widgets import DataTable

from nanxi_tune.engine.workflows import autopilot_plan as P
from nanxi_tune.engine.workflows.autopilot import create
from nanxi_tune.tui.autopilot_view import AutopilotScreen, BudgetDialog
from nanxi_tune.tui.schedule_view import ScheduleScreen
from tests.conftest import palette, tiny, wait_for


class Host(App):
    def __init__(self, screen) -> None:
        super().__init__()
        self.first = screen

    def on_mount(self) -> None:
        self.push_screen(self.first)


def _midway(folder):
    """An autopilot as a kill would leave it: three rounds done, the lr round running."""
    ap = P.load(folder)
    for r in ap.rounds[:3]:
        r.status = "done"
    ap.round("profile").choice = {"neck.out_stride": 16}
    lr = ap.round("lr")
    lr.status, lr.why = "running", "seven stars around 0.001"
    lr.rows = [{"label": "0.0003", "mAP": 0.41, "status": "finished", "steps": 120, "best": False},
               {"label": "0.001", "mAP": 0.52, "status": "finished", "steps": 120, "best": True},
               {"label": "0.003", "mAP": None, "status": "running", "steps": 40}]
    ap.used_s = 6 * 60
    P.save(folder, ap)


def test_the_autopilot_screen_shows_rounds_trials_time_left_and_the_journal(tmp_path):
    folder = tmp_path / "ap"
    create(folder, "demo", tiny(), 30)
    _midway(folder)
    screen = AutopilotScreen(folder)

    async def go():
        app = Host(screen)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await wait_for(pilot, lambda: screen.ap is not None, timeout=10)
            title = str(screen.query_one("#ap-title").render())
            assert "24.0 min left of 30.0 min" in title
            table = screen.query_one("#ap-rounds", DataTable)
            assert table.row_count == len(P.ROUNDS)
            cells = [str(c) for c in table.get_row("profile")]
            assert cells[0] == "✓" and "out_stride=16" in cells[2]
            assert str(table.get_row("lr")[0]) == "▶"
            detail = str(screen.query_one("#ap-detail").render())
            assert "★ 0.001" in detail and "0.5200" in detail and "seven stars around 0.001" in detail
            await pilot.press("j")
            await wait_for(pilot, lambda: "# autopilot ap" in str(screen.query_one("#ap-detail").render()), 10)
            assert app.focused is screen.query_one("#ap-scroll")  # End / PageUp scroll the journal at once
            keys = {b.binding.action for b in app.active_bindings.values()}
            assert "resume" in keys and not {"pause", "stop", "budget"} & keys  # no owner: F8 only is offered

    asyncio.run(go())


def test_run_unattended_asks_a_budget_and_starts_a_detached_autopilot_on_the_config(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("nanxi_tune.engine.workflows.autopilot.spawn_detached", lambda f: started.append(f))
    cfg = tiny()
    screen = ScheduleScreen(cfg, tmp_path / "runs")

    async def go():
        app = Host(screen)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("u")
            await wait_for(pilot, lambda: isinstance(app.screen, BudgetDialog), 10)
            inp = app.screen.query_one("#budget-input")
            inp.value = "12 hours"
            await pilot.press("enter")
            await pilot.pause()
            assert "90m, 12h or 2d" in str(app.screen.query_one("#budget-error").render())
            inp.value = "2h"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, AutopilotScreen), 10)

    asyncio.run(go())
    assert len(started) == 1
    ap = P.load(started[0])
    assert ap.spec.budget_min == 120 and ap.spec.config == cfg.model_dump(mode="json")


def test_the_runs_tab_lists_an_autopilot_and_enter_opens_its_screen(tmp_path):
    from nanxi_tune.engine.run import listing
    from nanxi_tune.tui.app import NanxiTuneApp
    from nanxi_tune.tui.runs_view import _grouped

    runs = tmp_path / "runs"
    create(runs / "ap", "demo", tiny(), 30)
    rows = listing.list_runs(runs)
    assert [(r.name, r.preset, r.step) for r in rows] == [("ap", "autopilot", 0)]
    assert [name for _, name in _grouped(rows)] == ["▲ ap"] and rows[0].best_map is None
    named = replace(rows[0], name="autopilot-bccd-20261207-065800")  # the default name: its prefix is the mark
    assert [name for _, name in _grouped([named])] == ["▲ bccd-20261207-065800"]
    ap = P.load(runs / "ap")
    ap.final = {"mAP": 0.6038, "AP50": 0.9141}  # scored: the row shows the autopilot's val figure
    P.save(runs / "ap", ap)
    assert listing.list_runs(runs)[0].best_map == 0.6038

    async def go():
        app = NanxiTuneApp(runs_root=runs)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.open_run(runs / "ap")
            await wait_for(pilot, lambda: isinstance(app.screen, AutopilotScreen), 10)
            # its keys are in the command palette too (Ctrl+P), those that can act now
            screen = app.screen
            assert not screen.show_journal
            await palette(pilot, "journal")
            await wait_for(pilot, lambda: screen.show_journal, 10)

    asyncio.run(go())


def test_the_final_run_shows_its_step_loss_and_last_val_and_a_finished_one_offers_no_controls(tmp_path):
    """The final run is the longest round: its screen said only "running". Finished, F6–F8 and b were offered and
    refused after the asking."""
    import json

    folder = tmp_path / "ap"
    create(folder, "demo", tiny(), 30)
    ap = P.load(folder)
    for r in ap.rounds[:-2]:
        r.status = "done"
    ap.round("final").status, ap.round("final").folder = "running", "final"
    P.save(folder, ap)
    (folder / "final").mkdir()
    lines = [{"kind": "step", "step": 99, "loss": 1.5, "split": "train"},
             {"kind": "eval", "step": 100, "mAP": 0.5, "mode": "qmv", "split": "val"},
             {"kind": "step", "step": 120, "loss": 1.25, "split": "train"}]
    (folder / "final" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    screen = AutopilotScreen(folder)

    async def go():
        app = Host(screen)
        async with app.run_test(size=(80, 24)) as pilot:
            detail = lambda: str(screen.query_one("#ap-detail").render())  # noqa: E731
            await wait_for(pilot, lambda: "step 120" in detail(), timeout=10)
            assert "step 120 · loss 1.250 · val mAP 0.5000 (qmv) at step 100" in detail()
            ap = P.load(folder)
            for r in ap.rounds:
                r.status = "done"
            P.save(folder, ap)
            await wait_for(pilot, lambda: all(r.status == "done" for r in screen.ap.rounds), timeout=10)
            await pilot.pause(0.1)
            keys = {b.binding.action for b in app.active_bindings.values()}
            assert "journal" in keys and not {"pause", "stop", "budget", "resume"} & keys

    asyncio.run(go())


def test_f5_to_f8_on_an_autopilot_screen_never_reach_the_main_run(tmp_path):
    """Its own F6–F8 hidden on a finished autopilot, the app's (pause / stop / resume the main run) showed through
    in the footer and acted on the main run; F5 (start the main run) still did, from behind the screen."""
    from nanxi_tune.tui.app import NanxiTuneApp

    folder = tmp_path / "ap"
    create(folder, "demo", tiny(), 30)
    ap = P.load(folder)
    for r in ap.rounds:
        r.status = "done"
    P.save(folder, ap)

    async def go():
        app = NanxiTuneApp(runs_root=tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            main_keys = {k for k, b in app.active_bindings.items()}
            assert {"f5", "f6", "f7", "f8"} <= main_keys  # the main screen's run controls
            screen = AutopilotScreen(folder)
            app.push_screen(screen)
            await wait_for(pilot, lambda: screen.ap is not None, timeout=10)
            await pilot.pause(0.1)
            assert not {"f5", "f6", "f7", "f8", "b"} & set(app.active_bindings)
            called = []
            for name in ("start_run", "pause_run", "stop_run", "resume_run"):  # what the app's F5–F8 would run
                setattr(app, f"action_{name}", lambda name=name: called.append(name))
            await pilot.press("f5", "f6", "f7", "f8")
            assert called == [] and app.screen is screen

    asyncio.run(go())
