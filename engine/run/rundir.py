"""The run directory, the source of truth: config.toml, metrics.jsonl, events.jsonl, checkpoints/, journal.md.

Readers here never import torch, so the TUI can list and follow runs cheaply. The one writer of metrics.jsonl and
events.jsonl is engine.run.recorder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from . import access

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
JOURNAL = "journal.md"
CHECKPOINTS = "checkpoints"
OWNER_LOCK = "owner.lock"  # flock held by the live trainer (engine.run.runctl)
OWNER = "owner.json"  # who owns the run: pid, host, start, heartbeat, state
CONTROL = "control"  # commands from clients, one file each (engine.run.runctl)
STDOUT = "stdout.log"  # a detached run's own output
STUDY = "study.json"  # a study's spec (engine.workflows.study): the folder is a study, its trials the run folders in it
AUTOPILOT = "autopilot.json"  # an autopilot's spec and state (engine.workflows.autopilot): its rounds' folders in it


def run_name(preset: str) -> str:
    """<preset>-<time>: the preset's file stem reduced to a safe folder name (a preset's own `preset` key may hold
    anything, a 10 MB string included)."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(preset[:200]).stem if preset else "").strip("-.")[:40]
    return f"{stem or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"


def new_run_dir(root: Path = Path("runs"), name: str | None = None) -> Path:
    """runs/<name>; a fresh timestamped name when none is given, never reusing a folder."""
    root = Path(root)
    base = name or time.strftime("run-%Y%m%d-%H%M%S")
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return access.make_folder(path)


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / "last.pt"


def best_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / "best.pt"


def ring_checkpoint(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:09d}.pt"


def ring_checkpoints(run_dir: Path) -> list[Path]:
    """The ring of per-evaluation checkpoints, oldest first."""
    return sorted((Path(run_dir) / CHECKPOINTS).glob("step-*.pt"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete lines; a torn last line (killed mid-write) is ignored."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
    except FileNotFoundError:
        pass
    return out


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / METRICS)


def last_step(run_dir: Path) -> int:
    """The step of the last metrics line, read from the file's tail (cheap for a long run: followers poll it)."""
    try:
        with open(Path(run_dir) / METRICS, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return 0
    for line in reversed(tail.splitlines()[1:] if len(tail) >= 8192 else tail.splitlines()):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):  # a torn line, a line without a step
            continue
    return 0


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / EVENTS)


class JsonlTail:
    """Follow a JSON-lines file being written: poll() returns the complete lines added since the last poll."""

    def __init__(self, path: Path, pos: int = 0):
        self.path = Path(path)
        self._pos = pos
        self._buf = ""
        self.restarted = False  # set when the file shrank (a resume trimmed it) and was read again from 0

    def poll(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self._pos:  # trimmed by a resume: start over
            self._pos, self._buf, self.restarted = 0, "", True
        if size == self._pos:
            return []
        with open(self.path, encoding="utf-8") as f:
            f.seek(self._pos)
            chunk = f.read()
            self._pos = f.tell()
        self._buf += chunk
        *lines, self._buf = self._buf.split("\n")
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def recorded_state(run_dir: Path) -> str | None:
    """The last state the run recorded in events.jsonl ("failed" after an error), None before any."""
    return state_of(read_events(run_dir))


def state_of(events: list[dict[str, Any]]) -> str | None:
    state = None
    for e in events:
        if e.get("kind") == "state":
            state = e.get("state", state)
        elif e.get("kind") == "error":
            state = "failed"
    return state
