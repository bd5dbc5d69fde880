"""Run control: one owner per run folder (an OS lock and a heartbeat) and the typed command channel.

The trainer owns its run folder for its whole life: it holds an exclusive ``flock`` on owner.lock (the
OS drops it when the process dies, so a dead owner's lock is simply taken over, never waited on) and
rewrites owner.json with a heartbeat every ``HEARTBEAT_S`` from a thread of its own, so a long
evaluation never looks like a dead run. Every other process is a client: ``status`` tells a live run
from a dead one; ``send`` drops one JSON file per command into control/, which the trainer applies at
its next step boundary and answers with an ``ack`` event in events.jsonl (``wait_ack``). The engine owns
both ends: the TUI and the CLI call these functions and never touch the files themselves.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import access, rundir
from .control import Command, Inbox, Op  # runctl.Op and runctl.Command too, for clients
from .events import RunState  # runctl.RunState too, for clients
from ..files import write_atomic

HEARTBEAT_S = 2.0  # owner.json is rewritten at least this often
STALE_S = 15.0  # a heartbeat older than this from another host means a dead owner
POLL_S = 0.05  # how often a client looks for its acknowledgement


@dataclass(frozen=True)
class OwnerInfo:
    pid: int
    host: str
    started: float
    heartbeat: float
    state: str = "starting"
    step: int = 0

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, since {since}"


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    alive: bool
    owner: OwnerInfo | None
    step: int


class RunBusy(RuntimeError):
    """Another live trainer owns the folder: attach to it instead of starting a second writer."""

    def __init__(self, run_dir: Path, owner: OwnerInfo | None, holders: list[int] | None = None):
        self.run_dir, self.owner = Path(run_dir), owner
        who = owner.describe() if owner else "another process"
        if holders and (owner is None or (owner.here and owner.pid not in holders)):
            # not the run's trainer: something else holds the lock (a stray `flock`, a backup tool…)
            pids = ", ".join(f"pid {p}{_cmdline(p)}" for p in holders)
            super().__init__(f"{run_dir}/{rundir.OWNER_LOCK} is held by {pids}, which is not this run's trainer"
                             + (f" ({who} is gone)" if owner else "") + "; end that process, then resume")
            return
        super().__init__(f"{run_dir} is being trained by a live process ({who}); a second trainer would corrupt "
                         f"it. Attach instead: nanxi-tune open {run_dir}  (or: nanxi-tune ctl {run_dir} status)")


def lock_holders(path: Path) -> list[int]:
    """The pids holding a flock on ``path`` (from /proc/locks; empty where there is none)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[4] == "->":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            if (int(inode), int(major, 16), int(minor, 16)) == (st.st_ino, os.major(st.st_dev), os.minor(st.st_dev)):
                out.append(int(parts[4]))
        except ValueError:
            continue
    return sorted(set(out) - {os.getpid()})


def _cmdline(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return f" ({' '.join(w.decode(errors='replace') for w in words if w)[:60]})"
    except OSError:
        return ""


class NotAlive(RuntimeError):
    """A command sent to a run with no live trainer."""


def sender_name(role: str) -> str:
    return f"{role} pid {os.getpid()}@{socket.gethostname()}"


# --- the owner's side ---------------------------------------------------------------------------

class RunOwner:
    """Held by the trainer for its whole life: the lock, owner.json and its heartbeat thread."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self._fd = Path(run_dir), fd
        self.info = OwnerInfo(os.getpid(), socket.gethostname(), time.time(), time.time())
        self._lock = threading.Lock()
        self._quit = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._beat, name="nanxi-heartbeat", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, run_dir: Path | str) -> "RunOwner":
        """Own ``run_dir`` or raise RunBusy naming the live owner. Stale commands of a dead owner are dropped."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        access.secure(run_dir)  # private, or shared with the group (engine.run.access)
        fd = os.open(run_dir / rundir.OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o660)
        for _ in range(20):  # a client's liveness probe holds a shared lock for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                time.sleep(0.02)
        else:
            os.close(fd)
            raise RunBusy(run_dir, read_owner(run_dir), lock_holders(run_dir / rundir.OWNER_LOCK))
        owner = cls(run_dir, fd)
        control = run_dir / rundir.CONTROL  # made by the owner, with the folder's mode: clients only drop files in
        control.mkdir(exist_ok=True)
        access.secure(control)
        Inbox(run_dir).clear(before=owner.info.started)
        return owner

    def update(self, state: str | None = None, step: int | None = None) -> None:
        with self._lock:
            changes = {k: v for k, v in (("state", state), ("step", step)) if v is not None}
            self.info = OwnerInfo(**{**self.info.__dict__, **changes})
        if state is not None:
            self._write()

    def _write(self) -> None:
        with self._lock:
            self.info = OwnerInfo(**{**self.info.__dict__, "heartbeat": time.time()})
            data = dict(self.info.__dict__)
        try:
            write_atomic(self.run_dir / rundir.OWNER, json.dumps(data))
        except OSError:  # a full disk must not kill the run from the heartbeat thread
            pass

    def _beat(self) -> None:
        while not self._quit.wait(HEARTBEAT_S):
            self._write()

    def release(self) -> None:
        self._quit.set()
        self._thread.join(timeout=5)
        self._write()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)


