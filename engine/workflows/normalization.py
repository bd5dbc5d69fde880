"""特征归一化 per-channel mean/std computed after augmentation (样本增广之后进行计算).

The samples come from the training set's own train-mode path — the same (epoch, index) keys, in the same
epoch order and with the same per-sample seeds a run would use — captured after augmentation and resize,
before normalisation, in [0, 1] units. Padding added by the resize (not image content) is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .. import config as C

Progress = Callable[[int, int], None]  # (done, total)

IDENTITY = {"normalize.mean": [0.0, 0.0, 0.0], "normalize.std": [1.0, 1.0, 1.0]}


@dataclass
class ChannelStats:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    samples: int
    pixels: int

    def rounded(self, digits: int = 4) -> tuple[list[float], list[float]]:
        return [round(m, digits) for m in self.mean], [round(s, digits) for s in self.std]


def sample_keys(n_images: int, seed: int, samples: int) -> Iterator[tuple[int, int]]:
    """The (epoch, index) keys a run draws, in order: epoch 0's shuffled order, then epoch 1's, …"""
    from ..data.loader import EpochSampler

    epoch, left = 0, samples
    while left > 0:
        keys = list(EpochSampler(n_images, seed, epoch))[:left]
        yield from keys
        left -= len(keys)
        epoch += 1


def augmented_pixels(cfg: C.Config, samples: int, seed: int | None = None) -> Iterator[tuple["object", "object"]]:
    """(image (3, H, W) float in [0, 1] after augmentation + resize, mask (H, W) bool of real pixels) per sample."""
    import torch

    from ..data.dataset import train_dataset

    seed = cfg.train.seed if seed is None else seed
    raw_cfg = C.with_updates(cfg, IDENTITY, "stats")  # the dataset's own path with normalisation switched off
    ds = train_dataset(raw_cfg, seed)
    resize = ds._resize
    seen: dict[str, "torch.Tensor"] = {}

    def capture(img, boxes):  # the dataset calls _resize with the augmented uint8 image
        seen["ones"] = resize(torch.full_like(img, 255), boxes[:0])[0]
        return resize(img, boxes)

    ds._resize = capture
    try:
        for key in sample_keys(len(ds), seed, samples):
            image, _ = ds[key]
            yield image, seen["ones"][0] > 0.5
    finally:
        ds._resize = resize


def compute(cfg: C.Config, samples: int = 500, seed: int | None = None, progress: Progress | None = None
            ) -> ChannelStats:
    """Per-channel mean/std over ``samples`` augmented training samples (float64 sums)."""
    import torch

    if samples < 1:
        raise ValueError(f"samples = {samples}: need at least 1")
    s1 = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    count = 0
    done = 0
    for image, mask in augmented_pixels(cfg, samples, seed):
        px = image[:, mask].double()
        s1 += px.sum(1)
        s2 += (px * px).sum(1)
        count += px.shape[1]
        done += 1
        if progress:
            progress(done, samples)
    if count == 0:
        raise ValueError("no image pixels in the sampled training images")
    mean = s1 / count
    var = (s2 / count - mean * mean).clamp_min(0)
    std = var.sqrt()
    return ChannelStats(tuple(float(m) for m in mean), tuple(max(float(s), 1e-6) for s in std), done, count)


def updates(stats: ChannelStats, digits: int = 4) -> dict[str, Any]:
    """The config changes ``stats`` make: normalize.mean/std (a zero std kept positive), normalize.source."""
    mean, std = stats.rounded(digits)
    std = [s if s > 0 else 10 ** -digits for s in std]
    return {"normalize.mean": mean, "normalize.std": std, "normalize.source": "computed"}


def apply(cfg: C.Config, stats: ChannelStats, digits: int = 4) -> C.Config:
    """``cfg`` with normalize.mean/std set from ``stats`` and normalize.source = "computed"."""
    return C.with_updates(cfg, updates(stats, digits), "stats")


def set_args(stats: ChannelStats, digits: int = 4) -> str:
    mean, std = stats.rounded(digits)
    def toml(xs: list[float]) -> str:
        return "[" + ",".join(f"{x:g}" for x in xs) + "]"

    return f"normalize.mean={toml(mean)} normalize.std={toml(std)} normalize.source=computed"


def finite(stats: ChannelStats) -> bool:
    return all(math.isfinite(x) for x in (*stats.mean, *stats.std))
