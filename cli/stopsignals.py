"""SIGINT / SIGTERM / SIGHUP for headless runs, installed before anything slow (torch takes seconds to import).

Before a trainer runs, a signal ends the command at once (``StoppedBeforeStart``: the caller removes the run
folder it made if nothing was written, and exits with ExitCode.STOPPED). Once a trainer runs, a signal asks it
to stop: finish the step, write a checkpoint. Standard library only.

A signal that lands while Python imports a module is held until the import ends: numpy and torch wrap parts of
their imports in bare ``except``, which would swallow the exception and leave the library half-made. A short
SIGALRM poll raises it once no import is on the stack, and ``attach`` raises a held one before a trainer runs.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_S = 0.02  # how often a held stop looks whether the import it landed in has ended


def importing(frame: FrameType | None) -> bool:
    """Whether the import machinery is on the stack below ``frame``."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class StoppedBeforeStart(BaseException):
    """A stop signal arrived before training started (BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Guard:
    def __init__(self) -> None:
        self.received: list[str] = []
        self._stop: Callable[[], None] | None = None
        self._say: Callable[[str], None] = lambda name: None
        self._old: dict[int, object] = {}
        self._held: str | None = None  # a stop that landed inside an import, not yet raised

    def install(self) -> "Guard":
        for s in SIGNALS:
            if signal.getsignal(s) == signal.SIG_IGN:  # nohup ignores SIGHUP: keep ignoring it
                continue
            self._old[s] = signal.signal(s, self._on_signal)
        return self

    def restore(self) -> str | None:
        """Put the old handlers back; returns a stop still held from an import (the caller's to honour)."""
        if signal.SIGALRM in self._old:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
        held, self._held = self._held, None
        return held

    @property
    def installed(self) -> bool:
        return bool(self._old)

    def attach(self, stop: Callable[[], None], say: Callable[[str], None]) -> None:
        """From now on a signal calls ``stop`` (after ``say(name)``) instead of ending the command. Raises
        StoppedBeforeStart if a stop is held from an import: the trainer must not start."""
        if self._held is not None:
            raise StoppedBeforeStart(self._cancel_poll())
        self._say, self._stop = say, stop

    def detach(self) -> None:
        self._stop = None

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if self._stop is not None:
            self._say(name)
            self._stop()
        elif importing(frame):
            self._hold(name)
        else:
            raise StoppedBeforeStart(name)

    def _hold(self, name: str) -> None:
        if self._held is None:
            self._held = name
            if signal.SIGALRM not in self._old:
                self._old[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_poll)
            signal.setitimer(signal.ITIMER_REAL, POLL_S, POLL_S)

    def _on_poll(self, _signum, frame) -> None:
        if self._held is None or importing(frame):
            return
        raise StoppedBeforeStart(self._cancel_poll())  # attach() raises a held stop: no trainer runs yet

    def _cancel_poll(self) -> str:
        signal.setitimer(signal.ITIMER_REAL, 0)
        name, self._held = self._held, None
        return name


GUARD = Guard()
