"""Training targets of a batch on the head's output grid (H = W = input_size // out_stride).

* ``heatmap`` (B, C, H, W): per object a TTFNet-style elliptical Gaussian centred on its centre cell,
  sigma_x = max(alpha·w/6, MIN_SIGMA), sigma_y = max(alpha·h/6, MIN_SIGMA) in cells (w, h = box size
  in cells, alpha = cfg.encode.gaussian_alpha), truncated to the window |dx| <= floor(3·sigma_x),
  |dy| <= floor(3·sigma_y); exactly 1.0 at the centre cell; objects of one class combine by max.
* ``offset`` (B, 2, H, W), ``shape`` (B, K, H, W), ``box`` (B, 4, H, W), ``mask`` (B, 1, H, W):
  regression targets written at each object's centre cell (cell = floor(centre), clamped into the map).
  **When several objects share a centre cell, the one with the smaller box area wins** (ties: the
  first in batch order) — small objects have no other cell, large ones are still found by their heatmap.
* ``num_pos``: number of positive cells (clamped >= 1), a float scalar.

``build_targets`` is vectorised over all objects of the batch (Gaussians as a ragged list of window
cells reduced with ``scatter_reduce(amax)``); ``build_targets_loop`` is the per-object reference.
"""

from __future__ import annotations

import torch

from nanxi_tune.engine import encoding

MIN_SIGMA = 0.5  # cells; keeps tiny objects' peaks learnable


def _grid(cfg) -> tuple[int, int]:
    stride = int(cfg.neck.out_stride)
    return cfg.preprocess.input_size // stride, stride


def _gather(targets: list[dict], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = [t["boxes"].reshape(-1, 4).float() for t in targets]
    labels = [t["labels"].reshape(-1).long() for t in targets]
    bidx = [torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)]
    if not boxes:
        return torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.long, device=device), \
            torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(boxes).to(device), torch.cat(labels).to(device), torch.cat(bidx).to(device)


def _object_params(boxes: torch.Tensor, stride: int, H: int, alpha: float, offset: str, shape: str):
    """Per-object centre, cell, sigmas, window radii, offset/shape targets and areas (works for N >= 0)."""
    centre = encoding.centres(boxes, stride)
    cell = centre.floor().clamp(0, H - 1).long()
    wh = (boxes[:, 2:] - boxes[:, :2]) / stride
    sigma = (alpha * wh / 6).clamp(min=MIN_SIGMA)
    radius = (3 * sigma).floor().long()
    off = encoding.encode_offset(centre, cell, offset)
    shp = encoding.encode_shape(boxes, centre, stride, shape)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return cell, sigma, radius, off, shp, area


def _empty(B: int, C: int, H: int, K: int, device) -> dict[str, torch.Tensor]:
    z = dict(device=device, dtype=torch.float32)
    return {"heatmap": torch.zeros(B, C, H, H, **z), "offset": torch.zeros(B, 2, H, H, **z),
            "shape": torch.zeros(B, K, H, H, **z), "box": torch.zeros(B, 4, H, H, **z),
            "mask": torch.zeros(B, 1, H, H, **z)}


