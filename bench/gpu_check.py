"""The GPU check: the coco-640 preset's model trained at 640 px in bf16 (train.precision) and channels_last (optionally
torch.compile), on synthetic data generated on the device (random images and boxes → build_targets on the
device), so the loader is not measured. Prints images/s, step time, peak memory and the fraction of wall time
the GPU is busy (kernel time from torch.profiler over the measured window ÷ its wall time).

One command on a CUDA machine:

    .venv/bin/python bench/gpu_check.py                    # coco-640, 640 px, its batch (32), bf16, channels_last
    .venv/bin/python bench/gpu_check.py --compile          # + torch.compile
    .venv/bin/python bench/gpu_check.py --batch 64 --steps 50

On a machine without CUDA, ``--cpu-smoke`` runs the same code path on the CPU at a tiny size (128 px, batch 2,
3 steps, fp32, no profiler of GPU kernels), so the script is known to work before a GPU is at hand.

Each step is the trainer's own: forward with per-branch losses, backward, gradient-norm clip, AdamW, EMA update.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def synthetic_batch(batch: int, size: int, num_classes: int, device, gen) -> tuple:
    """Random images and 1..20 random boxes per image, all created on ``device``."""
    import torch

    images = torch.randn(batch, 3, size, size, device=device, generator=gen)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 21, (1,), device=device, generator=gen))
        wh = torch.rand(n, 2, device=device, generator=gen) * (size * 0.4) + 4
        c = torch.rand(n, 2, device=device, generator=gen) * size
        boxes = torch.cat([c - wh / 2, c + wh / 2], 1).clamp_(0, size)
        labels = torch.randint(0, num_classes, (n,), device=device, generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="coco-640")
    ap.add_argument("--size", type=int, help="input size (default: the preset's, 640)")
    ap.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--steps", type=int, default=30, help="measured steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile-steps", type=int, default=5, help="steps under torch.profiler for the busy fraction")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--no-bf16", action="store_true", help="fp32 instead of bf16 autocast")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny run of the same path on the CPU")
    a = ap.parse_args(argv)

    import torch
    from torch.optim.swa_utils import AveragedModel

    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.model.detector import build_model
    from nanxi_tune.engine.model.targets import build_targets
    from nanxi_tune.engine.train.optim import ema_avg_fn, param_groups

    if a.cpu_smoke:
        device = torch.device("cpu")
        size, batch, steps, warmup, bf16 = a.size or 128, a.batch or 2, 3, 1, False
        a.profile_steps = min(a.profile_steps, 2)
    else:
        if not torch.cuda.is_available():
            print("gpu check: CUDA is not available here; run with --cpu-smoke to check the code path on the CPU",
                  file=sys.stderr)
            return 2
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        size, batch, steps, warmup, bf16 = a.size, a.batch, a.steps, a.warmup, not a.no_bf16
    cfg = C.load_preset(a.preset)
    updates = {"train.precision": "bf16" if bf16 else "fp32"}  # the detector's own autocast (train.precision)
    if size:
        updates["preprocess.input_size"] = size
    if batch:
        updates["data.batch_size"] = batch
    cfg = C.with_updates(cfg, updates)
    size, batch = cfg.preprocess.input_size, cfg.data.batch_size
    channels_last = not a.no_channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    torch.manual_seed(0)
    model = build_model(cfg, a.classes).to(device).to(memory_format=fmt)
    ema = AveragedModel(model, multi_avg_fn=ema_avg_fn(cfg.train.ema_decay, cfg.train.ema_ramp), use_buffers=True)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.lr,
                                  betas=(cfg.train.beta1, cfg.train.beta2))
    forward = torch.compile(model) if a.compile else model
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    batches = [synthetic_batch(batch, size, a.classes, device, gen) for _ in range(4)]
    batches = [(x.contiguous(memory_format=fmt), t) for x, t in batches]

    def step(i: int) -> float:
        images, targets = batches[i % len(batches)]
        tmaps = build_targets(targets, a.classes, cfg, device)
        losses = forward(images, tmaps)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
        optimizer.step()
        ema.update_parameters(model)
        return float(losses["loss"].detach())  # the trainer's one host sync per step

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync()
    t_warm = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    t_start = time.perf_counter()
    for i in range(steps):
        t = time.perf_counter()
        losses.append(step(i))
        sync()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - t_start
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses)):
        print(f"gpu check: non-finite loss {losses}", file=sys.stderr)
        return 1

    # busy fraction: device kernel time over wall time across a profiled window
    busy = None
    if device.type == "cuda" and a.profile_steps:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sync()
            tp = time.perf_counter()
            for i in range(a.profile_steps):
                step(i)
            sync()
            wall_p = time.perf_counter() - tp
        kernel_us = 0.0
        for e in prof.key_averages():
            kernel_us += getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        busy = min(1.0, kernel_us / 1e6 / wall_p)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        name = torch.cuda.get_device_name(device)
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS on the CPU
        name = "cpu"

    med = statistics.median(times)
    print(f"gpu check: {name}, preset {a.preset}, {size} px, batch {batch}, {a.classes} classes, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {'channels_last' if channels_last else 'contiguous'}, "
          f"compile {'on' if a.compile else 'off'}, torch {torch.__version__}")
    print(f"warm-up: {warmup} steps in {t_warm:.1f} s; measured: {steps} steps in {wall:.2f} s; final loss "
          f"{losses[-1]:.3f}")
    print(f"images/s: {batch * steps / wall:.1f}")
    print(f"step time: median {med * 1e3:.1f} ms, p90 {sorted(times)[int(0.9 * (len(times) - 1))] * 1e3:.1f} ms")
    print(f"peak memory: {peak / 2**30:.2f} GiB ({'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'peak RSS'})")
    if busy is not None:
        print(f"GPU busy: {100 * busy:.1f} % of wall time (kernel time / wall over {a.profile_steps} profiled steps)")
    else:
        print("GPU busy: n/a (no CUDA device)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
