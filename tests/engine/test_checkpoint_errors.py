"""Checkpoint failures that must say what happened and what to do: a refused file names why (not a checkpoint /
code objects, with PyTorch's line naming the blocked global), a full disk inside torch.save's zip writer says
"no space left" and which checkpoint is intact, and best.pt left behind by a kill between the last.pt and
best.pt writes is repaired on resume."""

from __future__ import annotations

import errno
import io
import os
import pickle

import pytest
import torch

from nanxi_tune.engine.run import checkpoint as ck
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.train.trainer import Trainer
from nanxi_tune.cli.main import main

from conftest import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def evil_file(path, legacy=False):
    if legacy:
        path.write_bytes(pickle.dumps({"format": ck.FORMAT, "x": Evil()}, protocol=4))
    else:
        torch.save({"format": ck.FORMAT, "x": Evil()}, path)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "plain-pickle"])
def test_code_objects_are_refused_by_name(tmp_path, legacy):
    path = evil_file(tmp_path / "evil.pt", legacy)
    with pytest.raises(ck.CheckpointError) as info:
        ck.load(path)
    msg = str(info.value)
    assert "contains code objects (posix.system); refused without running it" in msg, msg
    if not legacy:
        assert "unsupported GLOBAL posix.system" in msg  # PyTorch's own line naming what was blocked
    assert "not a nanxi-tune checkpoint" not in msg


def test_random_bytes_and_truncated_files_say_what_they_are(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(ck.CheckpointError) as info:
        ck.load(noise)
    assert "not a nanxi-tune checkpoint" in str(info.value) and "code objects" not in str(info.value)

    good = ck.save_atomic({"format": ck.FORMAT, "w": torch.zeros(10000)}, tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:20000])
    with pytest.raises(ck.CheckpointError) as info:
        ck.load(cut)
    assert "incomplete or damaged" in str(info.value) and "code objects" not in str(info.value)


def test_resume_from_a_checkpoint_with_code_says_so_not_checkpoint(tmp_path, capsys):
    run = tmp_path / "r"
    assert Trainer(tiny(), run, max_steps=1).run() == "stopped"
    evil_file(rundir.last_checkpoint(run))
    assert main(["resume", str(run), "--quiet"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "run failed: checkpoint" not in err
    assert "contains code objects (posix.system); refused without running it" in err, err


# --- a full disk ------------------------------------------------------------------------------------

class FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes: write() raises ENOSPC, as a real full disk does."""
    room = 0

    def write(self, b):
        FullDisk.room -= len(b)
        if FullDisk.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)


@pytest.mark.parametrize("first", [True, False], ids=["first-checkpoint", "later-checkpoint"])
def test_full_disk_inside_the_zip_writer_says_no_space(tmp_path, monkeypatch, first):
    cfg = tiny(**{"train.checkpoint_every": 2, "train.max_steps": 6, "eval.interval": 100})
    real_save = ck.save_atomic
    calls = {"n": 0}

    def save(obj, path):
        calls["n"] += 1
        if calls["n"] >= (1 if first else 2):
            FullDisk.room = 50_000
            monkeypatch.setattr(ck, "open", lambda p, m: FullDisk(p, m), raising=False)
        return real_save(obj, path)

    monkeypatch.setattr(ck, "save_atomic", save)
    events = []
    run = tmp_path / "r"
    assert Trainer(cfg, run, events.append).run() == "failed"
    err = [e for e in events if e.kind == "error"][0]
    text = f"{err.error} {err.hint}"
    assert "RuntimeError" not in text and "unexpected pos" not in text, text
    assert f"no space left on {run / 'checkpoints'}" in text, text
    if first:
        assert "no checkpoint yet" in text and "resume from the last checkpoint" not in text
        assert not rundir.last_checkpoint(run).exists()
    else:
        assert "the previous checkpoint (step 2) is intact" in text
        monkeypatch.undo()
        assert ck.load(rundir.last_checkpoint(run))["step"] == 2
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_zip_writer_error_on_a_full_disk_without_the_oserror(tmp_path, monkeypatch):
    """PyTorch may drop the OSError and raise only its RuntimeError: the free space decides."""
    import shutil

    def broken_save(obj, f, *a, **k):
        f.write(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3128960 vs 3128848")

    monkeypatch.setattr(torch, "save", broken_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    with pytest.raises(OSError) as info:
        ck.save_atomic({"a": 1}, tmp_path / "c" / "last.pt")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 12, 10 ** 9, 10 ** 11))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        ck.save_atomic({"a": 1}, tmp_path / "c" / "last.pt")


# --- best.pt behind last.pt ---------------------------------------------------------------------------

class Killed(BaseException):
    """A kill -9 at this instant (BaseException: nothing in the trainer catches it)."""


def test_best_left_behind_by_a_kill_is_repaired_on_resume(tmp_path, monkeypatch):
    from nanxi_tune.engine.train import state as S
    from nanxi_tune.engine.train import trainer as T

    def rising(model, *args, **kwargs):  # every evaluation better than the last: each one moves best.pt
        step = holder["t"].step
        return {"images": 8, "mAP": step / 100, "AP50": step / 50, "AP75": 0.0, "APs": 0.0, "APm": 0.0,
                "APl": 0.0, "loss": 1.0, "loss_map": 1.0, "loss_offset": 0.1, "loss_shape": 0.1}

    real_best = S.save_best

    def kill_before_second_best(t):
        if t.step == 12:
            raise Killed()
        real_best(t)

    monkeypatch.setattr(T, "evaluate", rising)
    monkeypatch.setattr(S, "save_best", kill_before_second_best)
    run = tmp_path / "r"
    holder = {"t": Trainer(tiny(**{"train.epochs": 3, "eval.interval": 1, "eval.online": False}), run)}
    with pytest.raises(Killed):
        holder["t"].run()
    last, best = ck.load(rundir.last_checkpoint(run)), ck.load(rundir.best_checkpoint(run))
    assert (last["step"], last["best_map"], best["step"]) == (12, 0.12, 6)  # the inconsistent pair

    monkeypatch.setattr(S, "save_best", real_best)
    events = []
    holder["t"] = Trainer.resume(run, events.append, max_steps=13)
    assert holder["t"].run() == "stopped"
    best = ck.load(rundir.best_checkpoint(run))
    assert best["step"] == 12 and best["best_map"] == 0.12
    assert any("best.pt" in e.message and "step 12" in e.message for e in events if e.kind == "log")
