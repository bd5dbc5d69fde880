"""Checkpoints: everything that makes resume exact, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1


class CheckpointError(RuntimeError):
    pass


def seed_all(seed: int) -> None:
    """Seed every generator a checkpoint records: python's random, numpy's global one, torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


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
    except BaseException as err:
        full = isinstance(err, (OSError, RuntimeError)) and out_of_space(err, path.parent)  # before tmp is freed
        tmp.unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path.parent)) from err
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def out_of_space(err: BaseException, folder: Path) -> bool:
    """Did ``err`` come from a full disk? PyTorch's zip writer turns ENOSPC into a RuntimeError ("unexpected pos
    …"), keeping the OSError as its context at best: look along the chain, then at the free space left."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        import shutil

        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def peek(path: Path, key: str, default: Any = None) -> Any:
    """One plain value of a checkpoint (tensors memory-mapped, not read); ``default`` if it cannot be loaded."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - missing, partial or refused: the caller decides what that means
        return default
    return ckpt.get(key, default) if isinstance(ckpt, dict) else default


def repair_best(run_dir: Path, state: dict[str, Any], loaded: Path) -> str | None:
    """Make best.pt the checkpoint of the best evaluation that ``state`` (just loaded from ``loaded``) knows of.
    A kill between writing last.pt and linking best.pt leaves best.pt at an older, worse step while last.pt
    records the newer best mAP. Returns a note when best.pt was repaired (or could not be)."""
    from . import rundir

    want = float(state.get("best_map", -1.0))
    if want < 0:
        return None
    best = rundir.best_checkpoint(run_dir)
    have = peek(best, "best_map") if best.exists() else None
    if have is not None and float(have) >= want:
        return None
    step = int(state["step"])
    vals = [m for m in rundir.read_metrics(run_dir) if m.get("split") == "val" and m.get("step", 0) <= step
            and isinstance(m.get("mAP"), (int, float))]
    match = [m["step"] for m in vals if abs(float(m["mAP"]) - want) <= 1e-12 * max(1.0, abs(want))]
    at = match[-1] if match else step if int(state.get("last_eval_step", -1)) == step else None
    source = loaded if at == step and int(state.get("last_eval_step", -1)) == step else         rundir.ring_checkpoint(run_dir, at) if at is not None else None
    old = f"step {peek(best, 'step')}" if have is not None else "missing"
    if source is None or not Path(source).exists():
        return (f"best.pt is behind (it holds {old}, mAP {have}; the best evaluation reached mAP {want:.4f}) and "
                "the checkpoint of that evaluation is gone; the next better evaluation replaces it")
    link_atomic(Path(source), best)
    return f"best.pt repaired: it was {old} but the best evaluation (mAP {want:.4f}) is step {at}; now step {at}"


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
        raise CheckpointError(refusal(path, err)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a nanxi-tune checkpoint (no format {FORMAT} record in it); "
                              "pick a checkpoint a nanxi-tune run saved")
    return ckpt


def refusal(path: Path, err: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` refused the file, in words: code objects (naming the global,
    with PyTorch's own line), an incomplete or damaged checkpoint, or not a checkpoint at all."""
    text = str(err)
    blocked = next((ln.strip() for ln in text.splitlines()
                    if "GLOBAL" in ln or "Unsupported global" in ln), "")
    name = _global_name(blocked) if blocked else None
    head = b""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as os_err:
        return f"{path}: cannot read it ({os_err.strerror or os_err})"
    if name is None and head != b"PK\x03\x04":
        name = _scan_pickle_globals(path)  # a plain (non-zip) pickle: read its opcodes, run nothing
    if name:
        line = f" PyTorch: {blocked}" if blocked else ""
        return (f"{path}: contains code objects ({name}); refused without running it.{line} Only load checkpoints "
                "saved by nanxi-tune; pick another one (checkpoints/step-*.pt, best.pt) or start a new run")
    if head == b"PK\x03\x04":
        return (f"{path}: an incomplete or damaged checkpoint ({type(err).__name__}: {text.splitlines()[0][:300]}); "
                "pick another one (checkpoints/step-*.pt, best.pt) or start a new run")
    return (f"{path}: this file is not a nanxi-tune checkpoint (not a PyTorch checkpoint archive); "
            "pick a checkpoint a nanxi-tune run saved")


def _global_name(line: str) -> str | None:
    import re

    m = re.search(r"GLOBAL\s+([\w.]+)", line) or re.search(r"global[:\s]+([\w.]+)", line)
    return m.group(1) if m else None


def _scan_pickle_globals(path: Path, limit: int = 1 << 26) -> str | None:
    """The first global a plain pickle would import (module.name), read from its opcodes; None for a file that is
    not a pickle or imports nothing."""
    import pickletools

    try:
        with open(path, "rb") as f:
            data = f.read(limit)
        strings: list[str] = []
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                return arg.replace(" ", ".")
            if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
            elif op.name == "STOP":
                break
    except Exception:  # noqa: BLE001 - not a pickle at all
        return None
    return None