def build_targets(targets: list[dict], num_classes: int, cfg, device) -> dict[str, torch.Tensor]:
    """Vectorised targets of a batch (see the module docstring)."""
    H, stride = _grid(cfg)
    B, C, K = len(targets), num_classes, encoding.shape_channels(cfg.encode.shape)
    out = _empty(B, C, H, K, device)
    boxes, labels, bidx = _gather(targets, device)
    N = len(boxes)
    if N == 0:
        out["num_pos"] = torch.ones((), device=device)
        return out
    cell, sigma, radius, off, shp, area = _object_params(boxes, stride, H, cfg.encode.gaussian_alpha,
                                                         cfg.encode.offset, cfg.encode.shape)
    HW = H * H
    # heatmap: every object contributes its (2rx+1)×(2ry+1) window as a ragged list of cells
    kx, ky = 2 * radius[:, 0] + 1, 2 * radius[:, 1] + 1
    counts = kx * ky
    total = int(counts.sum())
    obj = torch.repeat_interleave(torch.arange(N, device=device), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    # one gather of every per-object integer / float parameter the window cells need
    ints = torch.stack([starts, kx, radius[:, 0], radius[:, 1], cell[:, 0], cell[:, 1],
                        (bidx * C + labels) * HW], 1)[obj]
    inv = (1.0 / (2 * sigma ** 2))[obj]
    local = torch.arange(total, device=device) - ints[:, 0]
    row = torch.div(local, ints[:, 1], rounding_mode="floor")
    dy = row - ints[:, 3]
    dx = local - row * ints[:, 1] - ints[:, 2]
    x, y = ints[:, 4] + dx, ints[:, 5] + dy
    dxf, dyf = dx.float(), dy.float()
    val = torch.exp(-(dxf * dxf * inv[:, 0] + dyf * dyf * inv[:, 1]))
    inside = (x >= 0) & (x < H) & (y >= 0) & (y < H)
    val = torch.where(inside, val, torch.zeros_like(val))  # outside cells: a harmless 0 at a clamped cell
    flat = ints[:, 6] + y.clamp(0, H - 1) * H + x.clamp(0, H - 1)
    heat = out["heatmap"].view(-1)
    heat.scatter_reduce_(0, flat, val, reduce="amax", include_self=True)

    # regression targets: one winner per (image, cell) = the smallest area, ties to the first object
    pos = bidx * HW + cell[:, 1] * H + cell[:, 0]
    order = torch.argsort(area, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(N, device=device)
    best = torch.full((B * HW,), N, dtype=torch.long, device=device)
    best.scatter_reduce_(0, pos, rank, reduce="amin", include_self=True)
    win = best[pos] == rank
    wb, wy, wx = bidx[win], cell[win, 1], cell[win, 0]
    out["offset"][wb, :, wy, wx] = off[win].float()
    out["shape"][wb, :, wy, wx] = shp[win].float()
    out["box"][wb, :, wy, wx] = boxes[win]
    out["mask"][wb, 0, wy, wx] = 1.0
    out["num_pos"] = win.sum().float().clamp(min=1)
    return out


def build_targets_loop(targets: list[dict], num_classes: int, cfg, device) -> dict[str, torch.Tensor]:
    """Per-object reference implementation (the benchmark's baseline and the tests' oracle)."""
    H, stride = _grid(cfg)
    B, C, K = len(targets), num_classes, encoding.shape_channels(cfg.encode.shape)
    out = _empty(B, C, H, K, device)
    best_area = torch.full((B, H, H), float("inf"), device=device)
    npos = 0
    for b, t in enumerate(targets):
        boxes = t["boxes"].reshape(-1, 4).float().to(device)
        labels = t["labels"].reshape(-1).long()
        for i in range(len(boxes)):
            box = boxes[i:i + 1]
            cell, sigma, radius, off, shp, area = _object_params(box, stride, H, cfg.encode.gaussian_alpha,
                                                                 cfg.encode.offset, cfg.encode.shape)
            cx, cy = int(cell[0, 0]), int(cell[0, 1])
            rx, ry = int(radius[0, 0]), int(radius[0, 1])
            inv = 1.0 / (2 * sigma[0] ** 2)
            x0, x1 = max(0, cx - rx), min(H, cx + rx + 1)
            y0, y1 = max(0, cy - ry), min(H, cy + ry + 1)
            dx = (torch.arange(x0, x1, device=device) - cx).float()
            dy = (torch.arange(y0, y1, device=device) - cy).float()
            g = torch.exp(-(dx[None, :] * dx[None, :] * inv[0] + dy[:, None] * dy[:, None] * inv[1]))
            c = int(labels[i])
            region = out["heatmap"][b, c, y0:y1, x0:x1]
            out["heatmap"][b, c, y0:y1, x0:x1] = torch.maximum(region, g)
            if area[0] < best_area[b, cy, cx]:
                if best_area[b, cy, cx] == float("inf"):
                    npos += 1
                best_area[b, cy, cx] = area[0]
                out["offset"][b, :, cy, cx] = off[0]
                out["shape"][b, :, cy, cx] = shp[0]
                out["box"][b, :, cy, cx] = box[0]
                out["mask"][b, 0, cy, cx] = 1.0
    out["num_pos"] = torch.tensor(float(max(npos, 1)), device=device)
    return out
