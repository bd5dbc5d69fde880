"""Training targets: vectorised ``build_targets`` vs the per-object ``build_targets_loop``, and the
targets' share of one training step.

On a realistic batch (640 px, batch 16, ~20 objects per image with COCO-like sizes, 80 classes) it
prints the loop / vectorised time ratio (target >= 20x). The vectorised builder returns its targets
sparse, as the loss reads them (a dense 16×80×160×160 float heatmap is 131 MB of mostly zeros, and
zero-filling it on a CPU costs more than building every Gaussian); the loop is the per-object reference
and paints dense maps. The ratio with the vectorised builder also filling the dense maps is printed
beside it, and the focal loss (forward + backward) reading a dense heatmap vs the sparse one. Then it
times one training step (build_targets + forward + loss + backward of
``build_model``) and prints the share the targets take of it (target < 5 %). The step on a CPU defaults
to a smaller setting (--step-size / --step-batch), named in the output.

    python bench/targets.py [--device cpu|cuda] [--repeats 5] [--step-size 256] [--step-batch 8]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from nanxi_tune.engine.config import Config, with_updates
from nanxi_tune.engine.model.loss import focal_loss, focal_loss_sparse
from nanxi_tune.engine.model.targets import build_targets, build_targets_loop


def realistic_batch(size: int, batch: int, objects: int, classes: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        n = int(torch.randint(objects // 2, objects * 3 // 2 + 1, (1,), generator=g))
        side = torch.exp(torch.empty(n, 1).uniform_(math.log(8), math.log(0.6 * size), generator=g))
        aspect = torch.exp(torch.empty(n, 1).uniform_(-0.7, 0.7, generator=g))
        wh = torch.cat([side * aspect.sqrt(), side / aspect.sqrt()], 1).clamp(max=size)
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, classes, (n,), generator=g)})
    return out


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of fn() over repeats (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--objects", type=int, default=20)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on cpu: a shared, "
                   "oversubscribed CPU makes multi-threaded timings erratic)")
    p.add_argument("--step-size", type=int, default=None, help="input size of the step (default 640 on "
                   "cuda, 256 on cpu)")
    p.add_argument("--step-batch", type=int, default=None, help="batch of the step (default 16 on cuda, 8 on cpu)")
    a = p.parse_args()
    dev = a.device
    if a.threads or not dev.startswith("cuda"):
        torch.set_num_threads(a.threads or 1)
    cfg = with_updates(Config(), {"preprocess.input_size": a.size})
    batch = realistic_batch(a.size, a.batch, a.objects, a.classes)
    n_obj = sum(len(t["boxes"]) for t in batch)
    H = a.size // cfg.neck.out_stride
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}, "
          f"{torch.get_num_threads()} threads); batch {a.batch} × {a.size} px, {n_obj} objects, {a.classes} classes, "
          f"maps {H}×{H}")

    fast = lambda: build_targets(batch, a.classes, cfg, dev)  # noqa: E731
    fast_dense = lambda: build_targets(batch, a.classes, cfg, dev, dense=True)  # noqa: E731
    slow = lambda: build_targets_loop(batch, a.classes, cfg, dev)  # noqa: E731
    ref, got = slow(), fast_dense()
    assert all(torch.allclose(ref[k], got[k], atol=1e-6) for k in ref), "vectorised != loop"
    t_fast, t_dense, t_slow = (timed(f, dev, a.repeats) for f in (fast, fast_dense, slow))
    print(f"build_targets (vectorised, sparse)         : {t_fast * 1e3:8.2f} ms  "
          f"({len(got['heat_index'])} touched cells of {got['heatmap'].numel()})")
    print(f"build_targets (vectorised, + dense maps)   : {t_dense * 1e3:8.2f} ms")
    print(f"build_targets_loop (per object, dense)     : {t_slow * 1e3:8.2f} ms")
    print(f"targets vectorised vs loop: {t_slow / t_fast:.1f}x (target >= 20x)")
    print(f"  for reference, if the vectorised builder also filled the dense maps: {t_slow / t_dense:.1f}x")

    # --- what the sparse form saves in the loss: the focal loss, forward + backward ---
    heat = torch.randn(a.batch, a.classes, H, H, device=dev, requires_grad=True)
    dense_t = fast_dense()

    def focal(sparse: bool):
        heat.grad = None
        p = torch.sigmoid(heat)
        if sparse:
            loss = focal_loss_sparse(p, dense_t["heat_index"], dense_t["heat_value"], dense_t["num_pos"], logits=heat)
        else:
            loss = focal_loss(p, dense_t["heatmap"], dense_t["num_pos"], logits=heat)
        loss.backward()

    t_fd, t_fs = timed(lambda: focal(False), dev, a.repeats), timed(lambda: focal(True), dev, a.repeats)
    print(f"focal loss forward + backward: dense heatmap {t_fd * 1e3:.1f} ms, sparse {t_fs * 1e3:.1f} ms "
          f"({t_fd / t_fs:.2f}x)")

    # --- share of one training step ---
    step_size = a.step_size or (a.size if dev.startswith("cuda") else 256)
    step_batch = a.step_batch or (a.batch if dev.startswith("cuda") else 8)
    try:
        from nanxi_tune.engine.model.detector import build_model
    except Exception as err:  # noqa: BLE001 - the model is optional for this benchmark
        print(f"targets share of a training step: unavailable (engine.model.detector: {err})")
        return
    scfg = with_updates(Config(), {"preprocess.input_size": step_size})
    sbatch = realistic_batch(step_size, step_batch, a.objects, a.classes, seed=1)
    torch.manual_seed(0)
    model = build_model(scfg, a.classes).to(dev).train()
    images = torch.randn(step_batch, 3, step_size, step_size, device=dev)

    def step():
        maps = build_targets(sbatch, a.classes, scfg, dev)
        model.zero_grad(set_to_none=True)
        out = model(images, maps)
        out["loss"].backward()

    t_step = timed(step, dev, max(2, a.repeats // 2))
    t_tg = timed(lambda: build_targets(sbatch, a.classes, scfg, dev), dev, a.repeats)
    print(f"training step ({step_batch} × {step_size} px, default model, {a.classes} classes): "
          f"{t_step * 1e3:.1f} ms, of which targets {t_tg * 1e3:.2f} ms")
    print(f"targets share of a training step: {100 * t_tg / t_step:.2f} % (target < 5 %)")


if __name__ == "__main__":
    main()
