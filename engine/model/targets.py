"""Training targets of a batch on the head's output grid (H = W = input_size // out_stride).

* ``heatmap`` (B, C, H, W): per object a TTFNet-style elliptical Gaussian centred on its centre cell,
  sigma_x = max(alpha·w/6, MIN_SIGMA), sigma_y = max(alpha·h/6, MIN_SIGMA) in cells (w, h = box size
  in cells, alpha = cfg.encode.gaussian_alpha), truncated to the window |dx| <= floor(3·sigma_x),
  |dy| <= floor(3·sigma_y); exactly 1.0 at the centre cell; objects of one class combine by max.
* ``offset`` (2), ``shape`` (K), ``box`` (4, pixels): regression targets of each object's centre cell
  (cell = floor(centre), clamped into the map).
  **When several objects share a centre cell, the one with the smaller box area wins** (ties: the
  first in batch order) — small objects have no other cell, large ones are still found by their heatmap.
* ``num_pos``: number of positive cells (clamped >= 1), a float scalar.
* ``reg_*`` (only with ``loss.shape_samples = gaussian``, TTFNet's regression samples): every cell of an
  object's Gaussian window also learns its shape, as seen from the object's centre (so decoding at the peak
  is unchanged): ``reg_index`` (flat into (B, H, W)), ``reg_centre`` (the object's centre, cells),
  ``reg_shape``, ``reg_box`` and ``reg_weight`` (the Gaussian, summing to 1 over each object's cells, so the
  shape loss stays a mean over objects). A cell shared by objects goes to the smaller one, as above.

``build_targets`` is vectorised over all objects of the batch (Gaussians as a ragged list of window
cells, deduplicated with ``unique`` and combined with ``scatter_reduce(amax)``) and returns everything
**sparse**, as the loss reads it: ``heat_index`` (flat indices into (B, C, H, W), unique, sorted) and
``heat_value`` — every other heatmap cell is 0 — and, per positive cell, ``pos_index`` (flat into
(B, H, W)), ``pos_offset``, ``pos_shape``, ``pos_box``. At 640 px and 80 classes a dense heatmap is 8 MB
an image of mostly zeros. ``densify`` adds the dense maps ``heatmap`` (B, C, H, W), ``offset`` (B, 2, H,
W), ``shape`` (B, K, H, W), ``box`` (B, 4, H, W) and ``mask`` (B, 1, H, W): the form of
``build_targets_loop``, the per-object reference.
"""

from __future__ import annotations

import torch

from . import encoding

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
    """Zero-filled dense maps (``build_targets_loop``'s form)."""
    z = dict(device=device, dtype=torch.float32)
    return {"heatmap": torch.zeros(B, C, H, H, **z), "offset": torch.zeros(B, 2, H, H, **z),
            "shape": torch.zeros(B, K, H, H, **z), "box": torch.zeros(B, 4, H, H, **z),
            "mask": torch.zeros(B, 1, H, H, **z)}


def densify(t: dict[str, torch.Tensor], batch_size: int, num_classes: int, cfg) -> dict[str, torch.Tensor]:
    """``build_targets``' sparse targets with the dense maps added (``build_targets_loop``'s form)."""
    H, _ = _grid(cfg)
    dense = _empty(batch_size, num_classes, H, t["pos_shape"].shape[1], t["heat_value"].device)
    dense["heatmap"].view(-1)[t["heat_index"]] = t["heat_value"]
    b, cell = t["pos_index"] // (H * H), t["pos_index"] % (H * H)
    y, x = cell // H, cell % H
    for key in ("offset", "shape", "box"):
        dense[key][b, :, y, x] = t[f"pos_{key}"]
    dense["mask"][b, 0, y, x] = 1.0
    return {**t, **dense}


