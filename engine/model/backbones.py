"""Backbones users know: torchvision's classification trunks feeding the notes' SPP neck and head.

A trunk is the model's children without its classifier (avgpool / fc / classifier), the ``features`` or
``trunk_output`` sequences opened one level, run in order. Which outputs the neck takes — the last one at
each stride 4, 8, 16, 32 — and their channels are read from a dummy forward at build time, never from a
table per name. Built with ``weights=None``; ``backbone.weights`` then loads a local state dict file or
a torchvision weights name (downloaded when the machine can).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .state_file import WeightsError, load_checked, read_state

TORCHVISION = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_large", "regnet_y_400mf", "regnet_y_800mf",
               "efficientnet_b0", "convnext_tiny")
CLASSIFIER = ("avgpool", "fc", "classifier")  # ImageNet head: no part of a detector's trunk
STRIDES = (4, 8, 16, 32)
PROBE = 128  # dummy input side: 4×4 at stride 32, enough for every trunk's pooling


class TorchvisionBackbone(nn.Module):
    """``forward(x)`` → {stride: feature} for strides 4, 8, 16, 32; ``channels`` {stride: channels}."""

    def __init__(self, name: str):
        super().__init__()
        import torchvision

        net = torchvision.models.get_model(name, weights=None)
        for attr in CLASSIFIER:
            if hasattr(net, attr):
                delattr(net, attr)
        self.name = name
        self.net = net  # keeps torchvision's parameter names, so its state dicts load as they are
        seq: list[nn.Module] = []
        for child in net.children():
            seq.extend(child.children() if type(child) is nn.Sequential else [child])
        self._seq = seq  # plain list: the same modules, registered once (under net)
        self._taps, self.channels = self._probe()
        self._last = max(self._taps)

    @torch.no_grad()
    def _probe(self) -> tuple[dict[int, int], dict[int, int]]:
        was = self.training
        self.eval()  # a dummy batch must not touch BatchNorm's running statistics
        x = torch.zeros(1, 3, PROBE, PROBE)
        at: dict[int, tuple[int, int]] = {}
        for i, m in enumerate(self._seq):
            x = m(x)
            s = PROBE // x.shape[-1]
            if s in STRIDES:
                at[s] = (i, x.shape[1])  # the last module at a stride wins
        self.train(was)
        missing = [s for s in STRIDES if s not in at]
        if missing:
            raise ValueError(f"backbone.name = {self.name!r}: no feature at stride {missing} (found "
                             f"{sorted(at)}); pick another backbone")
        return {i: s for s, (i, _) in at.items()}, {s: c for s, (_, c) in sorted(at.items())}

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        feats = {}
        for i, m in enumerate(self._seq[:self._last + 1]):
            x = m(x)
            if i in self._taps:
                feats[self._taps[i]] = x
        return feats


# --- backbone.weights --------------------------------------------------------------------------

def _fix(name: str) -> str:
    if name in TORCHVISION:
        return (f"give backbone.weights a state dict saved with torch.save(torchvision.models.{name}()"
                ".state_dict(), path), a torchvision weights name such as IMAGENET1K_V1, or leave it empty to "
                "train from scratch")
    return ("give backbone.weights a checkpoint of a run with the same backbone settings, or leave it empty to "
            "train from scratch")


def _is_weights_name(spec: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", spec))


def _named(spec: str, name: str) -> dict[str, torch.Tensor]:
    import torchvision

    if name not in TORCHVISION:
        raise WeightsError(f"backbone.weights = {spec!r}: no file of that name, and named torchvision weights "
                           f"exist only for torchvision backbones (backbone.name = {name!r}); give a file path")
    enum = torchvision.models.get_model_weights(name)
    try:
        weights = enum[spec]
    except KeyError:
        raise WeightsError(f"backbone.weights = {spec!r}: no file of that name, and {name} has no such torchvision "
                           f"weights (it has: {', '.join(w.name for w in enum)}, DEFAULT)") from None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # noqa: BLE001 - offline, proxy, bad hash: all mean "bring the file yourself"
        raise WeightsError(f"backbone.weights = {spec!r}: could not download {weights.url} ({err}); download it "
                           "where the network allows and set backbone.weights to the file's path") from None


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Drop a wrapper's prefix (DataParallel's module., a detector checkpoint's backbone[.net].)."""
    for p in prefixes:
        if any(k.startswith(p) for k in state):
            state = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
    return state


def load_weights(module: nn.Module, spec: str, name: str, prefix: str) -> str:
    """Load ``spec`` into ``module`` (the backbone's named parameters); returns where they came from.

    ``prefix`` is the module's place in a Detector (``backbone.net.`` / ``backbone.``), so a detector
    checkpoint's model works too. Classifier layers in the file are ignored; anything else must match.
    """
    path = Path(spec).expanduser()
    if path.is_file() or not _is_weights_name(spec):
        state, source = read_state(path, "backbone.weights", _fix(name), ("model", "state_dict")), str(path)
    else:
        state, source = _named(spec, name), f"torchvision {name} {spec}"
    state = _strip(state, ("module.", prefix))
    state = {k: v for k, v in state.items() if k.split(".")[0] not in CLASSIFIER}
    load_checked(module, state, source, f"backbone.name = {name!r}",
                 _fix(name) + ", or set backbone.name to the model the file was saved from")
    return source
