"""The trainer end to end on tiny synthetic data: exact resume, stop/pause, non-finite loss, events."""

import threading

import pytest
import torch

from nanxi_tune.engine.run import checkpoint as ck
from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.run import listing
from nanxi_tune.engine.train.trainer import Trainer

from conftest import tiny as base_tiny


def tiny(**updates):
    return base_tiny(**({"train.epochs": 3, "eval.interval": 1, "eval.online": True} | updates))


def tensors_equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def train_lines(run_dir):
    return [(m["step"], m["loss"], m["loss_map"], m["loss_offset"], m["loss_shape"], m["lr"])
            for m in rundir.read_metrics(run_dir) if m["split"] == "train"]


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_and_resume_is_bit_identical(tmp_path, workers):
    cfg = tiny(**{"data.workers": workers})  # 6 steps per epoch, 18 in all
    straight = tmp_path / "straight"
    assert Trainer(cfg, straight, max_steps=14).run() == "stopped"

    parted = tmp_path / "parted"
    holder = {}

    def stop_at_8(e):  # a stop requested mid-epoch, honoured at the next step boundary
        if e.kind == "step" and e.step == 8:
            holder["t"].request_stop()

    holder["t"] = Trainer(cfg, parted, stop_at_8)
    assert holder["t"].run() == "stopped" and holder["t"].step == 8
    resumed = Trainer.resume(parted, max_steps=14)
    assert resumed.run() == "stopped" and resumed.step == 14

    a, b = ck.load(rundir.last_checkpoint(straight)), ck.load(rundir.last_checkpoint(parted))
    for key in ("model", "ema", "optimizer"):
        assert tensors_equal(a[key], b[key]), key
    for gen in ("python", "numpy", "torch", "cuda"):  # every generator, not just the weights it shaped so far
        assert tensors_equal(a["rng"][gen], b["rng"][gen]), gen
    assert a["step"] == b["step"] == 14
    assert train_lines(straight) == train_lines(parted)  # every step exactly once, same values
    assert [m["step"] for m in rundir.read_metrics(parted) if m["split"] == "val"] == [6, 12]


def test_run_directory_and_events(tmp_path):
    events = []
    state = Trainer(tiny(**{"train.epochs": 1}), tmp_path / "r", events.append).run()
    assert state == "finished"
    r = tmp_path / "r"
    assert C.load(r / "config.toml").data.batch_size == 8
    kinds = [e.kind for e in events]
    assert kinds[0] == "state" and kinds[-1] == "state" and events[-1].state == "finished"
    assert {"step", "eval", "checkpoint"} <= set(kinds)
    steps = [m for m in rundir.read_metrics(r) if m["split"] == "train"]
    for key in ("step", "epoch", "time", "loss", "loss_map", "loss_offset", "loss_shape", "lr", "grad_norm"):
        assert key in steps[0]
    val = [m for m in rundir.read_metrics(r) if m["split"] == "val"][-1]
    assert {"mAP", "AP50", "loss_map", "online_mAP"} <= set(val)
    assert rundir.last_checkpoint(r).exists() and rundir.best_checkpoint(r).exists()
    assert "## Results" in (r / "journal.md").read_text()
    info = listing.list_runs(tmp_path)[0]
    assert info.status.state == runctl.RunState.FINISHED and not info.status.alive and info.step == 6 and info.preset == "demo"


def test_pause_and_continue(tmp_path):
    t = None
    seen = []

    def cb(e):
        seen.append(e)
        if e.kind == "step" and e.step == 2:
            t.request_pause()
        if e.kind == "state" and e.state == "paused":  # continue from another thread, as a UI would
            threading.Timer(0.3, t.request_continue).start()

    t = Trainer(tiny(**{"train.epochs": 1}), tmp_path / "p", cb)
    assert t.run() == "finished"
    states = [e.state for e in seen if e.kind == "state"]
    assert states[:3] == ["running", "paused", "running"]
    assert [e.step for e in seen if e.kind == "step"] == list(range(1, 7))


