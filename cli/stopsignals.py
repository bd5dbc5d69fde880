"""SIGINT / SIGTERM / SIGHUP for headless runs, installed before anything slow (torch takes seconds to import).

Before a trainer runs, a signal ends the command at once (``StoppedBeforeStart``: the caller removes the run
folder it made if nothing was written, and exits with ExitCode.STOPPED). Once a trainer runs, a signal asks it
to stop: finish the step, write a checkpoint. Standard library only.
"""

from __future__ import annotations

import signal
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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

    def install(self) -> "Guard":
        for s in SIGNALS:
            if signal.getsignal(s) == signal.SIG_IGN:  # nohup ignores SIGHUP: keep ignoring it
                continue
            self._old[s] = signal.signal(s, self._on_signal)
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

    @property
    def installed(self) -> bool:
        return bool(self._old)

    def attach(self, stop: Callable[[], None], say: Callable[[str], None]) -> None:
        """From now on a signal calls ``stop`` (after ``say(name)``) instead of ending the command."""
        self._say, self._stop = say, stop

    def detach(self) -> None:
        self._stop = None

    def _on_signal(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if self._stop is None:
            raise StoppedBeforeStart(name)
        self._say(name)
        self._stop()


GUARD = Guard()
