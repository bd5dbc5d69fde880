"""Exactness that is not luck: python's and numpy's generators are seeded from train.seed and checkpointed with
torch's, and a data-loader iterator draws nothing from the global torch generator (each loader has its own), so
a resumed run's every RNG state equals an uninterrupted run's (tests/engine/test_trainer.py compares them at the end of
its exact-resume test)."""

from __future__ import annotations

import random

import numpy as np
import torch

from nanxi_tune.engine.run import checkpoint as ck
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.data.dataset import train_dataset
from nanxi_tune.engine.data.loader import EpochSampler, make_loader
from nanxi_tune.engine.train.trainer import Trainer

from conftest import tiny


def test_python_and_numpy_generators_are_seeded_from_the_run_seed(tmp_path, one_thread):
    states = []
    for i, noise in enumerate((123, 456)):
        random.seed(noise)  # whatever ran before in this process must not matter
        np.random.seed(noise)
        assert Trainer(tiny(**{"train.seed": 7}), tmp_path / f"r{i}", max_steps=1).run() == "stopped"
        states.append(ck.load(rundir.last_checkpoint(tmp_path / f"r{i}"))["rng"])
    a, b = states
    assert a["python"] == b["python"]
    assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a["numpy"], b["numpy"]))
    assert torch.equal(a["torch"], b["torch"])
    ck.set_rng_state(a)  # nothing in a step draws from python's generator: it is where seed 7 left it
    assert random.random() == random.Random(7).random()


def test_a_loader_iterator_leaves_the_global_torch_generator_alone(tmp_path, one_thread):
    cfg = tiny()
    ds = train_dataset(cfg, 0)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for epoch in range(2):
        loader = make_loader(ds, EpochSampler(len(ds), 0, epoch), 8, 0, "cpu", drop_last=True)
        next(iter(loader))
        iter(loader)
    assert torch.equal(torch.get_rng_state(), before)
