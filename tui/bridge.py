"""The seam between a run and the UI: the trainer's callback, with back-pressure.

The callback runs in the training thread. ``RunBridge`` only appends the event to a buffer under a lock and posts
at most one ``RunUpdate`` message at a time (and at most one per ``min_interval`` for step metrics), so the UI
never queues more than it paints. The UI drains the buffer when the message arrives (and on a slow timer, so the
last points of a burst are never stranded).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from textual.message import Message

from nanxi_tune.engine.run.events import EvalMetrics, StepMetrics


class RunUpdate(Message):
    """New events are waiting in the bridge."""

    def __init__(self, bridge: "RunBridge") -> None:
        super().__init__()
        self.bridge = bridge


class RunBridge:
    """The trainer callback: buffer events, post one coalesced message at a time."""

    def __init__(self, target: Any, min_interval: float = 0.25, max_buffer: int = 1024) -> None:
        self.target = target
        self.min_interval = min_interval
        self.max_buffer = max_buffer  # back-pressure: a trainer outrunning the UI gets its steps thinned
        self._lock = threading.Lock()
        self._train: list[Any] = []
        self._val: list[Any] = []
        self._other: list[Any] = []
        self._posted = False
        self._last_post = 0.0
        self.events = 0

    def __call__(self, event: Any) -> None:
        step = isinstance(event, StepMetrics)
        with self._lock:
            self.events += 1
            if step:
                self._train.append(event)
                if len(self._train) > self.max_buffer:  # keep the newest and every other one before it
                    self._train = self._train[::-2][::-1]
            elif isinstance(event, EvalMetrics):
                self._val.append(event)
            else:
                self._other.append(event)
            if self._posted:
                return
            now = time.monotonic()
            if step and now - self._last_post < self.min_interval:
                return
            self._posted = True
            self._last_post = now
        self.target.post_message(RunUpdate(self))

    def drain(self) -> tuple[list[Any], list[Any], list[Any]]:
        with self._lock:
            out = self._train, self._val, self._other
            self._train, self._val, self._other = [], [], []
            self._posted = False
            return out
