"""Largest batch: the doubling/bisect search, the CPU estimate against a cap, CUDA probing where present."""

import pytest
import torch

from nanxi_tune.engine.workflows import autobatch as AB
from conftest import tiny as base_tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**updates):
    extra = {"data.synthetic_train": 64}
    return base_tiny(**(extra | updates))


@pytest.mark.parametrize("largest,start", [(37, 16), (16, 16), (1, 8), (4096, 16), (3000, 1), (5, 64)])
def test_search_finds_the_largest_that_fits(largest, start):
    calls = []

    def fits(b):
        calls.append(b)
        return b <= largest

    assert AB.search(fits, start, 4096) == largest
    assert len(calls) <= 2 * 13 + 2  # doubling + bisect: logarithmic


def test_search_none_fits():
    assert AB.search(lambda b: False, 8) == 0


def test_cpu_estimate_against_a_cap():
    cfg = tiny()
    small = AB.find_batch(cfg, cap_gb=0.02, device="cpu")
    large = AB.find_batch(cfg, cap_gb=0.2, device="cpu")
    assert small.method == large.method == "cpu-estimate" and small.device == "cpu"
    assert 1 <= small.batch_size <= large.batch_size
    assert small.per_image_bytes > 3 * 64 * 64 * 4  # at least the input image
    assert large.lr == pytest.approx(cfg.train.base_lr * large.batch_size / cfg.train.base_batch_size)
    assert "saved tensors" in small.detail and "cap" in small.detail
    # the estimate is linear: the batch uses at most the cap
    assert small.fixed_bytes + small.per_image_bytes * small.batch_size <= small.cap_bytes or small.batch_size == 1
    huge = AB.find_batch(cfg, cap_gb=1000, device="cpu")
    assert huge.batch_size == 64 and huge.limited_by == "dataset"  # never more than the training set
    assert AB.apply(cfg, large).data.batch_size == large.batch_size


def test_default_cap_is_half_the_available_ram(monkeypatch):
    monkeypatch.setattr(AB, "available_ram", lambda: 2 * 2**30)
    r = AB.find_batch(tiny(), device="cpu")
    assert r.cap_bytes == 2**30 and "50% of available RAM" in r.detail


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_probe():
    cfg = tiny(**{"data.synthetic_train": 512, "preprocess.input_size": 128})
    r = AB.find_batch(cfg, device="cuda", cap_gb=0.5)
    assert r.method == "cuda-probe" and r.batch_size >= 1
    assert all(p["fits"] == (p["batch"] <= r.batch_size) for p in r.probes)
