"""The embedded synthetic COCO set: deterministic, cached, readable by pycocotools."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from nanxi_tune.engine.data.synthetic import CATEGORIES, ensure_synthetic


def _bytes(images_dir):
    return {p.name: p.read_bytes() for p in sorted(images_dir.iterdir())}


def test_same_params_give_identical_files(tmp_path):
    a_img, a_ann = ensure_synthetic("train", 6, 3, 64, cache_dir=tmp_path / "a")
    b_img, b_ann = ensure_synthetic("train", 6, 3, 64, cache_dir=tmp_path / "b")
    assert a_ann != b_ann
    assert a_ann.read_bytes() == b_ann.read_bytes()
    assert _bytes(a_img) == _bytes(b_img)
    assert len(_bytes(a_img)) == 6


def test_seed_split_and_style_change_the_set(tmp_path):
    base_img, base = ensure_synthetic("train", 6, 0, 64, cache_dir=tmp_path)
    other_img, other = ensure_synthetic("train", 6, 1, 64, cache_dir=tmp_path)
    val_img, val = ensure_synthetic("val", 6, 0, 64, cache_dir=tmp_path)
    shift_img, shift = ensure_synthetic("val", 6, 0, 64, "shifted", cache_dir=tmp_path)
    assert len({base.parent, other.parent, val.parent, shift.parent}) == 4
    pictures = [_bytes(d) for d in (base_img, other_img, val_img, shift_img)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert pictures[i]["000001.png"] != pictures[j]["000001.png"]
    assert json.loads(base.read_text())["annotations"] != json.loads(other.read_text())["annotations"]


def test_readable_by_pycocotools_and_boxes_valid(tmp_path):
    from pycocotools.coco import COCO

    img_dir, ann = ensure_synthetic("train", 20, 0, 64, cache_dir=tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    assert [c["name"] for c in coco.loadCats([1, 2, 3])] == [c["name"] for c in CATEGORIES]
    assert len(coco.getImgIds()) == 20
    assert len(coco.getAnnIds()) >= 20
    sizes = set()
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(img_dir / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        assert 48 <= img["width"] <= 64 and 48 <= img["height"] <= 64
        sizes.add((img["width"], img["height"]))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert 1 <= len(anns) <= 6
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w >= 6 and h >= 6 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert a["iscrowd"] == 0 and a["area"] > 0
    assert len(sizes) > 5  # sizes vary, not always square


def test_objects_stand_out_from_the_background(tmp_path):
    img_dir, ann = ensure_synthetic("train", 8, 0, 96, cache_dir=tmp_path)
    data = json.loads(ann.read_text())
    diffs = []
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        if a["category_id"] != 2 or w < 12:
            continue
        name = f"{a['image_id']:06d}.png"
        arr = np.asarray(Image.open(img_dir / name).convert("RGB"), dtype=np.float32)
        inside = arr[y + 3:y + h - 3, x + 3:x + w - 3].reshape(-1, 3).mean(0)
        diffs.append(np.abs(inside - arr.reshape(-1, 3).mean(0)).sum())
    assert diffs and np.median(diffs) > 40


def test_cache_is_reused_and_env_var_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("NANXI_TUNE_CACHE", str(tmp_path / "env"))
    img_dir, ann = ensure_synthetic("val", 4, 0, 64)
    assert str(ann).startswith(str(tmp_path / "env" / "synthetic"))
    stamp = ann.stat().st_mtime_ns
    img_dir2, ann2 = ensure_synthetic("val", 4, 0, 64)
    assert (img_dir2, ann2) == (img_dir, ann) and ann.stat().st_mtime_ns == stamp
    leftovers = [p for p in (tmp_path / "env" / "synthetic").iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


def test_damaged_cache_is_rebuilt(tmp_path):
    img_dir, ann = ensure_synthetic("train", 4, 0, 64, cache_dir=tmp_path)
    before = _bytes(img_dir)
    (img_dir / "000002.png").unlink()
    img_dir, ann = ensure_synthetic("train", 4, 0, 64, cache_dir=tmp_path)
    assert _bytes(img_dir) == before


def test_shifted_style_looks_different(tmp_path):
    same_img, _ = ensure_synthetic("val", 12, 0, 64, "same", cache_dir=tmp_path)
    shift_img, shift_ann = ensure_synthetic("val", 12, 0, 64, "shifted", cache_dir=tmp_path)

    def roughness(d):  # mean absolute difference between neighbouring pixels: texture + noise
        vals = []
        for p in sorted(d.iterdir()):
            a = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
            vals.append(np.abs(np.diff(a, axis=1)).mean())
        return float(np.mean(vals))

    assert roughness(shift_img) > 1.5 * roughness(same_img)
    sizes = [a["bbox"][2] for a in json.loads(shift_ann.read_text())["annotations"]]
    assert max(sizes) <= 0.3 * 64 + 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        ensure_synthetic("train", 4, 0, 64, style="weird")


def test_large_style_has_few_objects_filling_the_frame(tmp_path):
    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.data.dataset import resolve

    _img, ann = ensure_synthetic("train", 40, 0, 128, "large", cache_dir=tmp_path)
    d = json.loads(ann.read_text())
    per_image = {im["id"]: [] for im in d["images"]}
    for a in d["annotations"]:
        per_image[a["image_id"]].append(a["bbox"])
    sides = {im["id"]: min(im["width"], im["height"]) for im in d["images"]}
    assert all(1 <= len(b) <= 3 for b in per_image.values())
    assert all(max(w, h) >= 0.35 * sides[i] - 1 for i, boxes in per_image.items() for _x, _y, w, h in boxes)
    # one object filling half the frame is common, not a rarity
    half = sum(any(w * h >= 0.25 * sides[i] ** 2 for _x, _y, w, h in b) for i, b in per_image.items())
    assert half >= 10

    cfg = C.with_updates(C.load_preset("demo"), {"data.synthetic_objects": "large", "data.synthetic_train": 8,
                                                 "preprocess.input_size": 64})
    assert "large" in str(resolve("synthetic", "train", cfg)[1]) and "large" in str(resolve("synthetic", "val", cfg)[1])
    with pytest.raises(C.ConfigError, match="synthetic_val_style = same"):
        C.with_updates(cfg, {"data.synthetic_val_style": "shifted"})
