"""``train.init_from``: a run starts from every layer of another run's detector (backbone, neck and head), not
from random weights — its optimizer, step and lr schedule start fresh. The autopilot's final run starts from its
search's best trial this way; ``backbone.weights`` loads a backbone alone."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .state_file import load_checked, read_state

_FIX = ("give train.init_from a run folder or its checkpoint (RUN/checkpoints/last.pt) from a run with the same "
        "backbone, neck, head and classes, or leave it empty to train from scratch")


def checkpoint_of(spec: str) -> Path:
    """A run folder means its last checkpoint."""
    path = Path(spec).expanduser()
    return path / "checkpoints" / "last.pt" if path.is_dir() else path


def load_detector(model: nn.Module, spec: str) -> str:
    """Load ``spec`` (a run folder, a checkpoint or a state dict file) into every layer of ``model``: a checkpoint's
    EMA weights (the ones its evaluations scored), else its model, else the file as a state dict."""
    path = checkpoint_of(spec)
    state = read_state(path, "train.init_from", _FIX, ("ema", "model"))
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}  # the EMA's wrapper
    load_checked(model, state, str(path), "this config's detector", _FIX)
    return str(path)
