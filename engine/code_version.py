"""Which code this process runs: a fingerprint of the installed engine and CLI sources, taken when the engine is
first imported. A study's owner compares it with the files on disk before it starts a trial: a trial is a new
process, and after an upgrade under a running study it would train with other code than the study's own."""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOTS = (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "cli")


def fingerprint(roots: tuple[Path, ...] = ROOTS) -> str:
    """12 hex digits over every ``.py`` file under ``roots`` (path and content)."""
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


AT_IMPORT = fingerprint()


def changed() -> str | None:
    """What to tell the user when the code on disk is no longer the code this process runs, else None."""
    now = fingerprint()
    if now == AT_IMPORT:
        return None
    return (f"the installed nanxi-tune changed while this ran (its code {AT_IMPORT}, on disk now {now}): a new "
            "trial would train with other code than the study's own")
