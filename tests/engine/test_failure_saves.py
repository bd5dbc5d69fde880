"""Nothing lost on a failure path (issue 22): a full disk while writing the record fails the run with a message
naming the file, after a checkpoint of the weights in memory; any other failure mid-run saves an emergency
checkpoint (marked as such) that resume continues from."""

from __future__ import annotations

import errno
import os


from nanxi_tune.engine.run import checkpoint as ck
from nanxi_tune.engine.run import recorder, rundir
from nanxi_tune.engine.train.trainer import Trainer

from conftest import tiny

CFG = {"train.epochs": 50, "eval.interval": 100, "train.log_every": 1}


def test_a_full_disk_while_writing_metrics_says_so_and_keeps_the_weights(tmp_path, monkeypatch, one_thread):
    real, os_write = recorder._JsonlWriter.write, os.write
    seen = {"n": 0}

    def write(self, obj):
        if self.path.name == rundir.METRICS:
            seen["n"] += 1
            if seen["n"] == 7:  # the disk fills in the middle of this line: half of it lands, then ENOSPC
                def full(fd, data):
                    if fd != self._fd:
                        return os_write(fd, data)
                    os_write(fd, data[:12])
                    raise OSError(errno.ENOSPC, "No space left on device")

                monkeypatch.setattr(os, "write", full)
                try:
                    return real(self, obj)
                finally:
                    monkeypatch.setattr(os, "write", os_write)
        return real(self, obj)

    monkeypatch.setattr(recorder._JsonlWriter, "write", write)
    events = []
    run = tmp_path / "r"
    assert Trainer(tiny(**CFG), run, events.append).run() == "failed"
    err = next(e for e in events if e.kind == "error")
    assert f"no space left on the disk of {run / rundir.METRICS}" in err.error, err.error
    assert "Traceback" not in err.error and "free disk space" in err.hint
    assert ck.load(rundir.last_checkpoint(run))["step"] == 7  # the weights of step 7 were saved
    monkeypatch.undo()
    t = Trainer.resume(run, max_steps=9)
    assert t.run() == "stopped"
    steps = [m["step"] for m in rundir.read_metrics(run) if m.get("split") == "train"]
    # the line the disk filled under was kept in the emergency checkpoint and written back by the resume: the torn
    # half is gone, nothing recorded is lost
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_an_unexpected_failure_mid_run_saves_an_emergency_checkpoint(tmp_path, monkeypatch, one_thread):
    import nanxi_tune.engine.train.trainer as T

    real = T.build_targets
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyError("a bug in a new target encoder")
        return real(*a, **k)

    monkeypatch.setattr(T, "build_targets", flaky)
    run = tmp_path / "r"
    assert Trainer(tiny(**CFG), run).run() == "failed"
    state = ck.load(rundir.last_checkpoint(run))
    assert state["step"] == 11 and "KeyError" in state["emergency"]
    err = next(e for e in rundir.read_events(run) if e.get("kind") == "error")
    assert "emergency checkpoint at step 11" in err["hint"]
    monkeypatch.undo()
    assert Trainer.resume(run, max_steps=13).run() == "stopped"


def test_a_folder_killed_before_its_config_is_trained_again_and_a_live_one_is_busy(tmp_path):
    """A kill between the folder's creation and its config.toml leaves owner files only: `train --run-dir` takes
    it (it is not "already a run"); a folder a live trainer owns answers 4 (busy), not 2."""
    from nanxi_tune.cli import main as cli
    from nanxi_tune.engine.run import runctl
    from conftest import TINY

    sets = [f"{k}={v}" for k, v in TINY.items()]
    half = tmp_path / "half"
    runctl.RunOwner.acquire(half).release()  # what the killed start left: owner.lock, owner.json
    assert not (half / rundir.CONFIG).exists()
    assert cli.main(["train", "--preset", "demo", "--run-dir", str(half), "--max-steps", "1", "--quiet",
                     "--set", *sets]) == 3
    assert (half / rundir.CONFIG).exists() and rundir.last_checkpoint(half).exists()
    owner = runctl.RunOwner.acquire(half)  # a live trainer holds it now
    try:
        assert cli.main(["train", "--preset", "demo", "--run-dir", str(half), "--quiet", "--set", *sets]) == 4
    finally:
        owner.release()


def test_a_full_disk_while_saving_a_live_edit_refuses_the_edit_and_keeps_training(tmp_path, monkeypatch, one_thread):
    """The edit is refused with the file named and what to do; the run trains on with its old values; config.toml
    keeps them and no empty temp file is left (issue 22)."""
    from pathlib import Path

    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.run import runctl

    import builtins

    real_open = builtins.open

    class Full:  # the temp file is made, then the disk is full
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        return Full(f) if "w" in mode and Path(str(file)).name.startswith(f".{rundir.CONFIG}") else f

    run = tmp_path / "r"
    events = []

    def listen(ev):
        events.append(ev)
        if ev.kind == "step" and ev.step == 2:
            monkeypatch.setattr(builtins, "open", full)
            runctl.send(run, runctl.Op.SET, {"train.base_lr": 0.0005}, sender="test")

    assert Trainer(tiny(**CFG), run, listen, max_steps=8).run() == "stopped"
    monkeypatch.undo()
    ack = next(e for e in events if e.kind == "ack")
    assert not ack.applied and f"no space left on the disk of {run / rundir.CONFIG}" in ack.message, ack.message
    assert "free disk space" in ack.message and "Traceback" not in ack.message
    assert C.load(run / rundir.CONFIG).train.base_lr == tiny(**CFG).train.base_lr
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert max(m["step"] for m in rundir.read_metrics(run) if m.get("split") == "train") == 8
