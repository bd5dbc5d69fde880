"""翻转测试 flip test (CenterNet's ``flip_test``, ``postprocess.flip_test``): the detector also sees the mirrored
image; the two heatmaps and shapes are averaged cell by cell once the mirror's are flipped back, the offset is the
image's own (a mirrored sub-pixel offset belongs to another cell). Inference only: twice the forward, no training
change. The input side is a multiple of 32, so every stride's cells mirror onto cells.
"""

from __future__ import annotations

import torch

from . import encoding

LTRB_MIRRORED = [2, 1, 0, 3]  # l, t, r, b of the mirror → the image's: left and right swap


def merge(out: dict[str, torch.Tensor], mirrored: dict[str, torch.Tensor], shape: str) -> dict[str, torch.Tensor]:
    """The image's outputs with the mirror's (flipped back) averaged into map and shape (and quality)."""
    back = mirrored["shape"].flip(-1)
    if shape in encoding.LTRB:
        back = back[:, LTRB_MIRRORED]
    merged = dict(out, map=(out["map"] + mirrored["map"].flip(-1)) / 2, shape=(out["shape"] + back) / 2)
    if "quality" in out:  # head.shape_quality: the box judged from both sides
        merged["quality"] = (out["quality"] + mirrored["quality"].flip(-1)) / 2
    return merged


def mirrored(model, images: torch.Tensor, out: dict[str, torch.Tensor], shape: str) -> dict[str, torch.Tensor]:
    """``out`` (the model's outputs on ``images``, already computed) merged with the mirror's."""
    return merge(out, model(images.flip(-1)), shape)


def infer(model, images: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """The head outputs ``decode`` reads: the model's, merged with its mirror's when ``postprocess.flip_test``."""
    out = model(images)
    return mirrored(model, images, out, cfg.encode.shape) if cfg.postprocess.flip_test else out
