"""What a user over SSH sees at 80×24 with no colour to rely on (issue 22): Alt+D in the footer, a switch's state
and the focused field in words, the Monitor of a running run showing the map, offset and shape curves without
scrolling, toasts that never cover the step/state line, and the quit dialog's hint whole."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from conftest import NEEDS_TMUX, start_tui, tmux

pytestmark = [pytest.mark.slow, NEEDS_TMUX]


def test_80x24_reads_without_colour(tmp_path):
    s = start_tui(tmp_path, "80x24", **{"data.synthetic_train": 16, "data.synthetic_val": 8,
                                        "preprocess.input_size": 64, "data.batch_size": 8, "train.epochs": 400,
                                        "eval.interval": 1000})
    session = s.session
    screen, wait = s.text, s.wait  # text only: no colour reaches the assertions

    def keys(*k: str) -> None:
        for key in k:
            s.keys(key)
            time.sleep(0.25)

    try:
        wait(r"valid ✓", 60)
        wait(r"Alt\+D Detached.*\n?\Z", 30)  # on the footer, the last line

        # a switch reads on/off in words, and the focused field is marked ▸
        keys("C-p")
        tmux("send-keys", "-t", session, "-l", "Config group: loss")
        time.sleep(1)
        keys("Enter")
        wait(r"learn_log_weights\s+\[■\] on", 10)
        for _ in range(12):
            if re.search(r"▸ learn_log_weights", screen()):
                break
            keys("Tab")
        wait(r"▸ learn_log_weights", 5)
        keys("space")
        wait(r"learn_log_weights\s+\[ \] off", 5)
        keys("space")
        wait(r"learn_log_weights\s+\[■\] on", 5)

        # a running run: the three branches' curves without scrolling
        keys("F5")
        wait(r"\[running\]", 60)
        wait(r"loss_map • · offset \+ · shape x", 30)
        run = next((tmp_path / "runs").iterdir())
        end = time.time() + 120
        while time.time() < end:
            plot = [ln.split("│")[1] if ln.count("│") >= 2 else "" for ln in screen().splitlines()[8:22]]
            if all(any(m in ln for ln in plot) for m in "•+x"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the branches' curves are not drawn:\n{screen()}")

        # toasts (another client's refused commands) never cover the step/state line
        for _ in range(6):
            subprocess.run([sys.executable, "-m", "nanxi_tune.cli", "ctl", str(run), "set", "train.seed=3"],
                           capture_output=True, timeout=60)
        wait(r"set: refused \(from", 20)
        for _ in range(10):
            lines = screen().splitlines()
            assert re.match(r" demo-\S+\s+\[running\]\s+step \d+", lines[3]), "\n".join(lines)  # as the CLI names it
            time.sleep(0.3)

        # the quit dialog's hint is whole
        keys("C-q")
        wait(r"\(Runs started with Alt\+D train on after the TUI quits or SSH drops\.\)", 10)
        keys("y")
        end = time.time() + 120
        while time.time() < end and "nanxi-tune resume" not in tmux("capture-pane", "-p", "-J", "-t", session):
            time.sleep(0.3)
    finally:
        tmux("kill-session", "-t", session)
