"""The embedded demo dataset: shapes on textured backgrounds, written as a real COCO set.

``ensure_synthetic`` generates (once, then reuses from a cache folder) a deterministic set of
PNG images and an instances JSON from ``(split, n, seed, size, style)``:

* 3 classes — circle (id 1), square (id 2), triangle (id 3); 1–6 objects per image, sides from
  8 px up to ~45 % of the image side, random saturated colours, some overlap allowed;
* textured backgrounds: low-saturation gradients, low-frequency colour blobs, stripes and
  per-pixel noise (the noise also covers the objects);
* image sides vary between 0.75×size and size (not always square), so resize modes matter;
* ``style="shifted"`` draws from a visibly different distribution: checkerboard / dot textures,
  stronger noise, smaller objects, and inverted colours — a reproducible distribution shift;
* ``style="large"``: the same look with 1–3 objects an image, sides from 35 % to 90 % of the image side
  (one object filling half the frame) — the opposite of BCCD's many small cells.

Each image has its own ``numpy`` Generator seeded from (version, seed, split, style, index), so
train and val never share a random stream. A set is written to a temporary folder and renamed
into place, so concurrent processes never see a partial set.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

VERSION = 1
CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
STYLES = ("same", "shifted", "large")


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else $NANXI_TUNE_CACHE, else ~/.cache/nanxi-tune."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("NANXI_TUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "nanxi-tune"


def dataset_key(split: str, n: int, seed: int, size: int, style: str) -> str:
    return f"{split}_n{n}_seed{seed}_size{size}_{style}_v{VERSION}"


def ensure_synthetic(split: str, n: int, seed: int, size: int, style: str = "same",
                     cache_dir: Path | None = None) -> tuple[Path, Path]:
    """(images_dir, instances_json) of the synthetic set, generated on first use."""
    if style not in STYLES:
        raise ValueError(f"synthetic style must be one of {STYLES}, not {style!r}")
    if n < 1 or size < 16:
        raise ValueError("synthetic sets need n >= 1 images of size >= 16")
    base = cache_root(cache_dir) / "synthetic"
    final = base / dataset_key(split, n, seed, size, style)
    ann = final / f"instances_{split}.json"
    if _complete(final, ann, n):
        return final / "images", ann
    if final.exists():  # damaged (files deleted by hand): rebuild it
        shutil.rmtree(final, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _generate(tmp, split, n, seed, size, style)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: use theirs
            if not _complete(final, ann, n):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "images", ann


def _complete(final: Path, ann: Path, n: int) -> bool:
    if not ann.is_file():
        return False
    try:
        return sum(1 for _ in (final / "images").iterdir()) == n
    except OSError:
        return False


def _generate(root: Path, split: str, n: int, seed: int, size: int, style: str) -> None:
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    images, annotations = [], []
    split_code, style_code = zlib.crc32(split.encode()), zlib.crc32(style.encode())
    for i in range(n):
        rng = np.random.default_rng([VERSION, seed, split_code, style_code, i])
        arr, objects = render(rng, size, style)
        h, w = arr.shape[:2]
        image_id = i + 1
        name = f"{image_id:06d}.png"
        Image.fromarray(arr).save(img_dir / name, compress_level=1)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for cat, (x, y, bw, bh), area in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, bw, bh], "area": area, "iscrowd": 0})
    data = {
        "info": {"description": f"nanxi-tune synthetic shapes ({split}, style {style})", "version": str(VERSION),
                 "seed": seed, "size": size, "n": n},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    (root / f"instances_{split}.json").write_text(json.dumps(data), encoding="utf-8")


# --- rendering ------------------------------------------------------------------------------

def _background(rng: np.random.Generator, h: int, w: int, style: str) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if style == "same":
        grey = rng.uniform(60, 200)
        c0 = grey + rng.uniform(-25, 25, 3)
        c1 = rng.uniform(60, 200) + rng.uniform(-25, 25, 3)
    else:
        c0 = rng.uniform(20, 235, 3)
        c1 = rng.uniform(20, 235, 3)
    theta = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    # low-frequency colour blobs: a coarse random grid upsampled bilinearly
    g = int(rng.integers(3, 8))
    coarse = rng.uniform(-1, 1, (g, g, 3)).astype(np.float32)
    blobs = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((w, h), Image.BILINEAR))
                      for c in range(3)], axis=-1)
    img = img + blobs * rng.uniform(10, 35)
    if style == "same":
        if rng.random() < 0.5:  # stripes
            phi = rng.uniform(0, np.pi)
            period = rng.uniform(6, 20)
            s = np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period)
            img = img + (s * rng.uniform(8, 22))[..., None]
    else:
        if rng.random() < 0.6:  # checkerboard
            cell = int(rng.integers(4, 12))
            chk = (((xx // cell) + (yy // cell)) % 2) * 2 - 1
            img = img + (chk * rng.uniform(15, 35))[..., None] * rng.uniform(0.5, 1, 3)
        else:  # dots
            period = rng.uniform(5, 10)
            d = np.cos(2 * np.pi * xx / period) * np.cos(2 * np.pi * yy / period)
            img = img + ((d > 0.6) * rng.uniform(25, 45))[..., None]
    return img


def _colour(rng: np.random.Generator, style: str) -> np.ndarray:
    hue = rng.uniform(0, 1)
    sat = rng.uniform(0.55, 1.0) if style == "same" else rng.uniform(0.2, 0.6)
    val = rng.uniform(0.55, 1.0) if style == "same" else rng.uniform(0.3, 0.9)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    rgb = val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)
    return rgb * 255


def render(rng: np.random.Generator, size: int, style: str = "same"
           ) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int], float]]]:
    """One image (H, W, 3) uint8 and its objects [(category_id, (x, y, w, h), area)]."""
    w = int(rng.integers(int(0.75 * size), size + 1))
    h = int(rng.integers(int(0.75 * size), size + 1))
    look = "same" if style == "large" else style  # large objects on the demo's own backgrounds and colours
    bg = _background(rng, h, w, look)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if style == "large":
        lo, hi, count = int(0.35 * min(w, h)), 0.9 * min(w, h), int(rng.integers(1, 4))
    else:
        lo = 8 if style == "same" else 6
        hi, count = max(lo + 1, (0.45 if style == "same" else 0.30) * min(w, h)), int(rng.integers(1, 7))
    boxes: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(count):
        cat = int(rng.integers(1, 4))
        s = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        bw, bh = s, (s if cat != 3 else max(lo, int(round(s * rng.uniform(0.8, 1.0)))))
        for _try in range(30):
            x0 = int(rng.integers(0, w - bw + 1))
            y0 = int(rng.integers(0, h - bh + 1))
            if all(_overlap((x0, y0, bw, bh), b) <= 0.35 for b in boxes):
                break
        else:
            continue
        centre_bg = bg[y0 + bh // 2, x0 + bw // 2]
        for _try in range(10):
            col = _colour(rng, look)
            if np.abs(col - centre_bg).sum() >= 120:
                break
        fill = tuple(int(c) for c in col)
        x1, y1 = x0 + bw - 1, y0 + bh - 1
        if cat == 1:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
            area = math.pi * bw * bh / 4
        elif cat == 2:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
            area = float(bw * bh)
        else:
            if rng.random() < 0.5:  # pointing up
                pts = [(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)]
            else:  # pointing down
                pts = [(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)]
            draw.polygon(pts, fill=fill)
            area = bw * bh / 2
        boxes.append((x0, y0, bw, bh))
        objects.append((cat, (x0, y0, bw, bh), round(area, 2)))
    arr = np.asarray(img, dtype=np.float32)
    noise_std = rng.uniform(4, 14) if look == "same" else rng.uniform(12, 24)
    arr = arr + rng.normal(0, noise_std, arr.shape[:2])[..., None] * rng.uniform(0.6, 1.0, 3)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    if style == "shifted":
        arr = 255 - arr
    return arr, objects


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])
