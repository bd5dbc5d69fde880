"""Where a remedy starts from: the checkpoint at or before the step its finding names (the one the trainer pinned,
else the newest ring checkpoint at or before it), and the errors of a remedy that cannot start or was stopped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config as C
from ..diagnosis import pins
from ..run import rundir


class RemedyError(ValueError):
    pass


class RemedyStopped(RemedyError):
    """A stop (``nanxi-tune ctl CHILD stop``, the TUI's F7) ended the trial descent: nothing was applied."""


def pick_checkpoint(run_dir: Path, step: int | None) -> Path | None:
    """The newest rewind checkpoint (pinned or ring) at or before ``step`` (last.pt when step is None)."""
    if step is None:
        last = rundir.last_checkpoint(run_dir)
        return last if last.exists() else None
    found = pins.newest_at_or_before(Path(run_dir), int(step))
    return found[1] if found else None


@dataclass
class Rewind:
    step: int  # the step the child starts from (0: from scratch)
    source: Path | None  # the checkpoint it starts from (None: from scratch)
    note: str  # how the child starts, in words


def rewind_point(run_dir: Path, finding: dict[str, Any], allow_scratch: bool = False) -> Rewind:
    """Where ``finding``'s child starts. Raises RemedyError rather than start from scratch unannounced."""
    run_dir = Path(run_dir)
    rem = finding.get("remedy") or {}
    changes = rem.get("set") or {}
    if not all(C.is_live(k) for k in changes):
        fixed = ", ".join(k for k in changes if not C.is_live(k))
        return Rewind(0, None, f"from scratch: {fixed} cannot change in a running run")
    asked = rem.get("resume_from_step")
    if asked is None:
        last = rundir.last_checkpoint(run_dir)
        if last.exists():
            return Rewind(checkpoint_step(last), last, f"from its last checkpoint (step {checkpoint_step(last)})")
        return Rewind(0, None, "from scratch: the run saved no checkpoint")
    asked = int(asked)
    entry = pins.read(run_dir).get(str(finding.get("rule")))
    held = pins.pinned(run_dir, str(finding.get("rule"))) if entry and entry.get("asked") == asked else None
    if held is not None:
        s = pins.step_of(held)
        return Rewind(s, held, f"from its step {s} (pinned for this finding)")
    path = pick_checkpoint(run_dir, asked)
    if path is not None:
        s = pins.step_of(path)
        return Rewind(s, path, f"from its step {s}")
    if asked == 0:
        return Rewind(0, None, "from step 0 (the evidence starts at the first steps)")
    if "checkpoint_step" in rem and rem["checkpoint_step"] is None:
        return Rewind(0, None, f"from step 0: no checkpoint at or before step {asked} was left when the finding "
                               "fired")
    if allow_scratch:
        return Rewind(0, None, f"from step 0, as asked: no checkpoint at or before step {asked} is left")
    keep = _keep(run_dir)
    raise RemedyError(f"{finding.get('rule')}: the remedy resumes from step {asked}, but no checkpoint at or before "
                      f"it is left in {run_dir / rundir.CHECKPOINTS} (the ring keeps the newest {keep}, and this "
                      f"finding was not pinned); apply it from scratch instead (nanxi-tune remedy --from-scratch)")


def checkpoint_step(path: Path) -> int:
    from ..run import checkpoint as ckpt_io

    return int(ckpt_io.peek(path, "step", 0))


def _keep(run_dir: Path) -> int | str:
    try:
        return C.load(run_dir / rundir.CONFIG).train.keep_checkpoints
    except Exception:  # noqa: BLE001 - only for the message
        return "few"
