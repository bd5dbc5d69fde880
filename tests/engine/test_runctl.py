"""Run control in one process: the owner lock, the command channel, live edits, exact resume after a live edit."""

import threading

import pytest
import torch

from nanxi_tune.engine.run import checkpoint as ckpt_io
from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.run.runctl import Op, RunState
from nanxi_tune.engine.run.events import MEASURED
from nanxi_tune.engine.train.trainer import Trainer

from conftest import tiny


def _start(cfg, run_dir, **kw):
    t = Trainer(cfg, run_dir, **kw)
    th = threading.Thread(target=t.run, daemon=True)
    th.start()
    return t, th


def _wait(cond, timeout=60.0):
    import time

    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_commands_are_applied_at_a_step_boundary_and_answered(tmp_path, one_thread):
    cfg = tiny(**{"train.epochs": 50, "eval.interval": 1000})
    run = tmp_path / "r"
    t, th = _start(cfg, run)
    _wait(lambda: t.step >= 2)
    st = runctl.status(run)
    assert st.alive and st.state == RunState.RUNNING and st.owner.pid > 0

    ack = runctl.request(run, Op.PAUSE, sender="test")
    assert ack["applied"] and "paused at step" in ack["message"]
    _wait(lambda: runctl.status(run).state == RunState.PAUSED)
    paused_at = t.step
    ack = runctl.request(run, Op.SET, {"train.base_lr": 0.0005}, sender="test")
    assert ack["applied"] and ack["changes"] == [["train.base_lr", 0.003, 0.0005]]
    assert t.step == paused_at  # edits apply while paused, no step taken
    assert C.load(run / rundir.CONFIG).train.base_lr == 0.0005

    bad = runctl.request(run, Op.SET, {"data.batch_size": 4})
    assert not bad["applied"] and "not a live key" in bad["message"] and "data.batch_size" in bad["message"]
    typo = runctl.request(run, Op.SET, {"train.base_rl": 0.1})
    assert not typo["applied"] and "train.base_lr" in typo["message"]
    invalid = runctl.request(run, Op.SET, {"train.base_lr": -1})
    assert not invalid["applied"] and "train.base_lr" in invalid["message"]

    assert runctl.request(run, Op.CONTINUE)["applied"]
    _wait(lambda: t.step >= paused_at + 2)
    lrs = {m["step"]: m["lr"] for m in rundir.read_metrics(run) if m.get("split") == "train"}
    assert lrs[paused_at + 1] == pytest.approx(0.0005 * cfg.data.batch_size / cfg.train.base_batch_size)
    assert lrs[paused_at] == pytest.approx(cfg.lr)

    ack = runctl.request(run, Op.STOP)
    assert ack["applied"]
    th.join(60)
    st = runctl.status(run)
    assert not st.alive and st.state == RunState.STOPPED
    assert rundir.last_checkpoint(run).exists()
    with pytest.raises(runctl.NotAlive, match="resume it"):
        runctl.send(run, Op.PAUSE)


def test_a_second_trainer_is_refused_while_the_owner_lives(tmp_path, one_thread):
    cfg = tiny(**{"train.epochs": 50, "eval.interval": 1000})
    run = tmp_path / "r"
    t, th = _start(cfg, run)
    _wait(lambda: t.step >= 1)
    with pytest.raises(runctl.RunBusy, match=r"pid \d+"):
        Trainer(cfg, run).run()
    runctl.request(run, Op.STOP)
    th.join(60)
    lines = [m["step"] for m in rundir.read_metrics(run) if m.get("split") == "train"]
    assert len(lines) == len(set(lines))
    # the owner is gone: its lock is taken over at once
    t2 = Trainer.resume(run, max_steps=t.step + 1)
    assert t2.run() == "stopped"


