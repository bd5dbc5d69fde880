"""loss函数: the three branch losses and their uncertainty-weighted sum.

* map: CenterNet's penalty-reduced focal loss on the heatmap, normalised by the number of
  objects (``num_pos``).
* offset: L1 on the centre cells, summed over the 2 channels, divided by ``num_pos``.
* shape: L1 on the centre cells in the encoding's own units (cells, or log-cells for
  ``log_wh``), summed over channels, / ``num_pos``; or GIoU between the box decoded at the
  ground-truth centre and the ground-truth box, summed over centre cells, / ``num_pos``
  (so it lies in [0, 2], independent of box size and stride).
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

from nanxi_tune.engine import encoding
from nanxi_tune.engine.config import Config

EPS = 1e-4
POS_THRESHOLD = 1.0 - 1e-4  # heatmap cells at (or numerically at) 1.0 are the object centres


def focal_loss(pred: torch.Tensor, gt: torch.Tensor, num_pos: torch.Tensor | float, alpha: float = 2.0,
               beta: float = 4.0, logits: torch.Tensor | None = None, eps: float = EPS) -> torch.Tensor:
    """Penalty-reduced focal loss (CenterNet), summed and divided by ``num_pos``.

    ``pred`` is the heatmap after its range-normalising activation; it is clamped into
    (eps, 1 − eps) so activations that reach 0 or 1 (hsigmoid) or leave [0, 1] (softskim)
    cannot produce inf/NaN. When ``logits`` are given (sigmoid heads) the log terms are
    computed from them with logsigmoid instead: exact, and a gradient everywhere.
    """
    gt = gt.float()
    pos = gt >= POS_THRESHOLD
    neg_weight = torch.pow((1.0 - gt).clamp(min=0.0), beta)
    if logits is not None:
        logits = logits.float()
        # floors keep pow(·, alpha < 1) differentiable where the sigmoid saturates to exactly 0 or 1
        p, q = torch.sigmoid(logits).clamp(min=1e-12), torch.sigmoid(-logits).clamp(min=1e-12)
        log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    else:
        p = pred.float().clamp(eps, 1.0 - eps)
        q = 1.0 - p
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
    pos_loss = -log_p * torch.pow(q, alpha)
    neg_loss = -log_1mp * torch.pow(p, alpha) * neg_weight
    loss = torch.where(pos, pos_loss, neg_loss).sum()
    return loss / num_pos


def _masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               num_pos: torch.Tensor | float) -> torch.Tensor:
    """Σ over centre cells and channels of |pred − target|, / num_pos. mask: (B, 1, H, W)."""
    m = mask.float()
    return ((pred.float() - target.float()).abs() * m).sum() / num_pos


def _centre_cells(mask: torch.Tensor) -> torch.Tensor:
    """(P, 3) indices (b, y, x) of the centre cells."""
    return (mask[:, 0] > 0.5).nonzero(as_tuple=False)


def decode_at_centres(shape_pred: torch.Tensor, offset_gt: torch.Tensor, mask: torch.Tensor, cfg: Config
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (P, 4, pixels) decoded from the predicted shape at every centre cell, placed at the
    ground-truth centre (cell + gt offset); also returns the (P, 3) (b, y, x) indices."""
    idx = _centre_cells(mask)
    b, y, x = idx.unbind(1)
    cell = torch.stack([x, y], dim=1)
    off = offset_gt[b, :, y, x].float()
    centre = encoding.decode_offset(cell, off, cfg.encode.offset)
    shp = shape_pred[b, :, y, x].float()
    return encoding.decode_shape(centre, shp, cfg.neck.out_stride, cfg.encode.shape), idx


def giou_shape_loss(shape_pred: torch.Tensor, targets: dict, cfg: Config) -> torch.Tensor:
    boxes, idx = decode_at_centres(shape_pred, targets["offset"], targets["mask"], cfg)
    b, y, x = idx.unbind(1)
    gt = targets["box"][b, :, y, x].float()
    if boxes.numel() == 0:
        return shape_pred.float().sum() * 0.0
    return generalized_box_iou_loss(boxes, gt, reduction="none").sum() / targets["num_pos"]


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
        targets = {**targets, "num_pos": num_pos}
        logits = outputs.get("map_logits") if cfg.head.range_norm_act == "sigmoid" else None
        loss_map = focal_loss(outputs["map"], targets["heatmap"], num_pos, cfg.loss.focal_alpha,
                              cfg.loss.focal_beta, logits=logits)
        loss_offset = _masked_l1(outputs["offset"], targets["offset"], targets["mask"], num_pos)
        if cfg.loss.shape_loss == "giou":
            loss_shape = giou_shape_loss(outputs["shape"], targets, cfg)
        else:
            loss_shape = _masked_l1(outputs["shape"], targets["shape"], targets["mask"], num_pos)
        return {"loss_map": loss_map, "loss_offset": loss_offset, "loss_shape": loss_shape}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for branch in ("map", "offset", "shape"):
            s = getattr(self, f"s_{branch}")
            total = total + torch.exp(-s) * losses[f"loss_{branch}"] + s
        return self.cfg.loss.loss_scale * total

    def forward(self, outputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        losses = self.branch_losses(outputs, targets)
        out = {"loss": self.combine(losses), **losses}
        for name in ("s_map", "s_offset", "s_shape"):
            out[name] = getattr(self, name).detach().clone()
        return out
