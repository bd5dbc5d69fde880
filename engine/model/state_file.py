"""Weights from a file, checked before they load: both ways a run starts from saved weights
(``backbone.weights``, ``train.init_from``) read and check them here, each naming its own key and fix."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class WeightsError(ValueError):
    """Saved weights cannot be used; the message names the file (or name), the layer and what to do."""


def read_state(path: Path, key: str, fix: str, wrappers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: the first of ``wrappers`` (a checkpoint's "ema", "model", a training script's
    "state_dict") that the file holds, else the file itself."""
    if not path.is_file():
        raise WeightsError(f"{path}: {key} file not found; " + fix)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise WeightsError(f"{path}: cannot read a state dict from it ({type(err).__name__}: {err}); "
                           + fix) from None
    inner = next((obj[w] for w in wrappers if isinstance(obj, dict) and isinstance(obj.get(w), dict)), obj)
    if not isinstance(inner, dict) or not all(isinstance(v, torch.Tensor) for v in inner.values()):
        raise WeightsError(f"{path}: not a checkpoint or a state dict (a mapping of layer names to tensors); " + fix)
    return inner


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str, fits: str, fix: str) -> None:
    """Load ``state`` into ``module`` only when every layer fits (the first that does not is named, in the
    module's order) and every value is finite."""
    own = module.state_dict()
    bad = [(k, "missing from the file") for k in own if k not in state]
    bad += [(k, f"shape {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model")
            for k, v in own.items() if k in state and state[k].shape != v.shape]
    bad += [(k, "in the file, not in the model") for k in state if k not in own]
    if bad:
        order = {k: i for i, k in enumerate(own)}
        key, why = min(bad, key=lambda b: order.get(b[0], len(order)))
        raise WeightsError(f"{source}: does not fit {fits}: first mismatching layer {key!r} ({why}; {len(bad)} of "
                           f"{len(own)} layers differ); " + fix)
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:  # NaN weights would train into a NaN loss that reads like an lr too large
        raise WeightsError(f"{source}: layer {nonfinite[0]!r} holds values that are not finite (NaN or inf; "
                           f"{len(nonfinite)} layer(s) in all): the file is damaged or was saved from a diverged "
                           "run; " + fix)
    module.load_state_dict(state)
