import os
import pickle
import random

import numpy as np
import pytest
import torch

from nanxi_tune.engine.run import checkpoint as ck
from nanxi_tune.engine.run import recorder, rundir
from nanxi_tune.engine.run.events import StepMetrics


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    path = ck.save_atomic({"format": ck.FORMAT, "rng": ck.rng_state()}, tmp_path / "a.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9); np.random.seed(9); torch.manual_seed(9)
    ck.set_rng_state(ck.load(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_crafted_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "payload": Evil()}, path)
    with pytest.raises(ck.CheckpointError, match="contains code objects .*refused without running it"):
        ck.load(path)
    path.write_bytes(pickle.dumps({"format": ck.FORMAT}))
    with pytest.raises(ck.CheckpointError):
        ck.load(path)


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    good = ck.save_atomic({"format": ck.FORMAT, "w": torch.ones(1000)}, tmp_path / "g.pt")
    (tmp_path / "t.pt").write_bytes(good.read_bytes()[:500])
    with pytest.raises(ck.CheckpointError, match="incomplete"):
        ck.load(tmp_path / "t.pt")
    torch.save({"w": 1}, tmp_path / "f.pt")
    with pytest.raises(ck.CheckpointError, match="not a nanxi-tune checkpoint"):
        ck.load(tmp_path / "f.pt")
    with pytest.raises(ck.CheckpointError, match="no checkpoint"):
        ck.load(tmp_path / "missing.pt")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = ck.save_atomic({"format": ck.FORMAT, "v": torch.tensor(1)}, tmp_path / "last.pt")

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        ck.save_atomic({"format": ck.FORMAT, "v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert ck.load(path)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def _step(s: int) -> StepMetrics:
    return StepMetrics(step=s, epoch=0, time=0.0, loss=1.0, loss_map=0.5, loss_offset=0.2, loss_shape=0.3, lr=0.01,
                       grad_norm=1.0, s_map=0.0, s_offset=0.0, s_shape=0.0, images_per_s=1.0, ema_l2=0.0,
                       total_steps=9)


def test_trim_metrics_drops_lines_after_checkpoint_and_torn_tail(tmp_path):
    recorder.append(tmp_path, *(_step(s) for s in range(1, 6)))
    with open(tmp_path / rundir.METRICS, "a") as f:
        f.write('{"step": 6, "spl')
    assert len(rundir.read_metrics(tmp_path)) == 5
    with recorder.Recorder(tmp_path) as rec:
        assert rec.trim(3) == 2
        rec.record(_step(4))  # appended to the trimmed file, not the replaced one
    assert [m["step"] for m in rundir.read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert (tmp_path / rundir.METRICS).read_text().endswith("\n")


def test_metrics_tail_follows_appends_and_trims(tmp_path):
    tail = rundir.JsonlTail(tmp_path / rundir.METRICS)
    assert tail.poll() == []
    rec = recorder.Recorder(tmp_path)
    rec.record(_step(1)); rec.record(_step(2))
    assert [m["step"] for m in tail.poll()] == [1, 2]
    rec.record(_step(3))
    assert [m["step"] for m in tail.poll()] == [3]
    rec.trim(1)
    rec.record(_step(2))  # the writer open before the trim goes on in the new file
    rec.close()
    assert [m["step"] for m in tail.poll()] == [1, 2]
