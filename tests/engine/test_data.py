"""COCO loading, resize maps, augmentation determinism, resume order, errors that name the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nanxi_tune.engine.config import Config, with_updates
from nanxi_tune.engine.data.dataset import CocoDetection, DataError, eval_dataset, resolve, to_original, train_dataset
from nanxi_tune.engine.data.loader import EpochSampler, collate, make_loader


def _cfg(**updates):
    base = {"preprocess.input_size": 64, "augment.min_iou_random_crop": False, "augment.random_flip": 0.0}
    return with_updates(Config(), base | updates)


def _write_coco(root, images, anns, cats=None, split="train"):
    """images: [(id, file_name, PIL.Image or None)], anns: [(image_id, cat, [x, y, w, h], iscrowd)]."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries = []
    for iid, name, im in images:
        w, h = (im.size if im is not None else (40, 30))
        if im is not None:
            im.save(root / "images" / name)
        entries.append({"id": iid, "file_name": name, "width": w, "height": h})
    data = {"images": entries,
            "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": crowd} for k, (i, c, b, crowd) in enumerate(anns)],
            "categories": cats or [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return root / "images", path


def _rect_image(w, h, box, colour=(255, 255, 255), bg=(0, 0, 0)):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = bg
    x, y, bw, bh = box
    arr[y:y + bh, x:x + bw] = colour
    return Image.fromarray(arr)


def _denorm(img, cfg):
    mean = torch.tensor(cfg.normalize.mean).view(3, 1, 1)
    std = torch.tensor(cfg.normalize.std).view(3, 1, 1)
    return img * std + mean


def _rect_set(tmp_path, sizes, box=(10, 6, 14, 12)):
    images = [(i + 1, f"{i + 1}.png", _rect_image(w, h, box)) for i, (w, h) in enumerate(sizes)]
    anns = [(i + 1, 1 + i % 2, list(box), 0) for i in range(len(sizes))]
    return _write_coco(tmp_path, images, anns)


@pytest.fixture()
def shapes(tmp_path):
    """8 images with two boxes each, for augmentation and loader tests."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(8):
        arr = rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)
        images.append((i + 1, f"{i + 1}.png", Image.fromarray(arr)))
        anns += [(i + 1, 1, [4 + i, 5, 20, 16], 0), (i + 1, 2, [30, 20 + i, 18, 20], 0)]
    return _write_coco(tmp_path, images, anns)


# --- locating data -----------------------------------------------------------------------------

def test_resolve_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("NANXI_TUNE_CACHE", str(tmp_path))
    cfg = _cfg(**{"data.synthetic_train": 5, "data.synthetic_val": 3, "data.synthetic_val_style": "shifted"})
    img_dir, ann = resolve("synthetic", "train", cfg)
    assert len(list(img_dir.iterdir())) == 5 and "same" in ann.parent.name and "size64" in ann.parent.name
    img_dir, ann = resolve("synthetic", "val", cfg)
    assert len(list(img_dir.iterdir())) == 3 and "shifted" in ann.parent.name


def test_resolve_folder_and_json(tmp_path):
    img_dir, ann = _rect_set(tmp_path / "set", [(40, 30)])
    cfg = _cfg()
    assert resolve(str(tmp_path / "set"), "train", cfg) == (img_dir, ann)
    assert resolve(str(ann), "train", cfg) == (img_dir, ann)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "instances_val.json").write_text(ann.read_text())
    assert resolve(str(flat), "val", cfg) == (flat, flat / "instances_val.json")
    with pytest.raises(DataError, match="instances_val.json") as e:
        resolve(str(tmp_path / "set"), "val", cfg)
    assert "data.val" in str(e.value)
    with pytest.raises(DataError, match="nowhere") as e:
        resolve(str(tmp_path / "nowhere"), "train", cfg)
    assert "set data.train" in str(e.value)
    lonely = tmp_path / "lonely" / "a.json"
    lonely.parent.mkdir()
    lonely.write_text("{}")
    with pytest.raises(DataError, match="a.json"):
        resolve(str(lonely), "train", cfg)


# --- decoding ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,ext", [("L", "png"), ("CMYK", "jpg"), ("RGBA", "png"), ("P", "png"), ("RGB", "jpg")])
def test_image_modes_decode_to_rgb(tmp_path, mode, ext):
    rgb = (200, 60, 30)
    base = Image.new("RGB", (32, 24), rgb)
    im = {"L": base.convert("L"), "CMYK": base.convert("CMYK"), "RGBA": base.convert("RGBA"),
          "P": base.convert("P", palette=Image.ADAPTIVE), "RGB": base}[mode]
    assert im.mode == mode
    img_dir, ann = _write_coco(tmp_path, [(1, f"x.{ext}", im)], [(1, 1, [2, 2, 10, 10], 0)])
    cfg = _cfg()
    img, tgt = CocoDetection(ann, img_dir, cfg, train=False)[0]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32
    px = _denorm(img, cfg)[:, 12, 16] * 255
    want = torch.tensor(base.convert("L").getpixel((0, 0)) if mode == "L" else rgb, dtype=torch.float32)
    assert torch.allclose(px, want.expand(3), atol=12), (px, want)
    assert tgt["orig_size"] == (24, 32)


# --- resize maps -------------------------------------------------------------------------------

def _bright_extent(img, cfg):
    """(x0, y0, x1, y1) extent of pixels brighter than half, in canvas pixel edges."""
    on = _denorm(img, cfg).mean(0) > 0.5
    ys, xs = torch.nonzero(on, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("resize,size,expect_scale,expect_pad", [
    ("same_padding", (48, 40), 1.0, (0.0, 0.0)),           # smaller than the canvas: unscaled, top-left
    ("same_padding", (96, 80), 64 / 96, (0.0, 0.0)),       # larger: downscaled keeping aspect
    ("letterbox", (40, 32), 64 / 40, (0.0, 6.0)),          # scaled up to fit, centred vertically
    ("letterbox", (36, 48), 64 / 48, (8.0, 0.0)),          # portrait: centred horizontally
])
def test_resize_maps_boxes_exactly(tmp_path, resize, size, expect_scale, expect_pad):
    box = (10, 6, 14, 12)
    img_dir, ann = _rect_set(tmp_path, [size], box)
    cfg = _cfg(**{"preprocess.resize": resize})
    img, tgt = CocoDetection(ann, img_dir, cfg, train=False)[0]
    assert tgt["scale"] == pytest.approx(expect_scale) and tgt["pad"] == expect_pad
    mapped = tgt["boxes"][0]
    want = torch.tensor([10, 6, 24, 18], dtype=torch.float32) * expect_scale + torch.tensor(expect_pad * 2)[[0, 1, 0, 1]]
    assert torch.allclose(mapped, want, atol=1e-4)
    assert (_bright_extent(img, cfg) - mapped).abs().max() <= 1.0
    # the padding holds the normalised mean (zeros), the image area is not padding
    w, h = size
    right = int(expect_pad[0] + round(w * expect_scale)) + 1
    if right < 64:
        assert img[:, :, right:].abs().max() == 0
    assert torch.allclose(to_original(tgt["boxes"], tgt["scale"], tgt["pad"]),
                          torch.tensor([[10.0, 6.0, 24.0, 18.0]]), atol=1e-4)
    assert tgt["orig_size"] == (h, w)


def test_normalisation_uses_config(tmp_path):
    img_dir, ann = _write_coco(tmp_path, [(1, "g.png", Image.new("RGB", (20, 20), (51, 102, 204)))],
                               [(1, 1, [1, 1, 5, 5], 0)])
    cfg = _cfg(**{"normalize.mean": [0.1, 0.2, 0.3], "normalize.std": [0.5, 0.25, 0.125]})
    img, _ = CocoDetection(ann, img_dir, cfg, train=False)[0]
    want = (torch.tensor([51, 102, 204]) / 255 - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor([0.5, 0.25, 0.125])
    assert torch.allclose(img[:, 5, 5], want, atol=1e-5)


def test_labels_are_contiguous_and_crowds_ignored(tmp_path):
    im = Image.new("RGB", (40, 30))
    cats = [{"id": 9, "name": "nine"}, {"id": 4, "name": "four"}]
    img_dir, ann = _write_coco(tmp_path, [(7, "a.png", im)],
                               [(7, 9, [1, 1, 5, 5], 0), (7, 4, [10, 10, 5, 5], 0), (7, 4, [2, 2, 30, 20], 1)], cats)
    ds = CocoDetection(ann, img_dir, _cfg(), train=False)
    assert ds.cat_ids == [4, 9] and ds.class_names == ["four", "nine"] and ds.num_classes == 2
    _, tgt = ds[0]
    assert tgt["labels"].tolist() == [1, 0] and tgt["labels"].dtype == torch.int64
    assert tgt["boxes"].shape == (2, 4) and tgt["image_id"] == 7
    assert len(ds.coco.getAnnIds(imgIds=7)) == 3  # the crowd stays in the ground truth for evaluation


# --- augmentation ------------------------------------------------------------------------------

def test_flip_p1_mirrors_and_p0_never(shapes):
    img_dir, ann = shapes
    plain = CocoDetection(ann, img_dir, _cfg(), train=False)
    flip = CocoDetection(ann, img_dir, _cfg(**{"augment.random_flip": 1.0}), train=True)
    never = CocoDetection(ann, img_dir, _cfg(**{"augment.random_flip": 0.0}), train=True)
    for i in range(3):
        img, tgt = plain[i]
        fimg, ftgt = flip[(0, i)]
        w = 56
        mirrored = tgt["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([w, 0, w, 0])
        assert torch.allclose(ftgt["boxes"], mirrored)
        assert torch.equal(fimg[:, :48, :w], img[:, :48, :w].flip(-1))
        for epoch in range(3):
            nimg, ntgt = never[(epoch, i)]
            assert torch.equal(nimg, img) and torch.equal(ntgt["boxes"], tgt["boxes"])
    # an int key never augments, even on a train set
    assert torch.equal(flip[0][0], plain[0][0])


def test_min_iou_crop_on_and_off(shapes):
    img_dir, ann = shapes
    on = CocoDetection(ann, img_dir, _cfg(**{"augment.min_iou_random_crop": True}), train=True)
    off = CocoDetection(ann, img_dir, _cfg(**{"augment.min_iou_random_crop": False}), train=True)
    plain = CocoDetection(ann, img_dir, _cfg(), train=False)
    cropped = 0
    for epoch in range(6):
        for i in range(4):
            _, t_on = on[(epoch, i)]
            _, t_off = off[(epoch, i)]
            _, t_plain = plain[i]
            assert torch.equal(t_off["boxes"], t_plain["boxes"])
            if t_on["boxes"].shape != t_plain["boxes"].shape or not torch.equal(t_on["boxes"], t_plain["boxes"]):
                cropped += 1
            # crops keep boxes inside the canvas and labels aligned
            assert len(t_on["boxes"]) == len(t_on["labels"]) >= 1
            assert (t_on["boxes"] >= 0).all() and (t_on["boxes"] <= 64).all()
    assert cropped >= 6


def test_same_key_same_sample_and_global_rng_untouched(shapes):
    img_dir, ann = shapes
    cfg = _cfg(**{"augment.min_iou_random_crop": True, "augment.random_flip": 0.5})
    ds = CocoDetection(ann, img_dir, cfg, train=True, seed=3)
    state = torch.get_rng_state()
    a, ta = ds[(2, 5)]
    b, tb = ds[(2, 5)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    other_epoch = [not torch.equal(ds[(e, 5)][0], a) for e in range(3, 9)]
    assert any(other_epoch)
    other_seed = CocoDetection(ann, img_dir, cfg, train=True, seed=4)
    assert any(not torch.equal(other_seed[(e, 5)][0], ds[(e, 5)][0]) for e in range(6))


def test_loader_identical_with_0_and_2_workers(shapes):
    img_dir, ann = shapes
    cfg = _cfg(**{"augment.min_iou_random_crop": True, "augment.random_flip": 0.5})
    ds = CocoDetection(ann, img_dir, cfg, train=True, seed=1)
    runs = []
    for workers in (0, 2):
        loader = make_loader(ds, EpochSampler(len(ds), seed=1, epoch=2), 3, workers, "cpu", drop_last=False)
        runs.append(list(loader))
    assert len(runs[0]) == len(runs[1]) == 3
    for (xa, ta), (xb, tb) in zip(*runs):
        assert xa.shape[1:] == (3, 64, 64) and torch.equal(xa, xb)
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(ta, tb))


def test_collate():
    x = [(torch.zeros(3, 8, 8), {"image_id": 1}), (torch.ones(3, 8, 8), {"image_id": 2})]
    images, targets = collate(x)
    assert images.shape == (2, 3, 8, 8) and [t["image_id"] for t in targets] == [1, 2]


# --- order and resume --------------------------------------------------------------------------

def test_epoch_sampler_resume_and_epochs():
    full = list(EpochSampler(20, seed=5, epoch=3))
    assert sorted(i for _, i in full) == list(range(20)) and all(e == 3 for e, _ in full)
    for k in (0, 1, 7, 20):
        s = EpochSampler(20, seed=5, epoch=3, start=k)
        assert list(s) == full[k:] and len(s) == 20 - k
    assert [i for _, i in EpochSampler(20, 5, epoch=4)] != [i for _, i in full]
    assert [i for _, i in EpochSampler(20, 6, epoch=3)] != [i for _, i in full]
    assert [i for _, i in EpochSampler(20, 5, epoch=3, shuffle=False)] == list(range(20))
    torch.manual_seed(0)
    a = list(EpochSampler(20, 5, epoch=3))
    torch.manual_seed(1)
    assert list(EpochSampler(20, 5, epoch=3)) == a  # independent of the global RNG


# --- errors ------------------------------------------------------------------------------------

def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="nope.json"):
        CocoDetection(tmp_path / "nope.json", tmp_path, _cfg(), train=False)


@pytest.mark.parametrize("content", ["", "{}", json.dumps({"images": [], "annotations": [], "categories": []})])
def test_empty_annotations_file(tmp_path, content):
    path = tmp_path / "instances_train.json"
    path.write_text(content)
    with pytest.raises(DataError, match="instances_train.json.*empty"):
        CocoDetection(path, tmp_path, _cfg(), train=False)


@pytest.mark.parametrize("bad,what", [
    ((1, 1, [5, 5, 0, 4], 0), "zero or negative size"),
    ((1, 1, [5, 5, 6, -2], 0), "zero or negative size"),
    ((1, 1, [30, 5, 20, 4], 0), "outside"),
    ((1, 1, [-8, 5, 6, 4], 0), "outside"),
    ((1, 7, [5, 5, 6, 4], 0), "unknown category"),
])
def test_bad_annotations_raise_or_skip(tmp_path, bad, what):
    im = Image.new("RGB", (40, 30))
    good = (1, 2, [1, 1, 5, 5], 0)
    img_dir, ann = _write_coco(tmp_path, [(1, "a.png", im)], [good, bad])
    with pytest.raises(DataError) as e:
        CocoDetection(ann, img_dir, _cfg(), train=False)
    msg = str(e.value)
    assert str(ann) in msg and what in msg and "annotation 2" in msg and "image 1" in msg
    assert "skip_bad" in msg
    ds = CocoDetection(ann, img_dir, _cfg(**{"data.skip_bad": True}), train=False)
    assert ds.skipped == 1 and len(ds.warnings) == 1 and what in ds.warnings[0]
    _, tgt = ds[0]
    assert tgt["labels"].tolist() == [1]


def _broken_set(tmp_path, kind):
    images = [(i, f"{i}.png", Image.new("RGB", (30, 20), (i * 40, 0, 0))) for i in (1, 2, 3)]
    img_dir, ann = _write_coco(tmp_path, images, [(i, 1, [1, 1, 5, 5], 0) for i in (1, 2, 3)])
    bad = img_dir / "2.png"
    if kind == "missing":
        bad.unlink()
    elif kind == "corrupt":
        bad.write_bytes(b"this is not an image at all")
    else:  # truncated
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:60])
    return img_dir, ann, bad


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated"])
def test_bad_image_names_the_file(tmp_path, kind):
    img_dir, ann, bad = _broken_set(tmp_path, kind)
    ds = CocoDetection(ann, img_dir, _cfg(), train=False)
    assert ds[0][1]["image_id"] == 1
    with pytest.raises(DataError) as e:
        ds[1]
    assert str(bad) in str(e.value) and "skip_bad" in str(e.value)
    skip = CocoDetection(ann, img_dir, _cfg(**{"data.skip_bad": True}), train=True)
    img, tgt = skip[(0, 1)]
    assert tgt["image_id"] == 3 and skip.skipped == 1 and str(bad) in skip.warnings[0]
    assert skip[(1, 1)][1]["image_id"] == 3 and skip.skipped == 1  # same substitute, counted once


def test_all_images_bad_with_skip_bad(tmp_path):
    img_dir, ann = _write_coco(tmp_path, [(1, "a.png", None)], [(1, 1, [1, 1, 5, 5], 0)])
    ds = CocoDetection(ann, img_dir, _cfg(**{"data.skip_bad": True}), train=False)
    with pytest.raises(DataError, match="no readable image"):
        ds[0]


def test_unknown_ids(tmp_path):
    img_dir, ann = _rect_set(tmp_path, [(40, 30)])
    with pytest.raises(DataError, match="99"):
        CocoDetection(ann, img_dir, _cfg(), train=False, ids=[1, 99])


# --- the sets a run uses -----------------------------------------------------------------------

def test_eval_dataset_modes(tmp_path, monkeypatch):
    monkeypatch.setenv("NANXI_TUNE_CACHE", str(tmp_path))
    cfg = _cfg(**{"data.synthetic_train": 12, "data.synthetic_val": 8, "eval.qmv": 5, "eval.rsr": 6})
    full = eval_dataset(with_updates(cfg, {"eval.val_data_mode": "full"}), seed=0)
    assert len(full) == 8 and not full.train and full.ids == sorted(full.ids)
    qmv = eval_dataset(with_updates(cfg, {"eval.val_data_mode": "qmv"}), seed=0)
    assert qmv.ids == full.ids[:5] and qmv.ann_file == full.ann_file
    rsr_cfg = with_updates(cfg, {"eval.val_data_mode": "rsr"})
    rsr = eval_dataset(rsr_cfg, seed=0)
    train = train_dataset(cfg, seed=0)
    assert train.train and len(train) == 12
    assert len(rsr) == 6 and rsr.ann_file == train.ann_file and not rsr.train
    assert set(rsr.ids) <= set(train.ids) and rsr.ids == sorted(rsr.ids)
    assert eval_dataset(rsr_cfg, seed=0).ids == rsr.ids
    assert any(eval_dataset(rsr_cfg, seed=s).ids != rsr.ids for s in (1, 2, 3))
    assert len(eval_dataset(with_updates(rsr_cfg, {"eval.rsr": 100}), seed=0)) == 12
    img, tgt = rsr[0]
    assert img.shape == (3, 64, 64) and tgt["image_id"] == rsr.ids[0]
    assert rsr.class_names == ["circle", "square", "triangle"]


def test_zoom_out_shrinks_some_samples_never_grows_and_fills_with_the_mean(shapes):
    img_dir, ann = shapes
    base = {"augment.min_iou_random_crop": False, "augment.random_flip": 0.0}
    zoom = CocoDetection(ann, img_dir, _cfg(**base, **{"augment.zoom_out": 3.0}), train=True)
    plain = CocoDetection(ann, img_dir, _cfg(**base), train=True)
    ratios = []
    for epoch in range(4):
        for i in range(4):
            _, tz = zoom[(epoch, i)]
            _, tp = plain[(epoch, i)]
            side = lambda t: (t["boxes"][:, 2:] - t["boxes"][:, :2]).clamp(min=0).prod(1).sqrt()
            if len(tz["boxes"]) == len(tp["boxes"]):
                ratios += (side(tz) / side(tp)).tolist()
    assert max(ratios) <= 1.0 + 1e-4 and min(ratios) < 0.7  # shrunk by up to 1/3, never grown
    assert sum(r > 0.999 for r in ratios) > 0  # about half the samples are left as they were
    off = CocoDetection(ann, img_dir, _cfg(**base, **{"augment.zoom_out": 1.0}), train=True)
    assert torch.equal(off[(1, 2)][0], plain[(1, 2)][0])


def test_epoch_sampler_without_augmentation_yields_plain_indices():
    keys = list(EpochSampler(10, seed=5, epoch=3, augment=False))
    assert keys == [i for _, i in EpochSampler(10, seed=5, epoch=3)]  # same order, int keys: not augmented
