"""The one writer of a run's record: every line of metrics.jsonl / events.jsonl is a typed event appended here.

Step and eval metrics go to metrics.jsonl, every other event to events.jsonl, one JSON line each, flushed per line
so a killed process loses at most the line in flight. The trainer holds a ``Recorder`` for its whole run; writers
outside a trainer (a remedy, tune-post, the TUI session) call ``append``. Nothing else opens, replaces or deletes
these files; readers are engine.run.rundir's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import rundir
from ..files import RecordError
from .events import EvalMetrics, Event, StepMetrics, from_json


class _JsonlWriter:
    """Append-only JSON lines, one write() a line with no buffer in between: a killed process loses at most the
    line in flight, and a failed write (a full disk) leaves nothing queued to land later."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, allow_nan=True) + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as err:  # a full disk: drop the half line, say which file and what to do
            self._drop_torn_tail()
            raise RecordError(err.errno, self.path, err) from None

    def _drop_torn_tail(self) -> None:
        """After a failed write: cut the file back to its last whole line (a resume would drop it anyway)."""
        try:
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                os.truncate(self.path, raw.rfind(b"\n") + 1)
        except OSError:
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _file_of(event: Event) -> str:
    return rundir.METRICS if isinstance(event, (StepMetrics, EvalMetrics)) else rundir.EVENTS


class Recorder:
    """Appends a run's events to its folder. Each file is opened at its first line."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self._writers: dict[str, _JsonlWriter] = {}
        self.unwritten: list[dict[str, Any]] = []  # metric lines a full disk refused: an emergency checkpoint keeps them

    def record(self, event: Event) -> dict[str, Any]:
        """Append ``event``; returns the line written."""
        name, line = _file_of(event), event.to_json()
        if name not in self._writers:
            self._writers[name] = _JsonlWriter(self.run_dir / name)
        try:
            self._writers[name].write(line)
        except RecordError:
            if name == rundir.METRICS:
                self.unwritten.append(line)
            raise
        return line

    def trim(self, step: int) -> int:
        """Drop metric lines logged after ``step`` (work lost to a crash, redone on resume) and a torn last line;
        later lines go to the new file. Returns the lines dropped."""
        self._close(rundir.METRICS)  # the file may be replaced below: never append to the unlinked old one
        path = self.run_dir / rundir.METRICS
        if not path.exists():
            return 0
        lines = rundir.read_metrics(self.run_dir)
        keep = [m for m in lines if m.get("step", 0) <= step]
        raw = path.read_bytes()
        torn = bool(raw) and not raw.endswith(b"\n")
        if len(keep) == len(lines) and not torn:
            return 0
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(m, allow_nan=True) + "\n" for m in keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return len(lines) - len(keep)

    def reset(self) -> None:
        """Forget the record of a run that starts again from step 0: metrics, events and journal.md go."""
        self.close()
        for name in (rundir.METRICS, rundir.EVENTS, rundir.JOURNAL):
            (self.run_dir / name).unlink(missing_ok=True)

    def copy_metrics(self, src_run_dir: Path | str, up_to_step: int | None = None) -> int:
        """Append ``src_run_dir``'s metric lines (those at or before ``up_to_step``; all when None), as typed
        events: a child run starts with its parent's history. Returns the lines copied."""
        n = 0
        for line in rundir.read_metrics(Path(src_run_dir)):
            event = from_json(line)
            if isinstance(event, (StepMetrics, EvalMetrics)) and (up_to_step is None or event.step <= up_to_step):
                self.record(event)
                n += 1
        return n

    def _close(self, name: str) -> None:
        w = self._writers.pop(name, None)
        if w is not None:
            w.close()

    def close(self) -> None:
        for name in list(self._writers):
            self._close(name)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append(run_dir: Path | str, *events: Event) -> None:
    """Append ``events`` to a run's record in one go (writers outside a trainer: remedy, tune-post, the TUI)."""
    with Recorder(run_dir) as rec:
        for event in events:
            rec.record(event)
