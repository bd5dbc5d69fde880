"""Where a training step's time goes: decode, augmentation, resize + normalise, collate, targets, forward
(+ loss), backward, optimiser (clip + AdamW), EMA (update + the EMA↔online L2), logging (the step's one
host sync) — measured phase by phase in the training thread, the trainer's step rebuilt from its parts.

On BCCD (``../shared/datasets/bccd``, preset ``bccd``; the ``demo`` preset when BCCD is absent) it prints
ms per step and the share of each phase, the data side's share (what loader workers could hide), and
what a cached decode costs (data.cache_mb), then the same steps in the other memory layout side by side
(train.channels_last: NHWC against contiguous NCHW) and the ratio, then in float32 against bfloat16 autocast
(train.precision) and the ratio. Default run: 2 warm-up + 8 measured steps a variant, under 4 minutes on a 2-core
CPU.

    python bench/step_breakdown.py [--steps 8] [--data PATH] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.dataset import train_dataset
from nanxi_tune.engine.data.loader import sample_seed
from nanxi_tune.engine.data.profile import resolve_for_training
from nanxi_tune.engine.data.loader import EpochSampler, collate
from nanxi_tune.engine.model.detector import build_model, count_parameters
from nanxi_tune.engine.model.targets import build_targets
from nanxi_tune.engine.run.device import compute_dtype, memory_format, pick_device
from nanxi_tune.engine.train.optim import ema_avg_fn, param_groups

DATA_PHASES = ("decode", "augment", "resize", "collate")
PHASES = DATA_PHASES + ("targets", "forward", "backward", "optimiser", "ema", "logging")


def config(args) -> tuple[C.Config, str]:
    data = Path(args.data)
    if (data / "annotations/instances_train.json").exists():
        cfg = C.with_updates(C.load_preset("bccd"), {"data.train": str(data / "annotations/instances_train.json"),
                                                      "data.val": str(data / "annotations/instances_val.json")})
        name = "bccd"
    else:
        cfg, name = C.load_preset("demo"), f"demo (no BCCD at {data})"
    cfg = C.with_updates(cfg, {"data.cache_mb": 0} | C.parse_sets(args.sets))
    return resolve_for_training(cfg)[0], name  # neck.out_stride = auto: the stride a run would choose


def measure(cfg: C.Config, ds, device: torch.device, fmt: torch.memory_format, steps: int, warmup: int):
    """(ms per phase, wall s per step, the model) for ``steps`` steps after ``warmup``, model and batches in ``fmt``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, ds.num_classes).to(device, memory_format=fmt)
    ema = AveragedModel(model, multi_avg_fn=ema_avg_fn(cfg.train.ema_decay, cfg.train.ema_ramp), use_buffers=True)
    opt = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.lr,
                            betas=(cfg.train.beta1, cfg.train.beta2))
    bs = cfg.data.batch_size
    order = [k for e in range(1000) for k in EpochSampler(len(ds), cfg.train.seed, e)]
    times: dict[str, float] = defaultdict(float)

    def timed(phase: str, fn, *a):
        sync()
        t = time.perf_counter()
        out = fn(*a)
        sync()
        times[phase] += time.perf_counter() - t
        return out

    def sample(epoch: int, index: int):  # CocoDetection._sample, phase by phase
        image_id = ds.ids[index]
        img = timed("decode", ds._read, image_id)
        boxes_np, labels_np = ds._targets(image_id)
        boxes, labels = torch.from_numpy(boxes_np.copy()), torch.from_numpy(labels_np.copy())
        h, w = img.shape[-2:]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(ds.seed, epoch, index))
            img, boxes, labels = timed("augment", ds._augment, img, boxes, labels)
        image, boxes, scale, pad = timed("resize", ds._resize, img, boxes)
        return image, {"boxes": boxes, "labels": labels}

    def step(i: int) -> None:
        keys = order[i * bs:(i + 1) * bs]
        images, targets = timed("collate", collate, [sample(e, j) for e, j in keys])
        images = timed("collate", lambda: images.to(device, memory_format=fmt))
        tmaps = timed("targets", build_targets, targets, ds.num_classes, cfg, device)
        losses = timed("forward", model, images, tmaps)

        def backward():
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()

        timed("backward", backward)

        def optimise():
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or math.inf)
            opt.step()
            return grad_norm

        grad_norm = timed("optimiser", optimise)

        def ema_step():
            e, o = list(ema.module.parameters()), list(model.parameters())
            l2 = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(torch._foreach_sub(e, o))).float())
            ema.update_parameters(model)
            return l2

        l2 = timed("ema", ema_step)
        keys7 = ("loss", "loss_map", "loss_offset", "loss_shape", "s_map", "s_offset", "s_shape")
        timed("logging", lambda: torch.stack([losses[k].detach().float() for k in keys7]
                                             + [grad_norm.float(), l2]).tolist())

    for i in range(warmup):
        step(i)
    times.clear()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    wall = (time.perf_counter() - t0) / steps
    return {p: times[p] / steps for p in PHASES}, wall, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/bccd"))
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    args = ap.parse_args()
    cfg, name = config(args)
    device = pick_device(cfg.train.device)
    ds = train_dataset(cfg, cfg.train.seed)
    layout = "channels_last" if cfg.train.channels_last else "contiguous"
    per, wall, model = measure(cfg, ds, device, memory_format(cfg.train.channels_last), args.steps, args.warmup)
    total = sum(per.values())
    print(f"step breakdown: {name}, {cfg.preprocess.input_size} px, stride {cfg.neck.out_stride}, batch "
          f"{cfg.data.batch_size}, backbone {cfg.backbone.name} ({count_parameters(model) / 1e6:.2f} M parameters), "
          f"{device.type}, {torch.get_num_threads()} threads, {layout}, precision {cfg.train.precision}, "
          f"{args.steps} steps after {args.warmup} warm-up")
    for p in PHASES:
        print(f"  {p:<10} {per[p] * 1000:8.1f} ms  {100 * per[p] / total:5.1f} %")
    data = sum(per[p] for p in DATA_PHASES)
    print(f"  {'step':<10} {wall * 1000:8.1f} ms  (phases sum {total * 1000:.1f} ms)")
    print(f"data side (decode + augment + resize + collate): {100 * data / total:.1f} % of the step")
    hits = ds.ids[:cfg.data.batch_size]
    ds.cache_limit = 1 << 40  # what data.cache_mb buys: a decode becomes a dict lookup
    for i in hits:
        ds._read(i)
    t = time.perf_counter()
    for i in hits:
        ds._read(i)
    cached = (time.perf_counter() - t) * 1000
    ds.cache_limit = 0
    print(f"decode per step: {per['decode'] * 1000:.1f} ms, cached: {cached:.2f} ms "
          f"(ratio {per['decode'] * 1000 / max(cached, 1e-6):.0f}x)")
    # train.channels_last: the same steps in the other layout, side by side
    other = not cfg.train.channels_last
    _, wall_other, _ = measure(cfg, ds, device, memory_format(other), args.steps, args.warmup)
    cl, co = (wall, wall_other) if cfg.train.channels_last else (wall_other, wall)
    print(f"layout: channels_last {cl * 1000:.1f} ms a step, contiguous {co * 1000:.1f} ms "
          f"(ratio {co / cl:.2f}x faster in channels_last)")
    # train.precision: the same steps in float32 and in bfloat16 autocast, side by side, in the run's layout
    walls = {}
    for precision in ("fp32", "bf16"):
        pcfg = C.with_updates(cfg, {"train.precision": precision})
        walls[precision] = measure(pcfg, ds, device, memory_format(cfg.train.channels_last), args.steps,
                                   args.warmup)[1]
    native = compute_dtype("auto", device.type) is not None
    print(f"precision: fp32 {walls['fp32'] * 1000:.1f} ms a step, bf16 {walls['bf16'] * 1000:.1f} ms "
          f"(ratio {walls['fp32'] / walls['bf16']:.2f}x faster in bf16; native bf16 here: "
          f"{'yes, train.precision = auto uses it' if native else 'no, auto stays fp32'})")


if __name__ == "__main__":
    main()
