"""Why a run failed, as data: the message and what to do, from the exception alone (a pure function).

The trainer records it as an Error event; whether an emergency checkpoint is worth trying and whether the
traceback goes to the record are part of the answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import config as C
from ..data.dataset import DataError
from ..files import RecordError
from ..model.state_file import WeightsError
from ..run.checkpoint import CheckpointError
from ..run.stop import StopRun

RESUME = "resume from the last checkpoint"


@dataclass(frozen=True)
class Failure:
    error: str  # what broke, one line where it can be
    hint: str  # what to do
    save_weights: bool = False  # the weights in memory may be newer than the last checkpoint: try to keep them
    traceback: bool = False  # unexpected: the traceback belongs in the record


def classify(err: Exception, cfg: C.Config, device: object = "?") -> Failure:
    """The failure ``err`` means for a run of ``cfg`` on ``device``."""
    if isinstance(err, (StopRun, WeightsError)):  # their message names the cause and the fix
        return Failure(str(err).split("\n")[0], str(err))
    if isinstance(err, CheckpointError):  # the message names the file and why: it is the error
        return Failure(str(err), "copy a good checkpoint of this run (checkpoints/step-*.pt or best.pt) over "
                       "checkpoints/last.pt and resume, or start a new run")
    if isinstance(err, DataError):  # names the file and the fix; not a crash, so no traceback
        msg = str(err)
        if "Original Traceback" in msg:  # re-raised from a loader worker: keep the worker's own message
            msg = msg.rstrip().rsplit("DataError: ", 1)[-1]
        if "no such file or folder" in msg:  # a missing path, not a bad item
            return Failure(msg, "paths in presets and --set are relative to the folder nanxi-tune runs in: run it "
                           "from the folder they are relative to, or give absolute paths (--set data.train=PATH "
                           "data.val=PATH)", save_weights=True)
        return Failure(msg, "fix the data as the message says (or set data.skip_bad = true to skip bad items with "
                       "a warning), then resume", save_weights=True)
    if isinstance(err, RecordError):  # a full disk under the record: the weights in memory first
        return Failure(str(err), "free disk space, then resume", save_weights=True)
    if (isinstance(err, (torch.OutOfMemoryError, MemoryError))
            or "can't allocate memory" in str(err)):
        return Failure("out of memory", oom_hint(cfg, device), save_weights=True)
    what = f"{type(err).__name__}: {err}"
    return Failure(what, "see the traceback in events.jsonl; fix the cause and " + RESUME, save_weights=True,
                   traceback=True)


def oom_hint(cfg: C.Config, device: object) -> str:
    bs = cfg.data.batch_size
    return (f"out of memory with data.batch_size = {bs} at preprocess.input_size = {cfg.preprocess.input_size} on "
            f"{device}; try data.batch_size = {max(1, bs // 2)} (lr follows by linear scaling) or a smaller "
            f"preprocess.input_size, then {RESUME}")