class Follower:
    """What a data-parallel rank other than 0 holds instead of RunOwner: rank 0 owns and writes the folder."""

    def update(self, state: str | None = None, step: int | None = None) -> None:
        pass

    def release(self) -> None:
        pass


def start_detached(argv: list[str], log: Path | str) -> subprocess.Popen:
    """``nanxi-tune ARGV`` as its own process in a new session (no terminal: a closed TUI or a dropped SSH session
    never reaches it), its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "nanxi_tune.cli", *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "NANXI_TUNE_DETACHED": "1"})


# --- the clients' side ----------------------------------------------------------------------------

def read_owner(run_dir: Path | str) -> OwnerInfo | None:
    try:
        return OwnerInfo(**json.loads((Path(run_dir) / rundir.OWNER).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _lock_held(run_dir: Path) -> bool:
    try:
        fd = os.open(run_dir / rundir.OWNER_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def status(run_dir: Path | str, recorded: str | None = "") -> RunStatus:
    """Live or dead, and in which state: the owner's own word while it lives, the record after.
    ``recorded``: the last state of events.jsonl when the caller has already read it."""
    run_dir = Path(run_dir)
    owner = read_owner(run_dir)
    if owner is not None and not owner.here:  # flock does not reach across hosts: trust a fresh heartbeat
        alive = time.time() - owner.heartbeat < STALE_S
    else:
        alive = _lock_held(run_dir)
    if alive:  # the owner's word: events.jsonl (long, in a long run) is read only for a run no one owns
        state = RunState(owner.state) if owner and owner.state in RunState._value2member_map_ else RunState.STARTING
        return RunStatus(state, True, owner, owner.step if owner else 0)
    if recorded == "":
        recorded = rundir.recorded_state(run_dir)
    if recorded is None:
        state = RunState.NEW
    else:
        state = RunState(recorded) if recorded in RunState._value2member_map_ else RunState.DEAD
        if state.active:
            state = RunState.DEAD
    return RunStatus(state, False, None, 0)


def send(run_dir: Path | str, op: Op, updates: dict[str, Any] | None = None, sender: str = "") -> Command:
    """Queue a command for the live trainer of ``run_dir``; NotAlive when there is none."""
    run_dir = Path(run_dir)
    st = status(run_dir)
    if not st.alive:
        raise NotAlive(f"{run_dir.name} is {st.state.value}: no live trainer to {op.value} it"
                       + (f"; resume it with: nanxi-tune resume {run_dir}" if st.state != RunState.FINISHED else ""))
    cmd = Command(op, dict(updates or {}), sender or sender_name("client"))
    folder = run_dir / rundir.CONTROL
    folder.mkdir(exist_ok=True)
    tmp = folder / f".{cmd.id}.tmp"
    tmp.write_text(json.dumps(cmd.to_json()), encoding="utf-8")
    os.replace(tmp, folder / f"{time.time_ns()}-{cmd.id}.json")
    return cmd


def events_size(run_dir: Path | str) -> int:
    try:
        return (Path(run_dir) / rundir.EVENTS).stat().st_size
    except FileNotFoundError:
        return 0


def wait_ack(run_dir: Path | str, cmd: Command, timeout: float = 30.0, since: int = 0) -> dict[str, Any] | None:
    """The trainer's answer to ``cmd`` (an ``ack`` line of events.jsonl read from byte ``since``), or None when
    the trainer died or ``timeout`` passed first."""
    run_dir = Path(run_dir)
    tail = rundir.JsonlTail(run_dir / rundir.EVENTS, since)

    def answer() -> dict[str, Any] | None:
        return next((e for e in tail.poll() if e.get("kind") == "ack" and e.get("id") == cmd.id), None)

    deadline = time.monotonic() + timeout
    checked_alive = time.monotonic()
    while time.monotonic() < deadline:
        if (ack := answer()) is not None:
            return ack
        if time.monotonic() - checked_alive > 1.0:
            checked_alive = time.monotonic()
            if not status(run_dir).alive:
                return answer()  # its last words may hold the answer
        time.sleep(POLL_S)
    return None


def request(run_dir: Path | str, op: Op, updates: dict[str, Any] | None = None, sender: str = "",
            timeout: float = 30.0) -> dict[str, Any] | None:
    """send + wait_ack: the ack line, or None (no answer in time / the trainer ended first)."""
    since = events_size(run_dir)
    cmd = send(run_dir, op, updates, sender)
    return wait_ack(run_dir, cmd, timeout, since)
