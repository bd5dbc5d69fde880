"""编码 encode: how a box becomes regression targets at its centre cell, and back.

One place for both directions, so targets (training) and decode (inference) cannot drift.
All tensors are in output-map cells (input pixels / out_stride) unless named ``*_px``.
"""

from __future__ import annotations

import torch

LOG_EPS = 1e-3
LTRB = ("ltrb", "ltrb_dfl")  # the encodings whose shape is the four edge distances
DFL_BIN_PX = 16  # ltrb_dfl: one bin per 16 input pixels


def shape_channels(shape: str) -> int:
    """Channels of the decoded shape (ltrb_dfl's distributions are reduced to their expectations first)."""
    return 4 if shape in LTRB else 2


def dfl_bins(input_size: int) -> int:
    """ltrb_dfl's bins per side: 0, 16, … px up to half the input (no centre is farther from its box's edges)."""
    return input_size // (2 * DFL_BIN_PX) + 1


def centres(boxes_px: torch.Tensor, stride: int) -> torch.Tensor:
    """(N, 4) xyxy pixels → (N, 2) centres in cells."""
    return (boxes_px[:, :2] + boxes_px[:, 2:]) / (2 * stride)


def encode_offset(centre: torch.Tensor, cell: torch.Tensor, offset: str) -> torch.Tensor:
    """Sub-pixel position of the centre inside its cell: [0, 1) (subpixel) or [−0.5, 0.5) (centered)."""
    frac = centre - cell.to(centre.dtype)
    return frac - 0.5 if offset == "centered" else frac


def decode_offset(cell: torch.Tensor, off: torch.Tensor, offset: str) -> torch.Tensor:
    return cell.to(off.dtype) + off + (0.5 if offset == "centered" else 0.0)


def encode_shape(boxes_px: torch.Tensor, centre: torch.Tensor, stride: int, shape: str) -> torch.Tensor:
    """(N, 4) xyxy pixels and (N, 2) centres in cells → (N, 2|4) shape targets."""
    b = boxes_px / stride
    if shape in LTRB:
        return torch.stack([centre[:, 0] - b[:, 0], centre[:, 1] - b[:, 1],
                            b[:, 2] - centre[:, 0], b[:, 3] - centre[:, 1]], dim=1)
    wh = b[:, 2:] - b[:, :2]
    return torch.log(wh.clamp(min=LOG_EPS)) if shape == "log_wh" else wh


def decode_shape(centre: torch.Tensor, pred: torch.Tensor, stride: int, shape: str) -> torch.Tensor:
    """(..., 2) centres in cells and (..., 2|4) shape values → (..., 4) xyxy pixels."""
    if shape in LTRB:
        ltrb = pred
    else:
        wh = pred.clamp(max=12).exp() if shape == "log_wh" else pred
        ltrb = torch.cat([wh / 2, wh / 2], dim=-1)
    box = torch.cat([centre - ltrb[..., :2], centre + ltrb[..., 2:]], dim=-1)
    return box * stride
