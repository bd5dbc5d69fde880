"""A sweep in a real terminal (tmux, 80×24): F9 starts it detached, the TUI's session is killed, a new TUI opens
the study from the Runs tab and pauses it (no trial advances), continues it and stops it."""

from __future__ import annotations

import os
import re
import sys
import time

import pytest

from conftest import NEEDS_TMUX, TmuxScreen, new_tmux_session, tmux

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import runctl
from nanxi_tune.engine.workflows.study import list_studies

pytestmark = [pytest.mark.slow, NEEDS_TMUX]


def test_sweep_outlives_the_tui_and_a_new_tui_pauses_continues_and_stops_it(tmp_path):
    cfg = C.with_updates(C.load_preset("demo"), {"data.synthetic_train": 48, "data.synthetic_val": 8,
                                                 "preprocess.input_size": 64, "data.batch_size": 8,
                                                 "backbone.width": 8, "head.channels": 16, "train.log_every": 1})
    preset = C.save(cfg, tmp_path / "tiny.toml")
    runs = tmp_path / "runs"
    env = (f"NANXI_TUNE_CACHE={os.environ.get('NANXI_TUNE_CACHE', str(tmp_path / 'cache'))} OMP_NUM_THREADS=1 "
           "TERM=xterm-256color")
    cmd = (f"cd {tmp_path} && env {env} {sys.executable} -m nanxi_tune.cli --preset {preset} --runs {runs}; "
           "sleep 120")
    session = f"nanxi-study-{os.getpid()}"

    def start() -> None:
        new_tmux_session(session, cmd)

    tty = TmuxScreen(session)
    screen, wait = tty.text, tty.wait

    start()
    folder = None
    try:
        wait(r"valid ✓", 60)
        tmux("send-keys", "-t", session, "F9")
        wait(r"F5 starts seven trials as a detached study", 20)
        tmux("send-keys", "-t", session, "F5")
        m = wait(r"\n (\S+)\s+—\s+—\s+\S+\s+running\s+([1-9]\d*)\s+cpu", 180)  # a trial trains
        (folder,) = list_studies(runs)
        owner = runctl.read_owner(folder)

        tmux("kill-session", "-t", session)  # the terminal goes away: the study does not
        time.sleep(2)
        st = runctl.status(folder)
        assert st.alive and st.owner.pid == owner.pid and st.state.value == "running"

        start()
        wait(r"valid ✓", 60)
        tmux("send-keys", "-t", session, "M-3")
        wait(r"◆ base_lr-\S+\s+running ●", 30)
        tmux("send-keys", "-t", session, "Enter")
        wait(r"study running ●", 30)
        tmux("send-keys", "-t", session, "F6")
        wait(r"study paused ●", 60)
        m = wait(r"\n (\S+)\s+—\s+—\s+\S+\s+paused\s+(\d+)\s+cpu", 30)
        value, step = m.group(1), int(m.group(2))
        time.sleep(3)
        m2 = wait(rf"\n {re.escape(value)}\s+—\s+—\s+\S+\s+paused\s+(\d+)\s+cpu", 10)
        assert int(m2.group(1)) == step, screen()  # no trial advances while paused
        assert runctl.status(folder).state.value == "paused"

        tmux("send-keys", "-t", session, "F6")
        wait(r"study running ●", 30)
        end = time.time() + 60  # the trial goes on
        while time.time() < end and not re.search(rf"\n {re.escape(value)}\s.*running\s+(?!{step}\s)\d+", screen()):
            time.sleep(0.3)
        assert re.search(rf"\n {re.escape(value)}\s.*running\s+(?!{step}\s)\d+", screen()), screen()

        tmux("send-keys", "-t", session, "F7")
        wait(r"study stopped: \d/7 trials done — F5 resumes", 120)
        st = runctl.status(folder)
        assert not st.alive and st.state.value == "stopped"
    finally:
        tmux("kill-session", "-t", session)
        if folder is not None and runctl.status(folder).alive:
            runctl.send(folder, runctl.Op.STOP)
