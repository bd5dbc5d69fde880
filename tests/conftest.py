import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BCCD = REPO.parent / "shared" / "datasets" / "bccd"


def pytest_configure(config):
    """Under pytest-xdist the cores are shared out: torch in each worker takes its part, not all of them
    (on 2 cores two workers with 2 threads each run several times slower than with one)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        threads = max(1, (os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the runs tests start as subprocesses, too


def pytest_collection_modifyitems(items):
    """The slow (real-training) tests first: the workers start on the long ones and share out the short ones
    at the end, instead of one worker finishing a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


def train_one_thread(run: Path, cfg, max_steps: int | None = None) -> str:
    """Train ``cfg`` into ``run`` with one torch thread (a module fixture's tiny run); its end state."""
    import torch

    from nanxi_tune.engine.train.trainer import Trainer

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Trainer(cfg, run, lambda e: None, max_steps=max_steps).run()
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core box two threads fighting are several times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def notices(app) -> list[str]:
    """The notifications on screen now (the toasts a user reads), as text: title and message. Pilot shows
    them only under ``app.run_test(..., notifications=True)``."""
    return [str(t.render()) for t in app.screen.query("Toast")]


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


NEEDS_TMUX = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")


def tmux(*args: str) -> str:
    """A tmux command's output (tests that drive the app in a real 80×24 terminal)."""
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def new_tmux_session(session: str, cmd: str) -> None:
    """Start ``cmd`` in a detached 80×24 tmux session, retrying: when another test kills the server's last
    session just as this one connects, tmux answers "server exited unexpectedly" and starts nothing."""
    import time

    for _ in range(10):
        done = subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd],
                              capture_output=True, text=True)
        if subprocess.run(["tmux", "has-session", "-t", f"={session}"], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"tmux could not start session {session}: {done.stderr.strip()}")


class TmuxScreen:
    """A tmux session's screen for tests that drive the app in a real terminal: its text (no colour), keys in,
    and waits for what a person would look for."""

    def __init__(self, session: str):
        self.session = session

    def text(self) -> str:
        return tmux("capture-pane", "-p", "-t", self.session)

    def keys(self, *keys: str) -> None:
        for key in keys:
            tmux("send-keys", "-t", self.session, key)

    def wait(self, pattern: str, timeout: float):
        import re
        import time

        end = time.time() + timeout
        while time.time() < end:
            m = re.search(pattern, self.text(), re.M)
            if m:
                return m
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on screen:\n{self.text()}")


def start_tui(tmp_path, name: str, **updates) -> TmuxScreen:
    """The real app at 80×24 in a tmux session, on the demo preset shrunk to ``updates`` (dotted keys), its runs
    under ``tmp_path/runs``; kill it with ``tmux("kill-session", "-t", screen.session)``."""
    import sys

    from nanxi_tune.engine import config as C

    preset = C.save(C.with_updates(C.load_preset("demo"), updates), tmp_path / "tiny.toml")
    session = f"nanxi-{name}-{os.getpid()}"
    code = ("from pathlib import Path; from nanxi_tune.tui.app import run_app; "
            f"run_app({str(preset)!r}, runs_root=Path({str(tmp_path / 'runs')!r}))")
    env = f"NANXI_TUNE_CACHE={os.environ.get('NANXI_TUNE_CACHE', str(tmp_path / 'cache'))}"
    cmd = f"cd {tmp_path} && env {env} TERM=xterm-256color {sys.executable} -c {code!r}; sleep 60"
    new_tmux_session(session, cmd)
    return TmuxScreen(session)
