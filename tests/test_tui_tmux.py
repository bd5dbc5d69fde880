"""The real app in a real terminal (tmux, 80×24): start a demo run by key, read loss values off the screen."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from nanxi_tune.engine import config as C

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def test_real_terminal_start_run_and_read_losses(tmp_path):
    cfg = C.with_updates(C.load_preset("demo"), {"data.synthetic_train": 16, "data.synthetic_val": 8,
                                                 "preprocess.input_size": 64, "data.batch_size": 8,
                                                 "train.epochs": 50, "eval.interval": 100})
    preset = C.save(cfg, tmp_path / "tiny.toml")
    session = f"nanxi-tui-{os.getpid()}"
    code = ("from pathlib import Path; from nanxi_tune.tui.app import run_app; "
            f"run_app({str(preset)!r}, runs_root=Path({str(tmp_path / 'runs')!r}))")
    env = f"NANXI_TUNE_CACHE={os.environ.get('NANXI_TUNE_CACHE', str(tmp_path / 'cache'))}"
    cmd = f"cd {tmp_path} && env {env} TERM=xterm-256color {sys.executable} -c {code!r}; sleep 60"
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd)
    try:
        def screen() -> str:
            return tmux("capture-pane", "-p", "-t", session)

        def wait(pattern: str, timeout: float) -> re.Match:
            end = time.time() + timeout
            while time.time() < end:
                m = re.search(pattern, screen())
                if m:
                    return m
                time.sleep(0.2)
            raise AssertionError(f"{pattern!r} not on screen:\n{screen()}")

        wait(r"input_size", 30)  # first frame: the Config tab
        wait(r"valid ✓", 30)
        tmux("send-keys", "-t", session, "F5")
        wait(r"\[running\]", 60)
        m = wait(r"loss_map\s+(\d+\.\d+)", 120)
        assert float(m.group(1)) > 0
        for name in ("loss_offset", "loss_shape"):
            m = wait(rf"{name}\s+(\d+\.\d+)", 10)
            assert float(m.group(1)) > 0
        # Alt+3 / Alt+1 switch tabs in a real terminal (xterm sends ESC 3), even from a focused input
        tmux("send-keys", "-t", session, "M-1")
        wait(r"preprocess  1/", 10)
        tmux("send-keys", "-t", session, "Tab")
        tmux("send-keys", "-t", session, "Tab")
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "M-3")
        wait(r"Runs — Enter opens", 10)
        tmux("send-keys", "-t", session, "M-1")
        wait(r"preprocess  1/", 10)
        assert "£" not in screen(), screen()  # nothing typed into the focused input
        # quit: asks, then stops with a checkpoint
        tmux("send-keys", "-t", session, "C-q")
        wait(r"Write a checkpoint", 10)
        tmux("send-keys", "-t", session, "y")
        # back in the shell: where the run stopped and the command that resumes it (-J: lines the terminal
        # wrapped are joined, as a mouse copy would take them)
        end = time.time() + 120
        while time.time() < end and "nanxi-tune resume" not in tmux("capture-pane", "-p", "-J", "-t", session):
            time.sleep(0.3)
        m = re.search(r"Resume it with.*\n\s+nanxi-tune resume (\S+)", tmux("capture-pane", "-p", "-J", "-t", session))
        runs = list((tmp_path / "runs").iterdir())
        assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.pt").exists()
        assert m and m.group(1) == str(runs[0]), screen()
    finally:
        tmux("kill-session", "-t", session)


def test_dropped_terminal_stops_the_run_with_a_checkpoint(tmp_path):
    """kill the tmux session (the app gets SIGHUP, as on a dropped SSH link): checkpoint, stop recorded, exit."""
    import json

    cfg = C.with_updates(C.load_preset("demo"), {"data.synthetic_train": 16, "data.synthetic_val": 8,
                                                 "preprocess.input_size": 64, "data.batch_size": 8,
                                                 "train.epochs": 200, "eval.interval": 100})
    preset = C.save(cfg, tmp_path / "tiny.toml")
    session = f"nanxi-hup-{os.getpid()}"
    pid_file = tmp_path / "app.pid"
    code = ("import os; from pathlib import Path; from nanxi_tune.tui.app import run_app; "
            f"Path({str(pid_file)!r}).write_text(str(os.getpid())); "
            f"run_app({str(preset)!r}, runs_root=Path({str(tmp_path / 'runs')!r}))")
    env = f"NANXI_TUNE_CACHE={os.environ.get('NANXI_TUNE_CACHE', str(tmp_path / 'cache'))}"
    cmd = f"cd {tmp_path} && env {env} TERM=xterm-256color {sys.executable} -c {code!r}"
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd)
    try:
        def wait(pattern: str, timeout: float) -> None:
            end = time.time() + timeout
            while time.time() < end:
                if re.search(pattern, tmux("capture-pane", "-p", "-t", session)):
                    return
                time.sleep(0.2)
            raise AssertionError(f"{pattern!r} not on screen")

        wait(r"valid ✓", 60)
        tmux("send-keys", "-t", session, "F5")
        wait(r"loss_map\s+\d+\.\d+", 120)
    finally:
        tmux("kill-session", "-t", session)  # SIGHUP to the app
    pid = int(pid_file.read_text())
    end = time.time() + 120
    while time.time() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.3)
    else:
        os.kill(pid, 9)
        raise AssertionError("the app did not exit after SIGHUP")
    (run,) = list((tmp_path / "runs").iterdir())
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    states = [e.get("state") for e in events if e.get("kind") == "state"]
    assert states[-1] == "stopped", states
    assert any(e.get("kind") == "checkpoint" for e in events)
    assert (run / "checkpoints" / "last.pt").exists()
    assert events[-1].get("signal") == "SIGHUP" and "resume" in events[-1]["message"]
