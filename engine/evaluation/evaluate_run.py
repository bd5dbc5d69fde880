"""Evaluate a run's saved checkpoint (EMA weights) without training: `nanxi-tune eval RUN_DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..run import checkpoint as ckpt_io
from .. import config as C
from ..run import rundir
from ..data.dataset import eval_dataset
from ..data.loader import make_loader
from .evaluate import evaluate
from ..model.detector import build_model
from ..run.device import pick_device, place


def load_ema_model(run_dir: Path, which: str = "best", cfg: C.Config | None = None):
    """(cfg, model with the checkpoint's EMA weights, eval dataset)."""
    path = rundir.best_checkpoint(run_dir) if which == "best" else rundir.last_checkpoint(run_dir)
    if which == "best" and not path.exists():
        path = rundir.last_checkpoint(run_dir)
    state = ckpt_io.load(path)
    cfg = cfg or C.validate(state["config"], str(path))
    dataset = eval_dataset(cfg, cfg.train.seed)
    model = build_model(cfg, dataset.num_classes)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    model.load_state_dict(ema)
    return cfg, model, dataset


def evaluate_online(run_dir: Path) -> dict[str, Any]:
    """The online (not EMA) weights of ``run_dir``'s last checkpoint on its val data: what a short trial learned
    (the EMA of a few dozen steps still holds mostly the weights it started from)."""
    run_dir = Path(run_dir)
    cfg = C.load(run_dir / rundir.CONFIG)
    state = ckpt_io.load(rundir.last_checkpoint(run_dir))
    dataset = eval_dataset(cfg, cfg.train.seed)
    model = build_model(cfg, dataset.num_classes)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state["model"].items()})
    device = pick_device(cfg.train.device)
    place(model, device, cfg.train.channels_last)
    loader = make_loader(dataset, range(len(dataset)), cfg.data.batch_size, cfg.data.workers, device.type,
                         drop_last=False)
    with torch.inference_mode():
        return evaluate(model, loader, cfg, device, dataset.coco, dataset.cat_ids)


def evaluate_run(run_dir: Path, which: str = "best", updates: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = C.load(Path(run_dir) / rundir.CONFIG)
    if updates:
        cfg = C.with_updates(cfg, updates)
    cfg, model, dataset = load_ema_model(Path(run_dir), which, cfg)
    device = pick_device(cfg.train.device)
    place(model, device, cfg.train.channels_last)
    loader = make_loader(dataset, range(len(dataset)), cfg.data.batch_size, cfg.data.workers, device.type,
                         drop_last=False)
    with torch.inference_mode():
        m = evaluate(model, loader, cfg, device, dataset.coco, dataset.cat_ids)
    return {**m, "mode": cfg.eval.val_data_mode}
