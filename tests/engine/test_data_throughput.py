"""data.workers = auto and data.cache_mb: workers chosen from the cores; decoded images cached up to the cap,
samples identical with and without the cache, and the cache shared with forked loader workers."""

import pytest
import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.dataset import train_dataset
from nanxi_tune.engine.data.loader import EpochSampler, make_loader, resolve_workers

from conftest import tiny


def test_auto_workers_from_the_cores():
    assert resolve_workers(3, "cpu") == 3 and resolve_workers(0, "cuda") == 0
    assert [resolve_workers("auto", "cpu", n) for n in (1, 2, 3, 4, 8, 16)] == [0, 0, 0, 1, 2, 4]
    assert [resolve_workers("auto", "cuda", n) for n in (1, 2, 4, 16)] == [0, 1, 3, 8]
    assert resolve_workers("auto", "cpu") >= 0


def test_workers_key_takes_auto_or_a_count():
    assert C.with_updates(C.Config(), {"data.workers": "auto"}).data.workers == "auto"
    for bad in (True, -1, 65, "many", 1.5):
        with pytest.raises(C.ConfigError, match=r'data\.workers = .*from 0 to 64, or "auto"'):
            C.with_updates(C.Config(), {"data.workers": bad})


def test_cache_keeps_decoded_images_up_to_the_cap():
    ds = train_dataset(tiny(**{"data.cache_mb": 1}), 0)
    assert ds.cache_limit == 1 << 20
    per_image = ds._decode(ds.ids[0]).numel()
    ds.cache_limit = 5 * per_image + 1  # a cap that bites on the tiny set
    for i in ds.ids:
        ds._read(i)
    assert ds._cache_bytes == sum(t.numel() for t in ds._cache.values()) <= ds.cache_limit
    assert 3 <= len(ds._cache) < len(ds.ids)
    first = ds.ids[0]
    assert ds._read(first) is ds._read(first)  # a hit, not a decode
    off = train_dataset(tiny(), 0)
    off._read(first)
    assert not off._cache


def test_cached_samples_equal_uncached_ones():
    on, off = train_dataset(tiny(**{"data.cache_mb": 64}), 0), train_dataset(tiny(), 0)
    for _ in range(2):  # the second pass reads from the cache: augmentation never wrote into it
        for key in [(0, 1), (1, 1), (0, 5), 3]:
            a, b = on[key], off[key]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_loader_workers_share_a_preloaded_cache():
    ds = train_dataset(tiny(**{"data.cache_mb": 64}), 0)
    loader = make_loader(ds, EpochSampler(len(ds), 0, 0), 8, 1, "cpu", drop_last=True)
    assert len(ds._cache) == len(ds.ids)  # filled before the fork
    ref = train_dataset(tiny(), 0)
    ref_loader = make_loader(ref, EpochSampler(len(ref), 0, 0), 8, 0, "cpu", drop_last=True)
    for (a, _), (b, _) in zip(loader, ref_loader):
        assert torch.equal(a, b)


def test_step_breakdown_bench_smoke(tmp_path):
    """bench/step_breakdown.py at toy size (demo preset: no BCCD at the given path) prints every phase."""
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run([sys.executable, str(REPO / "bench" / "step_breakdown.py"), "--steps", "1", "--warmup", "1",
                        "--data", str(tmp_path / "none"), "--set", "preprocess.input_size=64", "data.batch_size=2",
                        "data.synthetic_train=8", "data.synthetic_val=4", "backbone.width=8", "head.channels=8"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    for key in ("demo (no BCCD", "decode", "augment", "targets", "forward", "backward", "optimiser", "ema",
                "data side", "cached:"):
        assert key in r.stdout, r.stdout
