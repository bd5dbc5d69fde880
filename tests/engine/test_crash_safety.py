"""Nothing lost to kill -9: resume after a crash keeps metrics.jsonl whole, cleans partial files, and a short
version of bench/crash_harness.py (SIGKILL at random moments, mid-checkpoint included) ends bit-equal to an
uninterrupted run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from nanxi_tune.engine.run import checkpoint as ck
from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.train.trainer import Trainer

from conftest import REPO


def tiny(**updates):
    base = {"preprocess.input_size": 64, "data.synthetic_train": 32, "data.synthetic_val": 8,
            "data.batch_size": 8, "backbone.width": 8, "head.channels": 16, "train.epochs": 2,
            "eval.interval": 1, "train.checkpoint_every": 2, "diagnose.enabled": False}
    return C.with_updates(C.load_preset("demo"), base | updates)


def train_steps(run_dir):
    return [m["step"] for m in rundir.read_metrics(run_dir) if m.get("split") == "train"]


def test_resume_after_a_crash_keeps_logging_to_metrics(tmp_path):
    """A crash leaves lines logged after the last checkpoint (and a torn line); resume trims them by replacing
    metrics.jsonl, and must then append the redone steps to the new file, not to the unlinked old one."""
    run = tmp_path / "r"
    assert Trainer(tiny(), run, max_steps=4).run() == "stopped"
    with open(run / rundir.METRICS, "a") as f:  # what a process killed during steps 5 and 6 leaves behind
        f.write(json.dumps({"step": 5, "split": "train", "loss": 1.0}) + "\n")
        f.write(json.dumps({"step": 6, "split": "train", "loss": 1.0}) + "\n")
        f.write('{"step": 7, "spl')
    stale = run / "checkpoints" / ".last.pt.tmp-999999999"  # a partial checkpoint of a killed writer
    stale.write_bytes(b"half a checkpoint")
    assert Trainer.resume(run).run() == "finished"
    assert train_steps(run) == list(range(1, 9))  # every step exactly once, the redone 5 and 6 included
    assert [m["step"] for m in rundir.read_metrics(run) if m.get("split") == "val"] == [4, 8]
    assert not stale.exists()
    assert any("dropped 2 metric lines" in e.get("message", "") for e in rundir.read_events(run))


def test_remove_stale_temps_keeps_a_live_writers_file(tmp_path):
    mine = tmp_path / f".last.pt.tmp-{os.getpid()}"
    dead = tmp_path / ".best.pt.tmp-999999999"
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".step-000000008.pt.tmp-{live_proc.pid}"
        for p in (mine, dead, live):
            p.write_bytes(b"x")
        (tmp_path / "last.pt").write_bytes(b"x")
        assert ck.remove_stale_temps(tmp_path) == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "last.pt"])
    finally:
        live_proc.kill()
        live_proc.wait()


def _harness():
    spec = importlib.util.spec_from_file_location("crash_harness", REPO / "bench" / "crash_harness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_kill9_five_times_then_resume_equals_uninterrupted(tmp_path):
    """bench/crash_harness.py --kills 5: SIGKILL at seeded random moments (during startup, mid-step, the instant a
    checkpoint temp file appears), resume after each; every checkpoint under a real name loads, every resume
    starts from last.pt at its step, metrics.jsonl holds each step once with the uninterrupted run's values, and
    the final model / EMA / optimizer are bit-equal to it. (~45 s on 2 cores.)"""
    h = _harness().Harness(tmp_path, total_steps=20, seed=1, log=lambda *_: None)
    r = h.run(kills=5)
    assert r["problems"] == []
    assert r["steps_once"] and r["metrics_equal"] and r["weights_equal"]
    assert r["kills"] == 5 and r["exact"] == 5
    assert r["leftover_tmp"] == 0
