"""``train.init_from``: a run starts from every layer of another run's detector (backbone, neck and head), not
from random weights — its optimizer, step and lr schedule start fresh. The autopilot's final run starts from its
search's best trial this way; ``backbone.weights`` loads a backbone alone."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .backbones import WeightsError

_FIX = ("give train.init_from a run folder or its checkpoint (RUN/checkpoints/last.pt) from a run with the same "
        "backbone, neck, head and classes, or leave it empty to train from scratch")


def checkpoint_of(spec: str) -> Path:
    """A run folder means its last checkpoint."""
    path = Path(spec).expanduser()
    return path / "checkpoints" / "last.pt" if path.is_dir() else path


def detector_state(path: Path) -> dict[str, torch.Tensor]:
    """The weights a run's evaluations scored (its EMA) from a checkpoint; a plain state dict as it is."""
    if not path.is_file():
        raise WeightsError(f"{path}: train.init_from file not found; " + _FIX)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise WeightsError(f"{path}: cannot read weights from it ({type(err).__name__}: {err}); " + _FIX) from None
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict):
        obj = {k.removeprefix("module."): v for k, v in obj["ema"].items() if k != "n_averaged"}
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a checkpoint or a state dict (a mapping of layer names to tensors); " + _FIX)
    return obj


def load_detector(model: nn.Module, spec: str) -> str:
    """Load ``spec`` (a run folder, a checkpoint or a state dict file) into every layer of ``model``."""
    path = checkpoint_of(spec)
    state = detector_state(path)
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape] + [k for k in state if k not in own]
    if bad:
        k = bad[0]
        why = ("missing from the file" if k not in state else "in the file, not in the model" if k not in own
               else f"shape {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model")
        raise WeightsError(f"{path}: does not fit this config's detector: first mismatching layer {k!r} ({why}; "
                           f"{len(bad)} of {len(own)} layers differ); " + _FIX)
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise WeightsError(f"{path}: layer {nonfinite[0]!r} holds values that are not finite (NaN or inf): the run it "
                           "came from diverged; " + _FIX)
    model.load_state_dict(state)
    return str(path)
