"""后处理 post-processing: heatmap peaks → boxes → (optional) NMS.

Peaks are cells equal to the max-pool of their neighbourhood (``postprocess.pool_kernel``);
the ``top_k`` highest over C×H×W per image are decoded with the offset and shape at their
cell (encoding.decode_offset / decode_shape) — with head.shape_quality each peak's score becomes
heat × quality^w there (w = ``postprocess.quality_weight``): a tight box outranks a loose one; with
``postprocess.shape_vote`` = p > 0 the shape is the average over the 3×3 cells around the peak, each weighted by
its heat^p (its class's map): neighbours of a peak see the same object, and their mean is steadier than one
cell's — peaks whose heat is below ``score_threshold`` dropped, then
``torchvision.ops.batched_nms`` runs once over the whole batch (per image and class).
Boxes are xyxy in canvas pixels, not clipped (evaluate.to_coco_results clips them to the
original image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from . import encoding
from ..config import Config


def peaks(heat: torch.Tensor, pool_kernel: int) -> torch.Tensor:
    """The heatmap with every non-peak cell set to 0."""
    if pool_kernel <= 1:
        return heat
    hmax = F.max_pool2d(heat, pool_kernel, stride=1, padding=pool_kernel // 2)
    return heat * (hmax == heat).to(heat.dtype)


def _gather(t: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """t (B, K', H, W), pix (B, N) flat cell indices → (B, N, K')."""
    b, k = t.shape[:2]
    flat = t.reshape(b, k, -1)
    return flat.gather(2, pix.unsqueeze(1).expand(b, k, pix.shape[1])).permute(0, 2, 1)


def voted_shape(heat: torch.Tensor, shape: torch.Tensor, labels: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                power: float) -> torch.Tensor:
    """heat (B, C, H, W), shape (B, S, H, W), peaks (B, K) → (B, K, S): the shapes of the 3×3 cells around each
    peak averaged with weights heat^power (the peak's class; cells outside the map weigh 0)."""
    b, c, h, w = heat.shape
    d = torch.arange(-1, 2, device=heat.device)
    ny = (ys[..., None, None] + d[:, None]).expand(*ys.shape, 3, 3).reshape(*ys.shape, 9)
    nx = (xs[..., None, None] + d[None, :]).expand(*xs.shape, 3, 3).reshape(*xs.shape, 9)
    inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    cell = ny.clamp(0, h - 1) * w + nx.clamp(0, w - 1)  # (B, K, 9)
    k = ys.shape[1]
    wgt = heat.reshape(b, -1).gather(1, (labels[..., None] * h * w + cell).reshape(b, -1)).reshape(b, k, 9)
    wgt = wgt.clamp(min=0).pow(power) * inside
    wgt[..., 4] = wgt[..., 4].clamp(min=1e-12)  # the peak itself: never an empty vote
    s = shape.shape[1]
    vals = shape.reshape(b, s, h * w).gather(2, cell.reshape(b, 1, -1).expand(b, s, k * 9))
    vals = vals.reshape(b, s, k, 9).permute(0, 2, 1, 3)  # (B, K, S, 9)
    return (vals * wgt[:, :, None]).sum(-1) / wgt.sum(-1, keepdim=True)


@torch.no_grad()
def decode(outputs: dict, cfg: Config) -> list[dict[str, torch.Tensor]]:
    """Detections per image: {"boxes" (K, 4) xyxy canvas px, "scores" (K,), "labels" (K,) int64}."""
    pp, enc = cfg.postprocess, cfg.encode
    heat = outputs["map"].float()
    b, c, h, w = heat.shape
    scores_map = peaks(heat, pp.pool_kernel).reshape(b, -1)
    k = min(pp.top_k, scores_map.shape[1])
    scores, idx = scores_map.topk(k, dim=1)  # (B, K), sorted
    labels = idx // (h * w)
    pix = idx % (h * w)
    ys, xs = pix // w, pix % w
    cell = torch.stack([xs, ys], dim=-1)  # (B, K, 2)
    off = _gather(outputs["offset"].float(), pix)
    if pp.shape_vote > 0:
        shp = voted_shape(heat, outputs["shape"].float(), labels, ys, xs, pp.shape_vote)
    else:
        shp = _gather(outputs["shape"].float(), pix)
    keep = scores >= pp.score_threshold  # on the heat: the weight below scales scores, not which peaks count
    if "quality" in outputs and pp.quality_weight > 0:  # peaks stay the heatmap's: quality is learned at centres
        q = _gather(outputs["quality"].float(), pix)[..., 0].clamp(min=0.0)
        scores = scores * q.pow(pp.quality_weight)  # the heat stays a factor: a cell that is no peak stays 0
    centre = encoding.decode_offset(cell, off, enc.offset)
    boxes = encoding.decode_shape(centre, shp, cfg.neck.out_stride, enc.shape)  # (B, K, 4)

    image = torch.arange(b, device=heat.device).unsqueeze(1).expand(b, k)
    boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
    if pp.nms and scores.numel():
        sel = batched_nms(boxes, scores, image * c + labels, pp.nms_iou)
        boxes, scores, labels, image = boxes[sel], scores[sel], labels[sel], image[sel]
    out = []
    for i in range(b):
        m = image == i
        s, order = scores[m].sort(descending=True)
        out.append({"boxes": boxes[m][order], "scores": s, "labels": labels[m][order].long()})
    return out
