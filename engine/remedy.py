"""Apply a finding's remedy: rewind to the checkpoint before the evidence, change the config, go on as a child run.

The child is a new run directory that records its parent and the finding that caused it. When every
changed key is live, the child starts from the parent's ring checkpoint at or before
``remedy.resume_from_step`` (weights, optimiser, EMA, RNG — the run continues, only the config differs);
otherwise it starts from scratch with the new config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt_io
from . import config as C
from . import rundir


class RemedyError(ValueError):
    pass


def pick_checkpoint(run_dir: Path, step: int | None) -> Path | None:
    """The newest ring checkpoint at or before ``step`` (last.pt when step is None)."""
    if step is None:
        last = rundir.last_checkpoint(run_dir)
        return last if last.exists() else None
    best = None
    for path in rundir.ring_checkpoints(run_dir):
        if int(path.stem.split("-")[1]) <= step:
            best = path
    return best


def apply(run_dir: Path, finding: dict[str, Any], root: Path | None = None) -> Path:
    """Create the child run for ``finding`` (a Diagnosis event as a dict) and return its directory.

    Resume it with ``Trainer.resume(child)`` when it holds a checkpoint, else ``Trainer(cfg, child)``.
    """
    run_dir = Path(run_dir)
    remedy = finding.get("remedy") or {}
    changes = remedy.get("set") or {}
    if not changes:
        raise RemedyError(f"{finding.get('rule')}: this finding has no config change to apply "
                          f"({remedy.get('text') or 'see its message'})")
    cfg = C.with_updates(C.load(run_dir / rundir.CONFIG), changes, f"remedy {finding.get('rule')}")
    rewind = all(C.is_live(k) for k in changes)
    source = pick_checkpoint(run_dir, remedy.get("resume_from_step")) if rewind else None
    child = rundir.new_run_dir(root or run_dir.parent, f"{run_dir.name}-{finding.get('rule', 'remedy')}")
    C.save(cfg, child / rundir.CONFIG)
    step = 0
    if source is not None:
        step = int(ckpt_io.load(source)["step"])
        (child / rundir.CHECKPOINTS).mkdir()
        shutil.copyfile(source, rundir.last_checkpoint(child))
        with open(child / rundir.METRICS, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(m) + "\n" for m in rundir.read_metrics(run_dir) if m.get("step", 0) <= step)
    with open(child / rundir.EVENTS, "w", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "log", "level": "info", "parent": str(run_dir), "reason": finding.get("rule"),
                            "message": f"child of {run_dir.name} for {finding.get('rule')}: "
                                       f"{', '.join(f'{k} = {v}' for k, v in changes.items())}, "
                                       + (f"from its step {step}" if source else "from scratch"),
                            "finding": finding, "from_step": step}) + "\n")
    return child


def has_checkpoint(run_dir: Path) -> bool:
    return rundir.last_checkpoint(run_dir).exists()
