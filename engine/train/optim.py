"""The optimiser's and the EMA's rules: weight decay on conv weights only, and the EMA update with its ramp."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel


def ema_avg_fn(decay: float, ramp: bool):
    """EMA update for AveragedModel. With ``ramp`` the decay is min(decay, (1 + n) / (10 + n)) after n updates
    (TensorFlow's num_updates rule): early weights move fast, so a full 0.99 from step 0 averages weights
    too far apart to form a working model."""

    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n)) if ramp else decay
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(list(ema_params), list(params), 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            for e, p in zip(ema_params, params):
                e.copy_(p)

    return update


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv weights only: decaying biases, norm scales and the log weights s_* toward 0
    would pull the heatmap prior bias and the loss balance away from where they belong."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def ema_l2(ema: torch.nn.Module, model: torch.nn.Module) -> torch.Tensor:
    """The notes' "retention" metric: L2 distance between EMA and online weights (a tensor: read with the step's
    one host sync)."""
    e, online = list(ema.parameters()), list(model.parameters())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(torch._foreach_sub(e, online))).float())


def ema_and_optimizer(cfg: Any, model: torch.nn.Module) -> tuple[AveragedModel, torch.optim.AdamW]:
    """The EMA of ``model`` (train.ema_decay, train.ema_ramp) and AdamW over its parameter groups."""
    ema = AveragedModel(model, multi_avg_fn=ema_avg_fn(cfg.train.ema_decay, cfg.train.ema_ramp), use_buffers=True)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.lr,
                                  betas=(cfg.train.beta1, cfg.train.beta2))
    return ema, optimizer
