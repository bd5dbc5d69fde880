"""The control folder trusts nothing in it: only regular files named as `send` names them, of bounded size and
depth, read without blocking; anything else is moved aside once (control/rejected/) and reported, never run."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.run import control
from nanxi_tune.engine.run.runctl import Command, Op
from nanxi_tune.engine.run.control import Inbox, Rejected


def _name(i: int = 0) -> str:
    return f"{time.time_ns() + i}-{'ab' * 6}.json"


@pytest.fixture
def inbox(tmp_path):
    (tmp_path / rundir.CONTROL).mkdir()
    return Inbox(tmp_path)


def _take(inbox, timeout=5.0):
    """take() in a thread: a FIFO must never block it."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(inbox.take()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "Inbox.take() blocked"
    return out[0]


def test_a_deeply_nested_command_is_refused_not_a_crash(inbox):
    (inbox.dir / _name()).write_text("[" * 100_000 + "]" * 100_000)
    (got,) = _take(inbox)
    assert isinstance(got, Rejected) and got.id == "ab" * 6 and "unreadable" in got.problem


def test_a_directory_fifo_and_symlink_named_like_commands_are_moved_aside(inbox):
    (inbox.dir / _name(1)).mkdir()
    os.mkfifo(inbox.dir / _name(2))
    (inbox.dir / _name(3)).symlink_to("/dev/zero")
    got = _take(inbox)
    assert len(got) == 3 and all(isinstance(r, Rejected) and "not a regular file" in r.problem for r in got)
    assert sorted(p.name for p in inbox.dir.iterdir()) == ["rejected"]  # moved aside: never read again
    assert _take(inbox) == []


def test_a_stray_file_is_never_run_and_clear_survives_it(inbox):
    cmd = Command(Op.STOP, sender="evil")
    (inbox.dir / "evil.json").write_text(json.dumps(cmd.to_json()))
    (inbox.dir / "x-y.json").write_text(json.dumps(cmd.to_json()))
    inbox.clear(before=time.time())  # a resume's first act: used to crash on int("evil")
    got = _take(inbox)
    assert all(isinstance(r, Rejected) and r.id == "" and "not a command file" in r.problem for r in got)
    assert len(got) == 2 and not any(isinstance(r, Command) for r in got)


def test_oversized_commands_and_senders_are_bounded(inbox):
    big = Command(Op.PAUSE, sender="x" * 1000)
    (inbox.dir / _name()).write_text(json.dumps(big.to_json()))
    (got,) = _take(inbox)
    assert isinstance(got, Command) and len(got.sender) <= control.MAX_SENDER
    huge = inbox.dir / _name(1)
    huge.write_text(json.dumps(Command(Op.PAUSE, sender="y" * (2 * control.MAX_COMMAND_BYTES)).to_json()))
    (got,) = _take(inbox)
    assert isinstance(got, Rejected) and "too large" in got.problem


def test_a_command_with_wrong_types_is_refused(inbox):
    for i, bad in enumerate(({"op": "stop", "id": 7}, {"op": "set", "id": "a", "updates": [1, 2]},
                             {"op": "nope", "id": "b"}, [1, 2, 3])):
        (inbox.dir / _name(i)).write_text(json.dumps(bad))
    got = _take(inbox)
    assert len(got) == 4 and all(isinstance(r, Rejected) for r in got)


@pytest.mark.slow
def test_a_live_run_keeps_training_beside_a_hostile_control_folder(tmp_path, one_thread):
    """The attacks of issue 22 against a live trainer: it warns once per file, keeps training, and stops with a
    checkpoint when asked; the next resume is not tripped by what was left."""
    from nanxi_tune.engine.train.trainer import Trainer
    from conftest import tiny

    run = tmp_path / "run"
    cfg = tiny(**{"train.epochs": 1000, "eval.interval": 1000, "train.log_every": 1})
    trainer = Trainer(cfg, run)
    thread = threading.Thread(target=trainer.run)
    thread.start()
    try:
        end = time.monotonic() + 120
        while not rundir.read_metrics(run):
            assert time.monotonic() < end and thread.is_alive()
            time.sleep(0.05)
        ctl = run / rundir.CONTROL
        ctl.mkdir(exist_ok=True)
        (ctl / _name(1)).write_text("[" * 100_000)
        (ctl / _name(2)).mkdir()
        os.mkfifo(ctl / _name(3))
        (ctl / _name(4)).symlink_to("/dev/zero")
        (ctl / "evil.json").write_text(json.dumps(Command(Op.STOP).to_json()))
        step = trainer.step
        while trainer.step < step + 5:
            assert time.monotonic() < end and thread.is_alive(), rundir.read_events(run)[-3:]
            time.sleep(0.05)
        ack = runctl.request(run, Op.STOP, timeout=60)
        assert ack and ack["applied"]
    finally:
        trainer.request_stop()
        thread.join(120)
    assert trainer.state == "stopped"
    warnings = [e["message"] for e in rundir.read_events(run) if e.get("kind") == "log" and e.get("level") == "warning"
                and "control" in e.get("message", "")]
    refused = [e for e in rundir.read_events(run) if e.get("kind") == "ack" and e.get("id") == "ab" * 6]
    # each file reported once, not once per step: those named as commands are answered (refused), the stray warned
    assert len(warnings) == 1 and len(refused) == 4 and not any(e["applied"] for e in refused), (warnings, refused)
    assert Trainer.resume(run, max_steps=trainer.step + 2).run() == "stopped"  # the next resume is not tripped
