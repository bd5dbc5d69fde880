"""Resize on the uint8 image vs the former float path: ms per image and the trainer's images/s, side by side.

The dataset resizes the decoded uint8 image (PyTorch's vectorised bilinear/antialias kernel) and normalises
after; it used to convert to float first and resize the float image. This prints both paths on BCCD's images
(the ``demo`` preset's when BCCD is absent): the resize + normalise time per image, the largest pixel difference
(in 1/255 steps), and images/s of the same short bccd-preset training run with each path (alternating, best of
``--repeats``), so the gain is read where it counts.

    python bench/resize.py [--steps 30] [--repeats 2] [--data ../shared/datasets/bccd]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data import dataset as D
from nanxi_tune.engine.train.trainer import Trainer


def float_resize(self, img: torch.Tensor, boxes: torch.Tensor):
    """The former ``CocoDetection._resize``: float first, then resize (kept here as the reference)."""
    S = self.cfg.preprocess.input_size
    h, w = img.shape[-2:]
    scale = min(S / h, S / w) if self.cfg.preprocess.resize == "letterbox" else min(1.0, S / h, S / w)
    x = img.float().div_(255.0)
    if scale != 1.0:
        x = TF.interpolate(x[None], scale_factor=scale, mode="bilinear", align_corners=False,
                           antialias=scale < 1.0, recompute_scale_factor=False)[0].clamp_(0, 1)
    nh, nw = min(x.shape[-2], S), min(x.shape[-1], S)
    px, py = ((S - nw) // 2, (S - nh) // 2) if self.cfg.preprocess.resize == "letterbox" else (0, 0)
    mean = torch.tensor(self.cfg.normalize.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(self.cfg.normalize.std, dtype=torch.float32).view(3, 1, 1)
    canvas = torch.zeros(3, S, S, dtype=torch.float32)
    canvas[:, py:py + nh, px:px + nw] = (x[:, :nh, :nw] - mean) / std
    boxes = boxes.float() * scale
    boxes[:, 0::2] += px
    boxes[:, 1::2] += py
    boxes[:, 0::2] = boxes[:, 0::2].clamp(px, px + w * scale)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(py, py + h * scale)
    return canvas, boxes.contiguous(), float(scale), (float(px), float(py))


def config(data: Path) -> C.Config:
    if (data / "annotations/instances_train.json").exists():
        return C.with_updates(C.load_preset("bccd"), {"data.train": str(data / "annotations/instances_train.json"),
                                                       "data.val": str(data / "annotations/instances_val.json")})
    return C.load_preset("demo")


def per_image(cfg: C.Config, n: int = 64) -> None:
    ds = D.train_dataset(cfg, 0)
    images = [ds._read(ds.ids[i]) for i in range(min(n, len(ds)))]
    boxes = torch.zeros(0, 4)
    new = D.CocoDetection._resize
    ms, diff = {}, 0.0
    for name, fn in (("float (before)", float_resize), ("uint8 (now)", new)) * 2:
        t = time.perf_counter()
        outs = [fn(ds, im, boxes)[0] for im in images]
        ms[name] = (time.perf_counter() - t) / len(images) * 1000
        if name.startswith("uint8"):
            ref = [float_resize(ds, im, boxes)[0] for im in images]
            std = torch.tensor(cfg.normalize.std).view(3, 1, 1)
            diff = max(float(((a - b) * std * 255).abs().max()) for a, b in zip(outs, ref))
    print(f"resize + normalise per image ({images[0].shape[-1]}×{images[0].shape[-2]} → "
          f"{cfg.preprocess.input_size}): float {ms['float (before)']:.2f} ms, uint8 {ms['uint8 (now)']:.2f} ms, "
          f"ratio {ms['float (before)'] / ms['uint8 (now)']:.2f}×; largest pixel difference {diff:.2f}/255")


def images_per_s(cfg: C.Config, steps: int) -> float:
    seen: list[float] = []

    def on_event(e) -> None:
        if e.kind == "step" and e.step > 5:
            seen.append(e.images_per_s)

    with tempfile.TemporaryDirectory() as tmp:
        Trainer(C.with_updates(cfg, {"train.max_steps": steps, "train.log_every": 1, "eval.interval": 10000,
                                     "diagnose.enabled": False}), Path(tmp) / "run", on_event).run()
    return sorted(seen)[len(seen) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/bccd"))
    a = ap.parse_args()
    cfg = config(Path(a.data))
    per_image(cfg)
    new = D.CocoDetection._resize
    best = {"float (before)": 0.0, "uint8 (now)": 0.0}
    for _ in range(a.repeats):
        for name, fn in (("float (before)", float_resize), ("uint8 (now)", new)):
            D.CocoDetection._resize = fn
            best[name] = max(best[name], images_per_s(cfg, a.steps))
    D.CocoDetection._resize = new
    print(f"training images/s ({cfg.preset} preset, median of steps 6-{a.steps}, best of {a.repeats}): "
          f"float {best['float (before)']:.1f}, uint8 {best['uint8 (now)']:.1f}, "
          f"ratio {best['uint8 (now)'] / best['float (before)']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
