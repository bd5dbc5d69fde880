"""A remedy's lr trial descent is a job of its own: started from the TUI (r) it runs as its own process, F7 or
`nanxi-tune ctl CHILD stop` stops it, nothing is applied and the parent run is left exactly as it was."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import recorder, runctl
from nanxi_tune.engine.run.events import Diagnosis
from nanxi_tune.tui.app import NanxiTuneApp
from conftest import TINY, notices, wait_for

pytestmark = pytest.mark.slow


def _parent(runs):
    """A stopped run with ring checkpoints and an open lr finding that rewinds to step 6 (planned 1200 steps, so
    each lr trial trains 120 steps: long enough to stop one in the middle)."""
    from nanxi_tune.engine.train.trainer import Trainer

    parent = runs / "parent"
    cfg = C.with_updates(C.load_preset("demo"), TINY | {"train.epochs": 200, "eval.interval": 1,
                                                        "train.base_lr": 0.003, "train.log_every": 1})
    assert Trainer(cfg, parent, max_steps=12).run() == "stopped"
    recorder.append(parent, Diagnosis(rule="flat-loss-after-epoch-2", severity="warning", section="13.1",
                                      message="train loss flat from epoch 2 on (lr too large)", evidence={},
                                      remedy={"set": {"train.base_lr": 0.001}, "resume_from_step": 6,
                                              "text": "lower lr one step on the grid"}, step=12))
    return parent


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_f7_stops_a_remedy_descent_started_from_the_tui(tmp_path, one_thread):
    runs = tmp_path / "runs"
    parent = _parent(runs)
    before = _snapshot(parent)

    async def go():
        app = NanxiTuneApp(runs_root=runs)
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            await wait_for(pilot, lambda: app.form.all_mounted and app.query("#mon"), timeout=30)
            app.open_run(parent)
            mon = app.monitor
            mine = lambda: [i for i, f in enumerate(mon.findings) if f["rule"] == "flat-loss-after-epoch-2"]  # noqa: E731
            await wait_for(pilot, mine, timeout=60)
            app.action_tab("monitor")
            table = mon.query_one("#diagnoses")
            table.focus()
            table.move_cursor(row=mine()[0])
            await pilot.press("r")
            await wait_for(pilot, lambda: app.remedy_child is not None, timeout=30)
            child = app.remedy_child
            trials = lambda: sorted((child / "trials").glob("lr-*"))  # noqa: E731
            await wait_for(pilot, lambda: trials() and runctl.status(trials()[0]).step > 6, timeout=180)
            assert runctl.status(child).alive  # the descent owns the child's folder
            await pilot.press("f7")
            await wait_for(pilot, lambda: app.remedy_child is None, timeout=180)
            await wait_for(pilot, lambda: any("nothing was applied" in n for n in notices(app)), timeout=10)
            return child

    child = asyncio.run(go())
    assert not child.exists()  # no half-made child is left
    assert _snapshot(parent) == before  # the parent is untouched: same files, sizes and times
    from nanxi_tune.engine.workflows.remedy import open_findings

    assert "flat-loss-after-epoch-2" in [f["rule"] for f in open_findings(parent)]  # still open


def test_ctl_stop_ends_a_remedy_descent_from_the_shell(tmp_path):
    runs = tmp_path / "runs"
    parent = _parent(runs)
    before = _snapshot(parent)
    child = runs / "child"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nanxi_tune.cli", "remedy", str(parent), "flat-loss-after-epoch-2",
                             "--child-dir", str(child), "--no-train"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 180
    while not (runctl.status(child).alive and list((child / "trials").glob("lr-*"))):
        assert time.monotonic() < end and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    paused = subprocess.run([sys.executable, "-m", "nanxi_tune.cli", "ctl", str(child), "pause"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    assert runctl.status(child).state == runctl.RunState.PAUSED
    stopped = subprocess.run([sys.executable, "-m", "nanxi_tune.cli", "ctl", str(child), "stop"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "nothing is applied" in stopped.stdout, stopped.stderr
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out
    assert "nothing was applied" in out
    assert not child.exists()
    assert _snapshot(parent) == before
