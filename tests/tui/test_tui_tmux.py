"""The real app in a real terminal (tmux, 80×24): start a demo run by key, read loss values off the screen."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from conftest import NEEDS_TMUX, new_tmux_session, start_tui, tmux

from nanxi_tune.engine import config as C

pytestmark = [pytest.mark.slow, NEEDS_TMUX]


def test_real_terminal_start_run_and_read_losses(tmp_path):
    s = start_tui(tmp_path, "tui", **{"data.synthetic_train": 16, "data.synthetic_val": 8,
                                      "preprocess.input_size": 64, "data.batch_size": 8, "train.epochs": 50,
                                      "eval.interval": 100})
    session, screen, wait = s.session, s.text, s.wait
    try:
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
    new_tmux_session(session, cmd)
    try:
        def wait(pattern: str, timeout: float) -> None:
            end = time.time() + timeout
            while time.time() < end:
                if re.search(pattern, tmux("capture-pane", "-p", "-t", session)):
                    return
                time.sleep(0.2)
            raise AssertionError(f"{pattern!r} not on screen:\n{tmux('capture-pane', '-p', '-t', session)}")

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


# --- attach, live edits and detached runs (run control): the TUI as a client of a run in another process ----

CLI = [sys.executable, "-m", "nanxi_tune.cli"]
TINY_LONG = {"preprocess.input_size": 64, "data.synthetic_train": 48, "data.synthetic_val": 8, "data.batch_size": 8,
             "backbone.width": 8, "head.channels": 16, "train.epochs": 2000, "eval.interval": 1000,
             "train.base_lr": 0.003}  # thousands of fast steps: the run outlives the test, which stops it


def run_env(tmp_path) -> dict[str, str]:
    return {"NANXI_TUNE_CACHE": os.environ.get("NANXI_TUNE_CACHE", str(tmp_path / "cache")), "OMP_NUM_THREADS": "1",
            "TERM": "xterm-256color"}


class Term:
    """A tmux session (80×24) running one shell command; its screen read back as text."""

    def __init__(self, name: str, cmd: str, cwd, env: dict[str, str]) -> None:
        self.name = f"{name}-{os.getpid()}"
        envs = " ".join(f"{k}={v}" for k, v in env.items())
        new_tmux_session(self.name, f"cd {cwd} && env {envs} {cmd}; sleep 60")

    def screen(self) -> str:
        return tmux("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str, literal: bool = False) -> None:
        tmux("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)

    def wait(self, pattern: str, timeout: float) -> re.Match:
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(pattern, self.screen())
            if m:
                return m
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on screen:\n{self.screen()}")

    def kill(self) -> None:
        tmux("kill-session", "-t", self.name)


def train_rows(run_dir) -> list[dict]:
    from nanxi_tune.engine.run import rundir

    return [r for r in rundir.read_metrics(run_dir) if r.get("split", "train") == "train"]


def last_step(run_dir) -> int:
    rows = train_rows(run_dir)
    return rows[-1]["step"] if rows else 0


def wait_until(cond, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop_run(run_dir) -> None:
    """`nanxi-tune ctl RUN stop` (checkpoint, then stop), then wait for its owner to go."""
    from nanxi_tune.engine.run import runctl

    if runctl.status(run_dir).alive:
        out = subprocess.run(CLI + ["ctl", str(run_dir), "stop"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    wait_until(lambda: not runctl.status(run_dir).alive, 60, "the run's owner to exit")


def test_tui_attaches_to_a_headless_run_pauses_it_and_edits_its_lr(tmp_path):
    """`nanxi-tune train --run-dir RUN` in its own process; `nanxi-tune open RUN` in a terminal attaches: F6 pauses
    the headless process (its steps stop), F8 shows the live keys' current values and applies an lr change,
    which the headless trainer's metrics show from the next step."""
    from nanxi_tune.engine.run import rundir, runctl

    preset = C.save(C.with_updates(C.load_preset("demo"), TINY_LONG), tmp_path / "tiny.toml")
    run = tmp_path / "runs" / "headless"
    env = run_env(tmp_path)
    with open(tmp_path / "train.log", "wb") as log:
        proc = subprocess.Popen(CLI + ["train", "--preset", str(preset), "--run-dir", str(run), "--quiet"],
                                cwd=tmp_path, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    term = None
    try:
        wait_until(lambda: last_step(run) >= 2 or proc.poll() is not None, 180, "the headless run's first steps")
        assert proc.poll() is None, (tmp_path / "train.log").read_text()
        term = Term("nanxi-attach", " ".join(CLI + ["open", str(run)]), tmp_path, env)
        term.wait(r"\[running\]", 60)
        term.wait(r"loss_map\s+\d+\.\d+", 60)
        # F6: the headless process pauses at its next step boundary
        term.keys("F6")
        term.wait(r"\[paused\]", 60)
        wait_until(lambda: runctl.status(run).state == runctl.RunState.PAUSED, 30, "state paused")
        paused_at = last_step(run)
        time.sleep(2.0)
        assert last_step(run) == paused_at and proc.poll() is None
        # F8: the running run's live keys with their current values
        term.keys("F8")
        term.wait(r"change live keys", 20)
        term.wait(r"train\.base_lr = 0\.003", 10)
        assert "train.epochs=" not in term.screen()  # nothing offered that the user did not edit
        term.keys("End", "C-u")
        term.keys("train.base_lr=0.001", literal=True)
        term.wait(r"train\.base_lr=0\.001", 10)
        term.keys("Enter")
        acks = lambda: [e for e in rundir.read_events(run) if e.get("kind") == "ack" and e.get("op") == "set"]  # noqa: E731
        (ack,) = wait_until(acks, 60, "the trainer's answer to the live edit")
        assert ack["applied"] and ["train.base_lr", 0.003, 0.001] in ack["changes"], ack
        term.wait(r"set: applied", 20)
        assert C.load(run / "config.toml").train.base_lr == 0.001  # the run's record
        assert last_step(run) == paused_at  # the edit did not unpause it
        # F6 again: training goes on, at the new lr from the step after the acknowledgement
        term.keys("F6")
        wait_until(lambda: last_step(run) > ack["step"] + 2, 60, "steps after continue")
        lr = {r["step"]: r["lr"] for r in train_rows(run)}
        assert lr[ack["step"] + 1] == pytest.approx(lr[ack["step"]] / 3, rel=1e-6), lr
        # quitting the attached TUI leaves the headless run training
        term.keys("C-q")
        term.wait(r"keeps training", 30)
        at = last_step(run)
        wait_until(lambda: last_step(run) > at + 2, 60, "steps after the TUI quit")
        stop_run(run)
        assert proc.wait(timeout=60) == 3  # ExitCode.STOPPED: stopped by request, resumable
    finally:
        if term is not None:
            term.kill()
        if proc.poll() is None:
            proc.kill()
    assert runctl.status(run).state == runctl.RunState.STOPPED
    assert (run / "checkpoints" / "last.pt").exists()


def test_detached_run_keeps_training_after_the_terminal_is_gone(tmp_path):
    """Alt+D (ESC d in a terminal) starts the run as its own process; killing the TUI's tmux session (SIGHUP, as a
    dropped SSH link) leaves it training; `nanxi-tune ctl RUN stop` then stops it with a checkpoint."""
    from nanxi_tune.engine.run import runctl

    preset = C.save(C.with_updates(C.load_preset("demo"), TINY_LONG), tmp_path / "tiny.toml")
    runs = tmp_path / "runs"
    env = run_env(tmp_path)
    term = Term("nanxi-detach", " ".join(CLI + ["--preset", str(preset), "--runs", str(runs)]), tmp_path, env)
    run = None
    try:
        term.wait(r"valid ✓", 60)
        term.keys("M-d")  # Alt+D: tmux sends ESC d, as xterm does
        term.wait(r"started detached", 20)
        (run,) = wait_until(lambda: list(runs.iterdir()) if runs.is_dir() else [], 20, "the run folder")
        term.wait(r"\[running\]", 180)
        wait_until(lambda: last_step(run) >= 2, 120, "the detached run's first steps")
        owner = runctl.read_owner(run)
        assert owner is not None and runctl.status(run).alive
    finally:
        term.kill()  # SIGHUP to the TUI; the detached run is in its own session
    try:
        at = last_step(run)
        wait_until(lambda: last_step(run) > at + 3, 120, "steps after the TUI's terminal was killed")
        assert runctl.status(run).alive and runctl.read_owner(run).pid == owner.pid
    finally:
        stop_run(run)
    assert runctl.status(run).state == runctl.RunState.STOPPED
    assert (run / "checkpoints" / "last.pt").exists()
    log = (run / "stdout.log").read_text()  # plain progress to `tail -f` after reconnecting (issue 22)
    assert re.search(r"step \d+/\d+ .* loss \d", log) and "stopped at step" in log, log[-2000:]