def sparsify(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense targets (``build_targets_loop``'s form, or built by hand) in ``build_targets``' sparse form."""
    if "heat_index" in t:
        return t
    heat = t["heatmap"].reshape(-1)
    heat_index = (heat > 0).nonzero()[:, 0]
    b, y, x = (t["mask"][:, 0] > 0.5).nonzero().unbind(1)
    H, W = t["mask"].shape[-2:]
    return {"heat_index": heat_index, "heat_value": heat[heat_index], "pos_index": (b * H + y) * W + x,
            "pos_offset": t["offset"][b, :, y, x], "pos_shape": t["shape"][b, :, y, x],
            "pos_box": t["box"][b, :, y, x], "num_pos": t["num_pos"]}


def build_targets(targets: list[dict], num_classes: int, cfg, device, dense: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Vectorised targets of a batch (see the module docstring), sparse as the loss reads them;
    ``dense=True`` adds the dense maps too."""
    out = _build(targets, num_classes, cfg, device)
    return densify(out, len(targets), num_classes, cfg) if dense else out


def _build(targets: list[dict], num_classes: int, cfg, device) -> dict[str, torch.Tensor]:
    H, stride = _grid(cfg)
    C, K = num_classes, encoding.shape_channels(cfg.encode.shape)
    boxes, labels, bidx = _gather(targets, device)
    N = len(boxes)
    if N == 0:
        z = dict(device=device)
        return {"heat_index": torch.zeros(0, dtype=torch.long, **z), "heat_value": torch.zeros(0, **z),
                "pos_index": torch.zeros(0, dtype=torch.long, **z), "pos_offset": torch.zeros(0, 2, **z),
                "pos_shape": torch.zeros(0, K, **z), "pos_box": torch.zeros(0, 4, **z),
                "num_pos": torch.ones((), **z)}
    out = {}
    cell, sigma, radius, off, shp, area = _object_params(boxes, stride, H, cfg.encode.gaussian_alpha,
                                                         cfg.encode.offset, cfg.encode.shape)
    HW = H * H
    # heatmap: every object contributes its (2rx+1)×(2ry+1) window, clipped to the map, as a ragged
    # list of cells
    x0, y0 = (cell - radius).clamp(min=0).unbind(1)
    x1, y1 = (cell + radius).clamp(max=H - 1).unbind(1)
    kx = x1 - x0 + 1
    counts = kx * (y1 - y0 + 1)
    total = int(counts.sum())
    obj = torch.repeat_interleave(torch.arange(N, device=device), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    # one gather of every per-object integer / float parameter the window cells need
    ints = torch.stack([starts, kx, x0 - cell[:, 0], y0 - cell[:, 1],
                        (bidx * C + labels) * HW + y0 * H + x0], 1).index_select(0, obj)
    inv = (1.0 / (2 * sigma ** 2)).index_select(0, obj)
    local = torch.arange(total, device=device) - ints[:, 0]
    row = torch.div(local, ints[:, 1], rounding_mode="floor")
    col = local - row * ints[:, 1]
    dxf, dyf = (ints[:, 2] + col).float(), (ints[:, 3] + row).float()
    val = torch.exp(-(dxf * dxf * inv[:, 0] + dyf * dyf * inv[:, 1]))
    # one entry per touched cell, objects of one class combined by max: no dense (B, C, H, W) fill
    flat = ints[:, 4] + row * H + col
    if len(targets) * C * HW < 2 ** 31:  # int32 sorts about twice as fast
        flat = flat.int()
    heat_index, where = torch.unique(flat, return_inverse=True)
    out["heat_index"] = heat_index.long()
    out["heat_value"] = torch.zeros(len(out["heat_index"]), device=device).scatter_reduce_(
        0, where, val, reduce="amax", include_self=False)

    # regression targets: one winner per (image, cell) = the smallest area, ties to the first object
    pos = bidx * HW + cell[:, 1] * H + cell[:, 0]
    order = torch.argsort(area, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(N, device=device)
    win = _smallest_per_cell(pos, rank, N)
    out["pos_index"] = pos[win]
    out["pos_offset"], out["pos_shape"], out["pos_box"] = off[win].float(), shp[win].float(), boxes[win]
    out["num_pos"] = torch.tensor(float(max(len(win), 1)), device=device)
    if cfg.loss.shape_samples == "gaussian":
        cell_at = torch.stack([x0.index_select(0, obj) + col, y0.index_select(0, obj) + row], 1)
        out.update(_gaussian_samples(obj, bidx.index_select(0, obj) * HW + cell_at[:, 1] * H + cell_at[:, 0],
                                     val, rank.index_select(0, obj), N, boxes, shp, stride))
    return out


def _smallest_per_cell(cells: torch.Tensor, rank: torch.Tensor, N: int) -> torch.Tensor:
    """Positions into ``cells`` (flat cell of each entry) of one entry per cell, the one of the smallest ``rank``
    (the object's area rank, ties to the first object); ordered by cell."""
    key = torch.sort(cells * N + rank)  # by cell, then rank: the first of each cell wins
    first = torch.ones_like(key.values, dtype=torch.bool)
    first[1:] = key.values[1:] // N != key.values[:-1] // N
    return key.indices[first]


def _gaussian_samples(obj: torch.Tensor, cells: torch.Tensor, val: torch.Tensor, rank: torch.Tensor, N: int,
                      boxes: torch.Tensor, shp: torch.Tensor, stride: int) -> dict[str, torch.Tensor]:
    """The ``reg_*`` samples from the heatmap's window cells (``obj``: their object, ``cells``: flat (B, H, W),
    ``val``: the Gaussian there, ``rank``: the object's area rank, smallest first)."""
    keep = _smallest_per_cell(cells, rank, N)
    o = obj[keep]
    g = val[keep]
    total = torch.zeros(N, device=g.device).index_add_(0, o, g)
    return {"reg_index": cells[keep], "reg_centre": encoding.centres(boxes, stride)[o].float(),
            "reg_shape": shp[o].float(), "reg_box": boxes[o], "reg_weight": g / total[o].clamp(min=1e-12)}


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
