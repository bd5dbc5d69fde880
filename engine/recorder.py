"""The one writer of a run's record: every line of metrics.jsonl / events.jsonl is a typed event appended here.

Step and eval metrics go to metrics.jsonl, every other event to events.jsonl, one JSON line each, flushed per line
so a killed process loses at most the line in flight. The trainer holds a ``Recorder`` for its whole run; writers
outside a trainer (a remedy, tune-post, the TUI session) call ``append``. Nothing else opens, replaces or deletes
these files; readers are engine.rundir's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import rundir
from .events import EvalMetrics, Event, StepMetrics, from_json


class _JsonlWriter:
    """Append-only JSON lines, flushed per line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, allow_nan=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _file_of(event: Event) -> str:
    return rundir.METRICS if isinstance(event, (StepMetrics, EvalMetrics)) else rundir.EVENTS


class Recorder:
    """Appends a run's events to its folder. Each file is opened at its first line."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self._writers: dict[str, _JsonlWriter] = {}

    def record(self, event: Event) -> dict[str, Any]:
        """Append ``event``; returns the line written."""
        name, line = _file_of(event), event.to_json()
        if name not in self._writers:
            self._writers[name] = _JsonlWriter(self.run_dir / name)
        self._writers[name].write(line)
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
