"""Trainer overhead: the same model, data and batch through a bare PyTorch loop and through the Trainer.

Prints images/s of each, measured side by side in one run (alternating, best of --repeats), and the
ratio trainer / bare (target ≥ 0.97). The trainer's extras — EMA, the EMA↔online L2, per-step metric
lines, the finiteness check — are what the ratio prices.

    python bench/train_efficiency.py [--preset demo] [--steps 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.dataset import train_dataset
from nanxi_tune.engine.data.loader import EpochSampler, make_loader
from nanxi_tune.engine.model.detector import build_model
from nanxi_tune.engine.model.targets import build_targets
from nanxi_tune.engine.run.device import pick_device
from nanxi_tune.engine.train.trainer import Trainer
from nanxi_tune.engine.train.optim import param_groups


def bare_loop(cfg: C.Config, steps: int, warmup: int) -> float:
    """images/s of the plainest correct loop over the same data."""
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)
    ds = train_dataset(cfg, cfg.train.seed)
    model = build_model(cfg, ds.num_classes).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.lr,
                            betas=(cfg.train.beta1, cfg.train.beta2))
    loader = make_loader(ds, EpochSampler(len(ds), cfg.train.seed, 0), cfg.data.batch_size, cfg.data.workers,
                         device.type, drop_last=True)
    it, t0 = iter(loader), 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        try:
            images, targets = next(it)
        except StopIteration:
            it = iter(loader)
            images, targets = next(it)
        images = images.to(device)
        losses = model(images, build_targets(targets, ds.num_classes, cfg, device))
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        losses["loss"].item()  # a loop that logs its loss syncs once per step too
    return steps * cfg.data.batch_size / (time.perf_counter() - t0)


def trainer_loop(cfg: C.Config, steps: int, warmup: int) -> float:
    times: dict[int, float] = {}

    def on_event(e) -> None:
        if e.kind == "step":
            times[e.step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        Trainer(cfg, Path(tmp) / "run", on_event, max_steps=warmup + steps).run()
    return steps * cfg.data.batch_size / (times[warmup + steps] - times[warmup])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = C.load_preset(args.preset)
    # No evaluation inside the measured window: evaluation is not training throughput.
    cfg = C.with_updates(cfg, {"eval.interval": 100000, "train.epochs": 1000})
    bare, trainer = [], []
    for _ in range(args.repeats):  # alternate so drift on a shared machine hits both
        bare.append(bare_loop(cfg, args.steps, args.warmup))
        trainer.append(trainer_loop(cfg, args.steps, args.warmup))
    b, t = max(bare), max(trainer)
    print(f"preset {args.preset}: batch {cfg.data.batch_size}, {cfg.preprocess.input_size} px, {args.steps} steps, "
          f"device {pick_device(cfg.train.device)}")
    print(f"bare PyTorch loop : {b:8.1f} images/s")
    print(f"nanxi-tune Trainer: {t:8.1f} images/s")
    print(f"train efficiency trainer/bare: {t / b:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