def test_linear_lr_scaling_and_piecewise_decay(tmp_path):
    cfg = tiny(**{"train.base_lr": 0.002, "train.base_batch_size": 16, "train.milestones": [0.5],
                  "train.gamma": 0.1, "train.epochs": 1})
    Trainer(cfg, tmp_path / "lr").run()
    lrs = [m["lr"] for m in rundir.read_metrics(tmp_path / "lr") if m["split"] == "train"]
    assert lrs[0] == pytest.approx(0.001) and lrs[-1] == pytest.approx(0.0001)


def test_warmup_ramps_lr(tmp_path):
    Trainer(tiny(**{"train.warmup_steps": 4, "train.epochs": 1, "train.schedule": "constant"}),
            tmp_path / "w").run()
    lrs = [m["lr"] for m in rundir.read_metrics(tmp_path / "w") if m["split"] == "train"]
    base = tiny().lr
    assert lrs[:4] == pytest.approx([base / 4, base / 2, 3 * base / 4, base]) and lrs[5] == pytest.approx(base)


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    from nanxi_tune.engine.train import trainer as T

    real = T.build_targets
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        if calls["n"] == 3:
            out["heat_value"] = out["heat_value"] * float("nan")
        return out

    monkeypatch.setattr(T, "build_targets", poisoned)
    events = []
    t = Trainer(tiny(), tmp_path / "nan", events.append)
    assert t.run() == "failed"
    err = next(e for e in events if e.kind == "error")
    assert "non-finite" in err.error and "train.base_lr" in err.hint and "resume" in err.hint
    state = ck.load(rundir.last_checkpoint(tmp_path / "nan"))
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_refuses_frozen_keys_and_accepts_live_ones(tmp_path):
    run = tmp_path / "r"
    Trainer(tiny(), run, max_steps=2).run()
    with pytest.raises(C.ConfigError, match="train.seed.*cannot change mid-run"):
        Trainer.resume(run, updates={"train.seed": 5})
    t = Trainer.resume(run, updates={"train.base_lr": 0.0005}, max_steps=3)
    assert t.run() == "stopped"
    assert C.load(run / "config.toml").train.base_lr == 0.0005
    assert [m["lr"] for m in rundir.read_metrics(run) if m["split"] == "train"][-1] == pytest.approx(0.00025)


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path):
    events = []
    assert Trainer(tiny(**{"data.batch_size": 64}), tmp_path / "b", events.append).run() == "failed"
    assert "lower data.batch_size" in next(e for e in events if e.kind == "error").error


def test_a_finding_reported_before_a_resume_is_not_reported_again(tmp_path):
    """A config finding (warmup on) fires once at the start; the resumed run remembers it from events.jsonl."""
    run = tmp_path / "w"
    cfg = tiny(**{"train.warmup_steps": 4, "diagnose.enabled": True})
    assert Trainer(cfg, run, max_steps=8).run() == "stopped"  # the rules first run at the end of epoch 1
    fired = lambda: [e for e in rundir.read_events(run)  # noqa: E731
                     if e.get("kind") == "diagnosis" and e["rule"] == "warmup-enabled"]
    assert len(fired()) == 1 and fired()[0]["step"] <= 8
    assert Trainer.resume(run).run() == "finished"
    assert len(fired()) == 1


def test_clean_last_trains_the_last_stretch_on_plain_samples(tmp_path, monkeypatch):
    """augment.clean_last = 0.34 on 3 epochs of 6 steps: the last epoch (from step 12) reads int keys only."""
    from nanxi_tune.engine.data import dataset as D

    seen: list = []
    real = D.CocoDetection.__getitem__
    monkeypatch.setattr(D.CocoDetection, "__getitem__",
                        lambda self, key: (self.train and seen.append(key), real(self, key))[1])
    logs = []
    cfg = tiny(**{"augment.clean_last": 0.34, "eval.interval": 100})
    t = Trainer(cfg, tmp_path / "run", lambda e: logs.append(e.message) if e.kind == "log" else None)
    assert t.run() == "finished"
    augmented = [k for k in seen if isinstance(k, tuple)]
    bs = cfg.data.batch_size
    assert {e for e, _ in augmented} == {0, 1} and len(augmented) == 12 * bs
    assert len(seen) - len(augmented) == 6 * bs  # the last epoch: int keys, no augmentation
    assert any("augment.clean_last: from step 12" in m for m in logs)