def test_stop_interrupts_an_evaluation_and_resume_redoes_it(tmp_path, one_thread):
    cfg = tiny(**{"train.epochs": 4, "data.synthetic_val": 48, "data.batch_size": 4, "eval.online": True,
                  "eval.interval": 1})
    run = tmp_path / "r"
    steps_per_epoch = cfg.data.synthetic_train // cfg.data.batch_size

    def on_event(e):
        if e.kind == "step" and e.step == steps_per_epoch:
            runctl.send(run, Op.STOP)  # read between the evaluation's batches

    t = Trainer(cfg, run, callback=on_event)
    assert t.run() == "stopped"
    assert t.step == steps_per_epoch
    assert not [m for m in rundir.read_metrics(run) if m.get("split") == "val"]  # the evaluation was cut short
    ack = next(e for e in rundir.read_events(run) if e.get("kind") == "ack")
    assert ack["op"] == "stop" and "during an evaluation" in ack["message"]
    t2 = Trainer.resume(run, max_steps=steps_per_epoch + 1)
    assert t2.run() == "stopped"
    vals = [m["step"] for m in rundir.read_metrics(run) if m.get("split") == "val"]
    assert vals == [steps_per_epoch]


def test_exact_resume_after_a_live_edit(tmp_path, one_thread):
    """Uninterrupted run with an lr edit at step 3 == the same edit, a stop at step 5, and a resume."""
    cfg = tiny(**{"train.epochs": 2})

    def editing(run):
        def cb(e):
            if e.kind == "step" and e.step == 3:
                runctl.send(run, Op.SET, {"train.base_lr": 0.0007, "train.grad_clip": 5.0})
        return cb

    a = tmp_path / "a"
    assert Trainer(cfg, a, callback=editing(a)).run() == "finished"
    b = tmp_path / "b"
    assert Trainer(cfg, b, callback=editing(b), max_steps=5).run() == "stopped"
    assert Trainer.resume(b).run() == "finished"

    sa, sb = (ckpt_io.load(rundir.last_checkpoint(r)) for r in (a, b))
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    def training(run):
        return [{k: v for k, v in m.items() if k not in MEASURED} for m in rundir.read_metrics(run)
                if m.get("split") == "train"]

    assert training(a) == training(b)
    edits = [e for e in rundir.read_events(b) if e.get("kind") == "ack" and e.get("op") == "set"]
    assert edits[0]["step"] == 3 and ["train.base_lr", 0.003, 0.0007] in edits[0]["changes"]


def test_a_time_budget_plans_the_run_and_the_journal_keeps_edits_and_plans(tmp_path, one_thread):
    cfg = tiny(**{"train.epochs": 10000, "train.time_budget_min": 0.08, "eval.interval": 1000})
    run = tmp_path / "r"

    def cb(e):
        if e.kind == "step" and e.step == 2:
            runctl.send(run, Op.SET, {"train.gamma": 0.5})

    t = Trainer(cfg, run, callback=cb)
    assert t.run() == "finished"
    plans = [e for e in rundir.read_events(run) if e.get("kind") == "plan"]
    assert plans and plans[-1]["total_steps"] == t.step < 10000 * (48 // 8)  # ended on the budget, not the epochs
    assert all(0 < m <= plans[-1]["total_steps"] for m in plans[-1]["milestones"])
    lrs = [m["lr"] for m in rundir.read_metrics(run) if m.get("split") == "train"]
    assert lrs[-1] < lrs[0]  # the decay was placed inside the run
    text = (run / rundir.JOURNAL).read_text()
    assert "## Live edits" in text and "`train.gamma` 0.1 → 0.5" in text and "## Plan" in text


def test_a_pause_during_an_evaluation_holds_it_once_and_continues(tmp_path, one_thread):
    cfg = tiny(**{"train.epochs": 2, "data.synthetic_val": 48, "data.batch_size": 4, "eval.interval": 1})
    run = tmp_path / "r"
    spe = cfg.data.synthetic_train // cfg.data.batch_size

    def on_event(e):
        if e.kind == "step" and e.step == spe:
            runctl.send(run, Op.PAUSE)  # read between the first evaluation's batches
        elif e.kind == "ack" and e.op == "pause":
            threading.Timer(0.3, lambda: runctl.send(run, Op.CONTINUE)).start()

    assert Trainer(cfg, run, callback=on_event).run() == "finished"
    states = [(e["state"], e["message"]) for e in rundir.read_events(run) if e.get("kind") == "state"]
    assert states.count(("paused", "during an evaluation")) == 1
    assert states[states.index(("paused", "during an evaluation")) + 1] == ("running", "continued")
    assert [m["step"] for m in rundir.read_metrics(run) if m.get("split") == "val"] == [spe, 2 * spe]
