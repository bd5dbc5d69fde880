"""The autopilot in the TUI: its screen at 80×24 (rounds, trials, time left, journal) and "Run unattended" on the
tuning schedule."""

from __future__ import annotations

import asyncio

from textual.app import App
from textual.widgets import DataTable

from nanxi_tune.engine.workflows import autopilot_plan as P
from nanxi_tune.engine.workflows.autopilot import create
from nanxi_tune.tui.autopilot_view import AutopilotScreen, BudgetDialog
from nanxi_tune.tui.schedule_view import ScheduleScreen
from tests.conftest import notices, tiny, wait_for


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
            await pilot.press("f6")  # no owner: the screen says so, nothing breaks
            await wait_for(pilot, lambda: any("no live trainer to pause" in n for n in notices(app)), 10)

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
    assert [name for _, name in _grouped(rows)] == ["▲ ap"]

    async def go():
        app = NanxiTuneApp(runs_root=runs)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.open_run(runs / "ap")
            await wait_for(pilot, lambda: isinstance(app.screen, AutopilotScreen), 10)

    asyncio.run(go())
