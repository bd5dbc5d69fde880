"""Run control across processes: a headless run driven by `nanxi-tune ctl`, and two resumes of one run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.run.runctl import RunState

from conftest import TINY

pytestmark = pytest.mark.slow
SETS = [f"{k}={v}" for k, v in TINY.items()] + ["train.epochs=1000", "eval.interval=1000"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, **kw):
    return [sys.executable, "-m", "nanxi_tune.cli", *args]


def ctl(run, *args):
    return subprocess.run(cli("ctl", str(run), *args), capture_output=True, text=True, env=ENV, timeout=120)


def steps(run):
    return [m["step"] for m in rundir.read_metrics(run) if m.get("split") == "train"]


def wait(cond, timeout=120.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_ctl_drives_a_headless_run(tmp_path):
    run = tmp_path / "r"
    proc = subprocess.Popen(cli("train", "--preset", "demo", "--run-dir", str(run), "--quiet", "--set", *SETS),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait(lambda: len(steps(run)) >= 2)
        r = ctl(run, "set", "train.base_lr=0.0002")
        assert r.returncode == 0, r.stderr
        acks = [e for e in rundir.read_events(run) if e.get("kind") == "ack"]
        applied = acks[-1]["step"]
        wait(lambda: max(steps(run)) >= applied + 1)
        lr = {m["step"]: m["lr"] for m in rundir.read_metrics(run) if m.get("split") == "train"}
        assert lr[applied + 1] == pytest.approx(0.0002 * 8 / 16)  # the very next step
        assert lr[applied] != lr[applied + 1]

        refused = ctl(run, "set", "data.batch_size=4")
        assert refused.returncode == 2 and "not a live key" in refused.stderr

        assert ctl(run, "pause").returncode == 0
        assert runctl.status(run).state == RunState.PAUSED
        n = len(steps(run))
        time.sleep(1.5)
        assert len(steps(run)) == n  # no new steps while paused
        status = ctl(run, "status", "--json")
        doc = json.loads(status.stdout)
        assert doc["state"] == "paused" and doc["alive"] and doc["owner"]["pid"] == proc.pid
        assert doc["live"]["train.base_lr"] == 0.0002

        assert ctl(run, "continue").returncode == 0
        wait(lambda: len(steps(run)) > n)
        assert ctl(run, "stop").returncode == 0
        assert proc.wait(120) == 3  # stopped, resumable
    finally:
        proc.kill()
    st = runctl.status(run)
    assert st.state == RunState.STOPPED and not st.alive
    assert rundir.last_checkpoint(run).exists()
    gone = ctl(run, "pause")
    assert gone.returncode == 1 and "stopped" in gone.stderr


def test_two_resumes_of_one_run_and_a_killed_owner(tmp_path):
    run = tmp_path / "r"
    first = subprocess.run(cli("train", "--preset", "demo", "--run-dir", str(run), "--quiet", "--max-steps", "2",
                               "--set", *SETS), env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 3, first.stderr
    a, b = (subprocess.Popen(cli("resume", str(run), "--quiet"), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2))
    try:
        loser = None
        end = time.monotonic() + 120
        while loser is None and time.monotonic() < end:
            loser = next((p for p in (a, b) if p.poll() is not None), None)
            time.sleep(0.05)
        winner = b if loser is a else a
        assert loser.returncode == 4
        err = loser.stderr.read()
        assert f"pid {winner.pid}" in err and "nanxi-tune open" in err
        wait(lambda: max(steps(run)) >= 5)
        winner.send_signal(signal.SIGKILL)  # dies holding the lock: the OS releases it
        winner.wait(30)
    finally:
        a.kill(), b.kill()
    assert runctl.status(run).state == RunState.DEAD
    third = subprocess.run(cli("resume", str(run), "--quiet", "--max-steps", "8"), env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 3, third.stderr
    got = steps(run)
    assert got == sorted(set(got)) and got[-1] == 8  # each step once


def test_status_of_a_run_dead_before_its_first_checkpoint_says_resume_starts_over(tmp_path):
    """Issue 22: "dead at step 64" and a resume from step 0 without a word."""
    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.run import recorder
    from nanxi_tune.engine.run.events import RunState, StateChanged
    from conftest import tiny

    run = tmp_path / "r"
    run.mkdir()
    C.save(tiny(), run / rundir.CONFIG)
    recorder.append(run, StateChanged(RunState.RUNNING, 0, "started"))
    r = ctl(run, "status")
    assert r.returncode == 0 and "dead" in r.stdout
    assert "it saved no checkpoint: resume starts it again from step 0" in " ".join(r.stdout.split()), r.stdout
