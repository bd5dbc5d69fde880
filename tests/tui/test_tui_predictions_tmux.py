"""The Predictions view in a real 80×24 terminal: a trained run's val images, worst first, ←/→ and +/−."""

from __future__ import annotations

import os
import re
import sys

import pytest

from conftest import NEEDS_TMUX, TmuxScreen, new_tmux_session, tiny, tmux

pytestmark = [pytest.mark.slow, NEEDS_TMUX]


def test_predictions_in_a_real_terminal(tmp_path, one_thread):
    from nanxi_tune.engine.run import rundir
    from nanxi_tune.engine.train.trainer import Trainer

    run = rundir.new_run_dir(tmp_path / "runs", "trained")
    cfg = tiny(**{"train.epochs": 3, "eval.online": False, "postprocess.score_threshold": 0.05})
    assert Trainer(cfg, run).run() == "finished"
    session = f"nanxi-pred-{os.getpid()}"
    env = f"NANXI_TUNE_CACHE={os.environ.get('NANXI_TUNE_CACHE', str(tmp_path / 'cache'))}"
    cmd = (f"cd {tmp_path} && env {env} TERM=xterm-256color {sys.executable} -m nanxi_tune.cli "
           f"--runs {tmp_path / 'runs'}; sleep 30")
    new_tmux_session(session, cmd)
    s = TmuxScreen(session)
    screen, wait = s.text, s.wait
    try:
        wait(r"valid ✓", 60)
        tmux("send-keys", "-t", session, "M-3")
        wait(r"trained\s+finished", 20)
        tmux("send-keys", "-t", session, "p")
        m = wait(r"image 1/(\d+) \S+ · score ≥ 0\.30 · (\d+) predicted, (\d+) labelled · (\d+) errors", 120)
        assert int(m.group(1)) == 8 and int(m.group(3)) > 0, screen()
        assert "▀" in screen() and re.search(r"[✓✗○] ", screen()), screen()  # pixels, and the boxes in words
        tmux("send-keys", "-t", session, "Right")
        wait(r"image 2/8", 10)
        tmux("send-keys", "-t", session, "+")
        wait(r"score ≥ 0\.35", 10)
        tmux("send-keys", "-t", session, "Escape")
        wait(r"Runs — Enter opens", 10)
    finally:
        tmux("kill-session", "-t", session)
