"""loss函数: the three branch losses and their uncertainty-weighted sum.

* map: CenterNet's penalty-reduced focal loss on the heatmap, normalised by the number of
  objects (``num_pos``). Targets may come dense or sparse (``engine/model/targets.py``); the losses read
  the sparse form, touching only the cells with ground truth.
* offset: L1 on the centre cells, summed over the 2 channels, divided by ``num_pos``.
* shape: L1 on the centre cells in the encoding's own units (cells, or log-cells for
  ``log_wh``), summed over channels, / ``num_pos``; or GIoU between the box decoded at the
  ground-truth centre and the ground-truth box, summed over centre cells, / ``num_pos``
  (so it lies in [0, 2], independent of box size and stride).
* ``loss.shape_samples = gaussian`` (TTFNet): the shape loss also reads every cell of each object's Gaussian
  window, weighted by the Gaussian (summing to 1 an object), each decoded around the object's centre; still
  / ``num_pos``, so its scale is the centre-only loss's.
* ``head.shape_quality`` (框质量): the shape branch's extra channel learns, at each centre cell, the IoU of the box
  decoded there (predicted offset and shape, as inference decodes it) with the object's box: binary cross-entropy
  less the target's own entropy (0 when exact), / ``num_pos``, added to the shape loss.
* ``encode.shape = ltrb_dfl`` (GFL's Distribution Focal Loss): each side's distribution over its bins learns the
  two bins around the true distance, weighted by nearness — cross-entropy less the target's own entropy (0 when
  exact), averaged over the four sides, at the shape loss's cells and weights, / ``num_pos``, added to the shape loss
  (which also reads the distributions' expectations, as decode does).
* total = loss_scale × Σ_i (exp(−s_i)·L_i + s_i), with s_map, s_offset, s_shape the log
  weights (uncertainty weighting). They are always ``nn.Parameter``s, so the state_dict
  has the same keys whatever ``loss.learn_log_weights`` says; when it is false they are
  frozen (``requires_grad=False``) and never receive a gradient.

Everything is computed in float32, whatever dtype the outputs arrive in (AMP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from . import encoding
from ..config import Config
from .targets import sparsify
from ..metric_keys import BRANCHES

EPS = 1e-4
POS_THRESHOLD = 1.0 - 1e-4  # heatmap cells at (or numerically at) 1.0 are the object centres


def _focal_terms(pred: torch.Tensor, logits: torch.Tensor | None, alpha: float, eps: float, pos: bool = True
                 ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(pos_loss, neg_loss) elementwise, before the neg weight (1 − gt)^beta; pos_loss is None if not ``pos``.

    ``pred`` is the heatmap after its range-normalising activation; it is clamped into (eps, 1 − eps)
    so activations that reach 0 or 1 (hsigmoid) or leave [0, 1] (softskim) cannot produce inf/NaN.
    With ``logits`` (sigmoid heads) the log terms come from logsigmoid: exact, a gradient everywhere."""
    if logits is not None:
        logits = logits.float()
        # floors keep pow(·, alpha < 1) differentiable where the sigmoid saturates to exactly 0 or 1
        p = torch.sigmoid(logits).clamp(min=1e-12)
        neg = -F.logsigmoid(-logits) * torch.pow(p, alpha)
        if not pos:
            return None, neg
        return -F.logsigmoid(logits) * torch.pow(torch.sigmoid(-logits).clamp(min=1e-12), alpha), neg
    p = pred.float().clamp(eps, 1.0 - eps)
    neg = -torch.log1p(-p) * torch.pow(p, alpha)
    return (-torch.log(p) * torch.pow(1.0 - p, alpha) if pos else None), neg


def focal_loss(pred: torch.Tensor, gt: torch.Tensor, num_pos: torch.Tensor | float, alpha: float = 2.0,
               beta: float = 4.0, logits: torch.Tensor | None = None, eps: float = EPS) -> torch.Tensor:
    """Penalty-reduced focal loss (CenterNet) against a dense heatmap, summed and divided by ``num_pos``."""
    gt = gt.float()
    pos_loss, neg_loss = _focal_terms(pred, logits, alpha, eps)
    neg_loss = neg_loss * torch.pow((1.0 - gt).clamp(min=0.0), beta)
    return torch.where(gt >= POS_THRESHOLD, pos_loss, neg_loss).sum() / num_pos


