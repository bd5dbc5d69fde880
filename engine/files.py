"""Writing a file so that a failure loses nothing: one atomic text write, and the error that names the file.

At the bottom of the engine: config, the run folder and the record all write through it."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class RecordError(OSError):
    """The run's record could not be written (a full disk): names the file and what to do."""

    def __init__(self, code: int | None, path: Path, cause: OSError):
        full = code in (errno.ENOSPC, errno.EDQUOT)
        what = f"no space left on the disk of {path}" if full else f"could not write {path} ({cause.strerror or cause})"
        super().__init__(code, what)
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def write_atomic(path: Path | str, text: str, fsync: bool = False) -> Path:
    """``text`` to ``path`` through a temp file and a rename: readers see the old file or the new one, and a failed
    write (a full disk) leaves neither a torn file nor a temp file behind. Raises the OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path
