"""Pinned rewind checkpoints: the checkpoint a finding's remedy rewinds to, kept outside the rotating ring.

The trainer keeps only the newest ``train.keep_checkpoints`` ring files (checkpoints/step-N.pt); a finding
whose evidence began earlier would rewind to a file the ring has since removed. When a finding fires, the
trainer pins the newest checkpoint at or before its ``resume_from_step``: a hard link (a copy where links
fail) in checkpoints/pinned/, recorded per rule in checkpoints/pinned/pins.json. The ring never looks there.
A pin lasts until its finding is applied (engine.workflows.remedy.apply), dismissed (engine.workflows.remedy.dismiss) or replaced
by the same rule firing again; an applied or dismissed finding's file goes when no other pin shares it.

No torch here: the TUI reads pins cheaply.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..run import rundir
from ..files import write_atomic

PINNED = "pinned"
INDEX = "pins.json"
_STEP = re.compile(r"step-(\d+)\.pt$")


def pinned_dir(run_dir: Path) -> Path:
    return Path(run_dir) / rundir.CHECKPOINTS / PINNED


def step_of(path: Path) -> int:
    m = _STEP.search(Path(path).name)
    if not m:
        raise ValueError(f"{path}: not a step-N.pt checkpoint")
    return int(m.group(1))


def read(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{rule: {"step": pinned checkpoint step or None, "asked": the remedy's resume_from_step}}."""
    try:
        data = json.loads((pinned_dir(run_dir) / INDEX).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(run_dir: Path, pins: dict[str, dict[str, Any]]) -> None:
    d = pinned_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_atomic(d / INDEX, json.dumps(pins, indent=1, sort_keys=True))


def candidates(run_dir: Path) -> list[tuple[int, Path]]:
    """Every rewind checkpoint on disk, ring and pinned, as (step, path), oldest first (a pinned file first
    at equal steps: it is the one that stays)."""
    out = [(step_of(p), 0, p) for p in pinned_dir(run_dir).glob("step-*.pt")]
    out += [(step_of(p), 1, p) for p in rundir.ring_checkpoints(run_dir)]
    return [(s, p) for s, _, p in sorted(out)]


def newest_at_or_before(run_dir: Path, step: int) -> tuple[int, Path] | None:
    best = None
    for s, p in candidates(run_dir):
        if s <= step and (best is None or s > best[0]):
            best = (s, p)
    return best


def pin(run_dir: Path, rule: str, step: int) -> int | None:
    """Pin the newest checkpoint at or before ``step`` for ``rule`` (replacing the rule's earlier pin).
    Returns the pinned step, or None when no checkpoint at or before ``step`` exists (recorded too, so the
    remedy can say it starts from step 0 instead of doing so silently)."""
    run_dir = Path(run_dir)
    found = newest_at_or_before(run_dir, step)
    pins = read(run_dir)
    if found is not None:
        s, src = found
        dst = pinned_dir(run_dir) / src.name
        if src != dst:
            dst.parent.mkdir(parents=True, exist_ok=True)
            from ..run.checkpoint import link_atomic

            link_atomic(src, dst)
    pins[rule] = {"step": found[0] if found else None, "asked": int(step)}
    _write(run_dir, pins)
    _collect(run_dir, pins)
    return found[0] if found else None


def pinned(run_dir: Path, rule: str) -> Path | None:
    """The checkpoint pinned for ``rule``, if it is still there."""
    entry = read(run_dir).get(rule)
    if not entry or entry.get("step") is None:
        return None
    path = pinned_dir(run_dir) / rundir.ring_checkpoint(run_dir, int(entry["step"])).name
    return path if path.exists() else None


def release(run_dir: Path, rule: str | None = None) -> None:
    """Drop ``rule``'s pin (every pin when None) and the files no other pin holds."""
    run_dir = Path(run_dir)
    pins = read(run_dir)
    if not pins and not pinned_dir(run_dir).is_dir():
        return
    pins = {} if rule is None else {k: v for k, v in pins.items() if k != rule}
    _write(run_dir, pins)
    _collect(run_dir, pins)


def _collect(run_dir: Path, pins: dict[str, dict[str, Any]]) -> None:
    keep = {rundir.ring_checkpoint(run_dir, int(v["step"])).name for v in pins.values() if v.get("step") is not None}
    for p in pinned_dir(run_dir).glob("step-*.pt"):
        if p.name not in keep:
            p.unlink(missing_ok=True)


def pin_rewind(run_dir: Path, finding: Any) -> str | None:
    """Keep the checkpoint a finding's remedy rewinds to outside the ring until the finding is applied or
    dismissed; the remedy records the pinned step (None: none was left, the child starts at 0). Returns what went
    wrong, if anything."""
    rem = finding.remedy
    if rem.get("resume_from_step") is None or not rem.get("set"):
        return None
    try:
        rem["checkpoint_step"] = pin(run_dir, finding.rule, int(rem["resume_from_step"]))
    except OSError as err:
        return f"could not pin the rewind checkpoint of {finding.rule}: {err}"
    return None