def focal_loss_sparse(pred: torch.Tensor, index: torch.Tensor, value: torch.Tensor,
                      num_pos: torch.Tensor | float, alpha: float = 2.0, beta: float = 4.0,
                      logits: torch.Tensor | None = None, eps: float = EPS) -> torch.Tensor:
    """``focal_loss`` with the heatmap given sparse (flat ``index`` into pred, ``value`` there, 0 elsewhere).

    Where gt = 0 the neg weight is 1, so the loss is the plain neg term summed over every cell, corrected
    on the touched cells only: no dense ground truth, and fewer dense temporaries than ``focal_loss``."""
    _, neg_all = _focal_terms(pred, logits, alpha, eps, pos=False)
    at = (lambda x: x.reshape(-1)[index])
    pos_s, neg_s = _focal_terms(at(pred), None if logits is None else at(logits), alpha, eps)
    value = value.float()
    here = torch.where(value >= POS_THRESHOLD, pos_s, neg_s * torch.pow((1.0 - value).clamp(min=0.0), beta))
    return (neg_all.sum() + (here - neg_s).sum()) / num_pos


def at_centres(pred: torch.Tensor, pos_index: torch.Tensor) -> torch.Tensor:
    """(P, channels) of a (B, channels, H, W) map at the flat (B, H, W) indices ``pos_index``."""
    H, W = pred.shape[-2:]
    b, cell = pos_index // (H * W), pos_index % (H * W)
    return pred[b, :, cell // W, cell % W]


def _l1(pred: torch.Tensor, target: torch.Tensor, pos_index: torch.Tensor,
        num_pos: torch.Tensor | float) -> torch.Tensor:
    """Σ over centre cells and channels of |pred − target|, / num_pos."""
    return (at_centres(pred, pos_index).float() - target.float()).abs().sum() / num_pos


def decode_at_centres(shape_pred: torch.Tensor, targets: dict, cfg: Config,
                      offset: torch.Tensor | None = None) -> torch.Tensor:
    """Boxes (P, 4, pixels) decoded from the predicted shape at every centre cell, placed at the
    ground-truth centre (cell + gt offset), or at cell + ``offset`` (P, 2) when given (as inference places it)."""
    W = shape_pred.shape[-1]
    cell = targets["pos_index"] % (shape_pred.shape[-2] * W)
    xy = torch.stack([cell % W, cell // W], dim=1)
    offset = targets["pos_offset"] if offset is None else offset
    centre = encoding.decode_offset(xy, offset.float(), cfg.encode.offset)
    shp = at_centres(shape_pred, targets["pos_index"]).float()
    return encoding.decode_shape(centre, shp, cfg.neck.out_stride, cfg.encode.shape)


def giou_shape_loss(shape_pred: torch.Tensor, targets: dict, cfg: Config) -> torch.Tensor:
    if "reg_index" in targets:  # loss.shape_samples = gaussian
        shp = at_centres(shape_pred, targets["reg_index"]).float()
        boxes = encoding.decode_shape(targets["reg_centre"], shp, cfg.neck.out_stride, cfg.encode.shape)
        target, weight = targets["reg_box"].float(), targets["reg_weight"]
    else:
        boxes, target, weight = decode_at_centres(shape_pred, targets, cfg), targets["pos_box"].float(), None
    if boxes.numel() == 0:
        return shape_pred.float().sum() * 0.0
    loss = generalized_box_iou_loss(boxes, target, reduction="none")
    return (loss if weight is None else loss * weight).sum() / targets["num_pos"]


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i], xyxy (N, 4) each."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area = (lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0))
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def quality_loss(outputs: dict, targets: dict, cfg: Config) -> torch.Tensor:
    """框质量 (see the module docstring): the quality logits at the centre cells against the IoU of the box decoded
    there, detached — the quality learns to judge the box, not to move it."""
    logits, index = outputs["quality_logits"], targets["pos_index"]
    if index.numel() == 0:
        return logits.float().sum() * 0.0
    with torch.no_grad():
        boxes = decode_at_centres(outputs["shape"], targets, cfg, at_centres(outputs["offset"], index))
        iou = paired_iou(boxes, targets["pos_box"].float()).clamp(0.0, 1.0)
        entropy = -(torch.xlogy(iou, iou) + torch.xlogy(1 - iou, 1 - iou))
    bce = F.binary_cross_entropy_with_logits(at_centres(logits, index).float()[:, 0], iou, reduction="none")
    return (bce - entropy).sum() / targets["num_pos"]


def dfl_loss(outputs: dict, targets: dict, cfg: Config) -> torch.Tensor:
    """Distribution Focal Loss of ``encode.shape = ltrb_dfl`` (see the module docstring)."""
    logits = outputs["shape_logits"]  # (B, 4, bins, H, W)
    if "reg_index" in targets:  # loss.shape_samples = gaussian
        index, ltrb, weight = targets["reg_index"], targets["reg_shape"], targets["reg_weight"]
    else:
        index, ltrb, weight = targets["pos_index"], targets["pos_shape"], None
    if index.numel() == 0:
        return logits.float().sum() * 0.0
    H, W = logits.shape[-2:]
    b, cell = index // (H * W), index % (H * W)
    logp = logits[b, :, :, cell // W, cell % W].float().log_softmax(-1)  # (P, 4, bins)
    bins = logp.shape[-1]
    t = (ltrb.float() / (encoding.DFL_BIN_PX / cfg.neck.out_stride)).clamp(0, bins - 1 - 1e-4)
    left = t.floor().long()
    right_w = t - left
    left_w = 1 - right_w
    at = (lambda i: logp.gather(-1, i.unsqueeze(-1))[..., 0])
    ce = -(left_w * at(left) + right_w * at(left + 1))
    per = (ce + torch.xlogy(left_w, left_w) + torch.xlogy(right_w, right_w)).mean(-1)
    return (per if weight is None else per * weight).sum() / targets["num_pos"]


def l1_shape_loss(shape_pred: torch.Tensor, targets: dict) -> torch.Tensor:
    if "reg_index" not in targets:
        return _l1(shape_pred, targets["pos_shape"], targets["pos_index"], targets["num_pos"])
    diff = (at_centres(shape_pred, targets["reg_index"]).float() - targets["reg_shape"]).abs().sum(1)
    return (diff * targets["reg_weight"]).sum() / targets["num_pos"]


class DetectionLoss(nn.Module):
    """Per-branch losses and their uncertainty-weighted total.

    forward(outputs, targets) → {"loss", "loss_map", "loss_offset", "loss_shape" (raw,
    unweighted), "s_map", "s_offset", "s_shape" (detached)}.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        learn = cfg.loss.learn_log_weights
        for name in ("s_map", "s_offset", "s_shape"):
            init = torch.tensor(float(getattr(cfg.loss, name)))
            self.register_parameter(name, nn.Parameter(init, requires_grad=learn))

    def branch_losses(self, outputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        num_pos = targets["num_pos"]
        if not torch.is_tensor(num_pos):
            num_pos = torch.tensor(float(num_pos), device=outputs["map"].device)
        num_pos = num_pos.float().clamp(min=1.0)
        targets = {**sparsify(targets), "num_pos": num_pos}
        logits = outputs.get("map_logits") if cfg.head.range_norm_act == "sigmoid" else None
        loss_map = focal_loss_sparse(outputs["map"], targets["heat_index"], targets["heat_value"], num_pos,
                                     cfg.loss.focal_alpha, cfg.loss.focal_beta, logits=logits)
        loss_offset = _l1(outputs["offset"], targets["pos_offset"], targets["pos_index"], num_pos)
        if cfg.loss.shape_loss == "giou":
            loss_shape = giou_shape_loss(outputs["shape"], targets, cfg)
        else:
            loss_shape = l1_shape_loss(outputs["shape"], targets)
        if "shape_logits" in outputs:
            loss_shape = loss_shape + dfl_loss(outputs, targets, cfg)
        if "quality_logits" in outputs:
            loss_shape = loss_shape + quality_loss(outputs, targets, cfg)
        return {"loss_map": loss_map, "loss_offset": loss_offset, "loss_shape": loss_shape}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for branch in BRANCHES:
            s = getattr(self, f"s_{branch}")
            total = total + torch.exp(-s) * losses[f"loss_{branch}"] + s
        return self.cfg.loss.loss_scale * total

    def forward(self, outputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        losses = self.branch_losses(outputs, targets)
        out = {"loss": self.combine(losses), **losses}
        for name in ("s_map", "s_offset", "s_shape"):
            out[name] = getattr(self, name).detach().clone()
        return out
