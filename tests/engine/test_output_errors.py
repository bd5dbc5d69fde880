"""Output errors never stop training (issue 22): a listener that raises (a closed pipe, a dead terminal) is
dropped with one warning and the run goes on; `train … | head` whose reader went away still finishes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nanxi_tune.engine.run import rundir

from conftest import TINY


def test_a_listener_that_raises_never_stops_the_run(tmp_path, one_thread):
    from nanxi_tune.engine.train.trainer import Trainer
    from conftest import tiny

    calls = []

    def listener(event):
        calls.append(event.kind)
        if len(calls) > 3:
            raise BrokenPipeError(32, "Broken pipe")

    t = Trainer(tiny(**{"train.epochs": 2, "train.log_every": 1}), tmp_path / "run", listener)
    assert t.run() == "finished"
    assert rundir.last_checkpoint(tmp_path / "run").exists()
    warned = [e for e in rundir.read_events(tmp_path / "run") if e.get("kind") == "log"
              and "BrokenPipeError" in e.get("message", "")]
    assert len(warned) == 1  # said once, and the listener is not called again
    assert len(calls) == 4
    # `ctl RUN status | head -1`: one line, no traceback
    cmd = f"{sys.executable} -m nanxi_tune.cli ctl {tmp_path / 'run'} status | head -1"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("run: finished") and r.stderr == "", r.stderr


@pytest.mark.slow
def test_train_piped_into_a_reader_that_goes_away_still_finishes(tmp_path):
    sets = [f"{k}={v}" for k, v in TINY.items()] + ["train.epochs=3", "train.log_every=1"]
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `| head -1`: the reader takes one line and exits; every later write hits a closed pipe
    cmd = (f"{sys.executable} -m nanxi_tune.cli train --preset demo --run-dir {run} --print-every 1 "
           f"--set {' '.join(sets)} 2>&1 | head -1; echo \"status ${{PIPESTATUS[0]}}\"")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=600).stdout
    assert out.strip().endswith("status 0"), out
    assert rundir.recorded_state(run) == "finished"
    assert rundir.last_checkpoint(run).exists()
