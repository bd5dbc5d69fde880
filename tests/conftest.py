import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BCCD = REPO.parent / "shared" / "datasets" / "bccd"


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Synthetic datasets go to one session cache, never the user's home."""
    os.environ.setdefault("NANXI_TUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield


TINY = {"preprocess.input_size": 64, "data.synthetic_train": 48, "data.synthetic_val": 8, "data.batch_size": 8,
        "backbone.width": 8, "head.channels": 16}


def tiny(**updates):
    """The demo preset shrunk to train in seconds; ``updates`` are dotted keys."""
    from nanxi_tune.engine import config as C

    return C.with_updates(C.load_preset("demo"), TINY | updates)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core box two threads fighting are several times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


async def wait_for(pilot, cond, timeout=120.0, step=0.05):
    """Pump the app until ``cond()`` holds (Pilot tests); fail after ``timeout`` seconds."""
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("timed out waiting")
        await pilot.pause(step)


async def palette(pilot, query: str) -> None:
    """Open the command palette (Ctrl+P), type ``query`` and run the first hit (Pilot tests)."""
    await pilot.press("ctrl+p")
    await pilot.pause(0.2)
    await pilot.press(*query)
    await pilot.pause(0.5)
    await pilot.press("enter")
