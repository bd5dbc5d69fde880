"""Hang-ups and signals, headless: SIGHUP (a dropped SSH session), SIGTERM (kill, a scheduler) and SIGINT (Ctrl-C)
each finish the current step, write a checkpoint, record the stop in events.jsonl, exit 3 (stopped, resumable)
with the resume command, and the run then resumes from that checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanxi_tune.engine.run import checkpoint as ck
from nanxi_tune.engine.run import rundir

TINY = ["preprocess.input_size=64", "data.synthetic_train=32", "data.synthetic_val=8", "data.batch_size=8",
        "backbone.width=8", "head.channels=16", "train.max_steps=400", "eval.interval=1000",
        "diagnose.enabled=false"]


def cli() -> list[str]:
    script = Path(sys.executable).with_name("nanxi-tune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nanxi_tune.cli"]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def default_signals() -> None:
    """The child's SIGINT and SIGHUP back to their defaults: under `nohup` or as a script's background job the
    suite inherits them ignored, and the trainer rightly keeps an ignored signal ignored."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def train_steps(run: Path) -> list[int]:
    return [m["step"] for m in rundir.read_metrics(run) if m.get("split") == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_stops_with_checkpoint_and_resume_hint(tmp_path, sig):
    run = tmp_path / "run"
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        p = subprocess.Popen(cli() + ["train", "--preset", "demo", "--run-dir", str(run), "--set", *TINY],
                             stdout=f, stderr=subprocess.STDOUT, env=env(), start_new_session=True,
                             preexec_fn=default_signals)
        try:
            deadline = time.monotonic() + 120
            while len(train_steps(run)) < 3 and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert p.poll() is None, out.read_text()
            seen = max(train_steps(run))
            p.send_signal(sig)
            rc = p.wait(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
    said = " ".join(out.read_text().split())  # Rich wraps long lines
    assert rc == 3, said[-2000:]
    assert f"{sig.name}: finishing the step, saving a checkpoint" in said
    assert f"Resume with: nanxi-tune resume {run}" in said

    events = rundir.read_events(run)
    stopped = [e for e in events if e.get("kind") == "state" and e.get("state") == "stopped"]
    assert len(stopped) == 1 and "stopped by request" in stopped[0]["message"]
    step = stopped[0]["step"]
    assert step >= seen  # the step in flight was finished, not thrown away
    saved = [e for e in events if e.get("kind") == "checkpoint" and e.get("step") == step]
    assert saved and ck.load(rundir.last_checkpoint(run))["step"] == step
    assert train_steps(run) == list(range(1, step + 1))

    r = subprocess.run(cli() + ["resume", str(run), "--quiet", "--max-steps", str(step + 2)],
                       capture_output=True, text=True, env=env(), timeout=180)
    assert r.returncode == 3, r.stdout + r.stderr
    assert ck.load(rundir.last_checkpoint(run))["step"] == step + 2
    assert train_steps(run) == list(range(1, step + 3))
    assert any(f"resumed from {rundir.last_checkpoint(run)} at step {step}" in e.get("message", "")
               for e in rundir.read_events(run))
