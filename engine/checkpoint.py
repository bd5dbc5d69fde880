"""Checkpoints: everything that makes resume exact, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1


class CheckpointError(RuntimeError):
    pass


def rng_state() -> dict[str, Any]:
    """Every RNG as plain data (no numpy objects: weights_only loading refuses them)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss_v = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_v))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict[str, Any], path: Path) -> Path:
    """Write to a temp file, fsync, rename: a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files (``.NAME.tmp-PID``) left by a process killed mid-write; a live writer's are kept.
    A killed multi-day run would otherwise leave one partial checkpoint on disk per kill. Returns files removed."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # a live process (another writer): not ours to touch
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def link_atomic(src: Path, dst: Path) -> Path:
    """Make ``dst`` the same file as ``src`` (a hard link swapped in by rename; a copy where links fail)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    return dst


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint here; start a new run, or pick a run that saved one")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated file, pickled code, wrong format
        raise CheckpointError(f"{path}: cannot load it safely ({type(err).__name__}: {str(err)[:200]}); "
                              "it may be incomplete or not a nanxi-tune checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a nanxi-tune checkpoint (format {FORMAT})")
    return ckpt
