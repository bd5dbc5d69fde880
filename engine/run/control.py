"""The control channel's messages and the owner's end of it: what a client may ask (Op, Command), and the Inbox
that takes command files from control/ — bounded, never following links, anything else moved aside and answered
once (Rejected). Clients send through engine.run.runctl."""

from __future__ import annotations

import enum
import json
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import rundir
from .events import CommandAck, Log


class Op(str, enum.Enum):
    """What a client may ask of a live trainer."""
    PAUSE = "pause"
    CONTINUE = "continue"
    STOP = "stop"  # checkpoint first
    CHECKPOINT = "checkpoint"
    EVAL = "eval"
    SET = "set"  # live keys only


@dataclass(frozen=True)
class Command:
    op: Op
    updates: dict[str, Any] = field(default_factory=dict)
    sender: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op.value, "updates": self.updates, "sender": self.sender, "id": self.id,
                "time": self.time}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Command":
        """A command as a client wrote it; TypeError / ValueError for anything else (checked, never guessed)."""
        if not isinstance(d, dict) or not isinstance(d.get("id"), str) or not isinstance(d.get("updates") or {}, dict):
            raise TypeError("a command is an object with a string id and an object of updates")
        updates = dict(d.get("updates") or {})
        if len(updates) > 256 or not all(isinstance(k, str) for k in updates):
            raise ValueError("updates: at most 256 dotted keys")
        return cls(Op(d["op"]), updates, str(d.get("sender", ""))[:MAX_SENDER], d["id"][:32],
                   float(d.get("time", 0.0)))


@dataclass(frozen=True)
class Rejected:
    """A file of control/ that is not a command this channel takes. ``id``: the command id its name carries
    (a client may wait for an answer to it), "" for a file not named as a command at all."""
    id: str
    problem: str

    def event(self, step: int) -> CommandAck | Log:
        """How the owner answers it: refused, when a client may wait on its id; else one warning."""
        if self.id:
            return CommandAck(self.id, "?", False, step, self.problem)
        return Log(f"control channel: {self.problem}", "warning")


MAX_COMMAND_BYTES = 64 * 1024  # a command is a few hundred bytes; live edits of many keys stay far below this
MAX_SENDER = 120
COMMAND_NAME = re.compile(r"^(\d{1,20})-([0-9a-f]{12})\.json$")  # what ``send`` writes: <time_ns>-<id>.json
REJECTED = "rejected"  # control/rejected/: files moved aside, never read again


class Inbox:
    """The trainer's end of control/: one file per command, taken in the order sent. Nothing in the folder is
    trusted: only regular files named as ``send`` names them, of bounded size and depth, read without blocking
    (a FIFO, a device, a directory or a symlink is never opened); anything else is moved to control/rejected/
    and reported once as ``Rejected``."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir) / rundir.CONTROL
        self._stuck: set[str] = set()  # rejected files that could not be moved aside: reported once

    def _entries(self) -> list[os.DirEntry]:
        try:
            with os.scandir(self.dir) as it:
                return sorted((e for e in it if not e.name.startswith(".") and e.name not in (REJECTED, *self._stuck)),
                              key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return []

    def clear(self, before: float) -> None:
        """Drop the commands a dead owner left (sent before ``before``); other files wait for ``take``."""
        for e in self._entries():
            m = COMMAND_NAME.match(e.name)
            if m and int(m.group(1)) < before * 1e9 and e.is_file(follow_symlinks=False):
                Path(e.path).unlink(missing_ok=True)

    def take(self) -> list[Command | Rejected]:
        """Commands waiting, oldest first; a file that is not one comes back as Rejected (and is moved aside)."""
        out: list[Command | Rejected] = []
        for e in self._entries():
            m = COMMAND_NAME.match(e.name)
            if m is None:
                out.append(self._reject(e, "", f"{e.name} is not a command file (commands are sent with "
                                                "nanxi-tune ctl); moved to control/rejected/"))
                continue
            if not e.is_file(follow_symlinks=False):
                out.append(self._reject(e, m.group(2), f"{e.name} is not a regular file; moved to control/rejected/"))
                continue
            try:
                out.append(_read_command(Path(e.path)))
            except _Unreadable as err:
                out.append(Rejected(m.group(2), f"unreadable command {e.name}: {err}"))
            Path(e.path).unlink(missing_ok=True)
        return out

    def _reject(self, entry: os.DirEntry, id_: str, problem: str) -> Rejected:
        aside = self.dir / REJECTED
        try:
            aside.mkdir(exist_ok=True)
            os.replace(entry.path, aside / f"{time.time_ns()}-{entry.name}")
        except OSError:  # cannot move it (permissions): left where it is, and not reported again
            self._stuck.add(entry.name)
            problem = problem.replace("moved to control/rejected/", "left in place (it cannot be moved)")
        return Rejected(id_, problem)


class _Unreadable(ValueError):
    pass


def _read_command(path: Path) -> Command:
    """One command file: opened without following links or blocking, at most MAX_COMMAND_BYTES, depth-checked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise _Unreadable(err.strerror or str(err)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unreadable("not a regular file")
        raw = os.read(fd, MAX_COMMAND_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_COMMAND_BYTES:
        raise _Unreadable(f"too large (over {MAX_COMMAND_BYTES // 1024} KiB)")
    try:
        data = json.loads(raw.decode("utf-8"))
        return Command.from_json(data)
    except RecursionError:
        raise _Unreadable("nested too deep") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise _Unreadable(f"{type(err).__name__}: {err}") from None
