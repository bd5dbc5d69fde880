"""The runs of a runs folder as they stand now: each run's state, best mAP, step and preset, a study as a row of
its own (``nanxi-tune ctl`` lists, the Runs tab). A run's history in the notes' style is engine.workflows.records."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from . import rundir
from .events import RunState
from .runctl import RunStatus, status


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    status: RunStatus
    best_map: float | None
    started: float | None
    step: int
    preset: str


def run_info(run_dir: Path | str) -> RunInfo:
    run_dir = Path(run_dir)
    metrics = rundir.read_metrics(run_dir)
    events = rundir.read_events(run_dir)
    maps = [m["mAP"] for m in metrics if m.get("split") == "val" and isinstance(m.get("mAP"), (int, float))]
    started = next((e.get("time") for e in events if e.get("kind") == "state"), None)
    preset = ""
    try:
        import tomllib

        preset = tomllib.loads((run_dir / rundir.CONFIG).read_text()).get("preset", "")
    except (OSError, ValueError):
        pass
    st = status(run_dir, rundir.state_of(events))
    step = max(st.step, max((m.get("step", 0) for m in metrics), default=0))
    return RunInfo(run_dir.name, run_dir, st, max(maps) if maps else None, started, step, preset)


def study_info(folder: Path, trials: list[RunInfo]) -> RunInfo:
    """A study as a row of the runs index: its owner's state, the best mAP of its trials, step = trials done."""
    try:
        started, preset = float(json.loads((folder / rundir.STUDY).read_text(encoding="utf-8"))["created"]), "study"
    except (OSError, ValueError, KeyError, TypeError):
        started, preset = None, "study?"
    maps = [t.best_map for t in trials if t.best_map is not None]
    done = sum(t.status.state in (RunState.FINISHED, RunState.FAILED) for t in trials)
    return RunInfo(folder.name, folder, status(folder), max(maps) if maps else None, started, done, preset)


def autopilot_info(folder: Path, runs: list[RunInfo]) -> RunInfo:
    """An autopilot as a row: its owner's state, its val mAP once scored (else its final run's best so far, on
    QMV), step = rounds done."""
    scored = None
    try:
        d = json.loads((folder / rundir.AUTOPILOT).read_text(encoding="utf-8"))
        started, preset = float(d["spec"]["created"]), "autopilot"
        done = sum(r["status"] in ("done", "skipped") for r in d["rounds"])
        scored = (d.get("final") or {}).get("mAP")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        started, preset, done = None, "autopilot?", 0
    final = [r.best_map for r in runs if r.name.endswith("/final") and r.best_map is not None]
    best = float(scored) if isinstance(scored, (int, float)) else final[0] if final else None
    return RunInfo(folder.name, folder, status(folder), best, started, done, preset)


def list_runs(root: Path | str = Path("runs")) -> list[RunInfo]:
    """Every run folder under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for p in root.iterdir():
        if (p / rundir.CONFIG).exists():
            runs.append(run_info(p))
        elif p.is_dir():  # a folder of runs (a study's trials): listed as folder/run, the study as a row of its own
            trials = [replace(run_info(q), name=f"{p.name}/{q.name}") for q in p.iterdir()
                      if (q / rundir.CONFIG).exists()]
            runs += trials
            if (p / rundir.STUDY).is_file():
                runs.append(study_info(p, trials))
            elif (p / rundir.AUTOPILOT).is_file():
                runs.append(autopilot_info(p, trials))
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)
