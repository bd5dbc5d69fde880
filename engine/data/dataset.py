"""载入数据 data loading: COCO sets in, (image, target) samples out, with exact resume.

Every random choice of a sample comes from a seed derived from (run seed, epoch, index) and the
epoch's order from (run seed, epoch) only, so a sample is the same whatever the number of loader
workers, and resuming at a position needs only (epoch, start).

Targets are in canvas pixels: ``canvas = source * scale + pad`` where *source* is the image that
entered the resize step. For a non-augmented sample the source is the original image, so
``orig = (canvas - pad) / scale`` maps predictions back (evaluation relies on it); for an
augmented sample the source is the cropped / flipped image.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF
from PIL import Image, UnidentifiedImageError

from .loader import epoch_seed, sample_seed
from .datapaths import DataError, locate  # noqa: F401 - DataError: the data's error, raised here too
from .synthetic import ensure_synthetic

BOX_TOLERANCE = 1.0  # px a box may overshoot the image edge (then clipped) before it counts as outside


# --- locating data ---------------------------------------------------------------------------

def resolve(spec: str, split: str, cfg) -> tuple[Path, Path]:
    """(images_dir, ann_json) for data.train / data.val: ``synthetic``, a COCO folder or an instances JSON."""
    if spec == "synthetic":
        d = cfg.data
        large = d.synthetic_objects == "large"
        if split == "train":
            return ensure_synthetic("train", d.synthetic_train, d.synthetic_seed, cfg.preprocess.input_size,
                                    "large" if large else "same")
        return ensure_synthetic(split, d.synthetic_val, d.synthetic_seed, cfg.preprocess.input_size,
                                "large" if large else d.synthetic_val_style)
    return locate(spec, split)


# --- the dataset -------------------------------------------------------------------------------

def _load_json(ann_file: Path) -> dict:
    fix = "check the path in data.train / data.val"
    try:
        text = Path(ann_file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{ann_file}: annotations file not found; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{ann_file}: cannot read the annotations file ({err}); {fix}") from None
    if not text.strip():
        raise DataError(f"{ann_file}: the annotations file is empty; write a COCO instances JSON "
                        "(images, annotations, categories) there")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{ann_file}: not valid JSON ({err}); write a COCO instances JSON there") from None
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a COCO instances JSON object with images, annotations and "
                        "categories")
    return data


UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError)  # what PIL raises for a file it cannot decode


def load_rgb(path: Path) -> torch.Tensor:
    """An image file as uint8 (3, h, w) RGB. Raises FileNotFoundError, or one of UNREADABLE (callers name the file
    and the fix in their own words)."""
    with Image.open(path) as im:
        im.load()
        rgb = im.convert("RGB")
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class CocoDetection(torch.utils.data.Dataset):
    """A COCO instances set; ``ds[i]`` is a plain sample, ``ds[(epoch, i)]`` an augmented one (train)."""

    def __init__(self, ann_file, img_dir, cfg, train: bool, seed: int = 0, ids: list[int] | None = None):
        from pycocotools.coco import COCO

        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        self.cfg, self.train, self.seed = cfg, train, seed
        self.skip_bad = cfg.data.skip_bad
        self.warnings: list[str] = []
        self.skipped = 0
        self._bad_images: set[int] = set()
        data = self._validated(_load_json(self.ann_file))
        self.coco = COCO()
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.dataset = data
            self.coco.createIndex()
        self.cat_ids = sorted(c["id"] for c in data["categories"])
        self._label = {c: i for i, c in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.num_classes = len(self.cat_ids)
        if ids is None:
            self.ids = sorted(self.coco.imgs)
        else:
            missing = [i for i in ids if i not in self.coco.imgs]
            if missing:
                raise DataError(f"{self.ann_file}: image ids {missing[:5]} are not in the annotations file")
            self.ids = list(ids)
        self._boxes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.cache_limit = cfg.data.cache_mb << 20  # bytes of decoded images kept (data.cache_mb)
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_bytes = 0

    # -- validation at load --
    def _bad(self, msg: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{self.ann_file}: {msg}; fix or remove it from the annotations, "
                            "or set data.skip_bad = true")
        self.warnings.append(f"{self.ann_file}: skipped {msg}")
        self.skipped += 1

    def _validated(self, data: dict) -> dict:
        f = self.ann_file
        images, anns, cats = data.get("images") or [], data.get("annotations") or [], data.get("categories") or []
        if not images or not cats or not anns:
            empty = [k for k, v in (("images", images), ("annotations", anns), ("categories", cats)) if not v]
            raise DataError(f"{f}: the annotations file is empty (no {', '.join(empty)}); point data.train / "
                            "data.val at a COCO instances JSON with labelled images")
        cat_set = set()
        for c in cats:
            if not isinstance(c, dict) or "id" not in c or "name" not in c:
                raise DataError(f"{f}: a category entry lacks id or name ({c!r:.80}); every category needs both, "
                                "e.g. {\"id\": 1, \"name\": \"cell\"}; fix the annotations file")
            cat_set.add(c["id"])
        imgs = {}
        for i, im in enumerate(images, 1):
            if not isinstance(im, dict):
                raise DataError(f"{f}: image entry #{i} is not an object ({im!r:.80}); every image is "
                                "{\"id\": …, \"file_name\": …, \"width\": …, \"height\": …}; fix the annotations file")
            if "id" not in im or "file_name" not in im:
                raise DataError(f"{f}: an image entry lacks id or file_name ({im!r:.80}); fix the annotations file")
            imgs[im["id"]] = im
        kept = []
        for i, a in enumerate(anns, 1):
            if not isinstance(a, dict):
                self._bad(f"annotation #{i} is not an object ({a!r:.80})")
                continue
            aid, iid = a.get("id"), a.get("image_id")
            where = f"annotation {aid} (image {iid})"
            bbox = a.get("bbox")
            if iid not in imgs:
                self._bad(f"{where} refers to an unknown image id")
                continue
            if a.get("category_id") not in cat_set:
                self._bad(f"{where} has unknown category id {a.get('category_id')!r} "
                          f"(known: {sorted(cat_set)})")
                continue
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                self._bad(f"{where} has no [x, y, w, h] bbox")
                continue
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                self._bad(f"{where} has a non-numeric bbox {bbox!r:.80} (expected 4 numbers [x, y, w, h])")
                continue
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                self._bad(f"{where} has a box with a non-finite number {list(bbox)}")
                continue
            if not (w > 0 and h > 0):
                self._bad(f"{where} has a zero or negative size box {list(bbox)}")
                continue
            im = imgs[iid]
            iw, ih = im.get("width"), im.get("height")
            if not (iw and ih):  # no size in the entry: read it from the image's header
                iw, ih = self._image_size(im)
            if iw and ih:
                t = BOX_TOLERANCE
                if x < -t or y < -t or x + w > iw + t or y + h > ih + t:
                    self._bad(f"{where} has a box {list(bbox)} outside the {iw}x{ih} image {im['file_name']}")
                    continue
            kept.append(a)
        if not kept:
            raise DataError(f"{f}: no valid annotations left; fix the boxes in the annotations file")
        data = dict(data)
        data["annotations"] = kept
        return data

    def _image_size(self, im: dict) -> tuple[int | None, int | None]:
        """(width, height) from the image file's header; (None, None) when it cannot be read (reported when the
        image is loaded)."""
        cache = self.__dict__.setdefault("_sizes", {})
        key = im.get("id")
        if key not in cache:
            try:
                with Image.open(self.img_dir / str(im["file_name"])) as img:
                    cache[key] = img.size
            except Exception:  # noqa: BLE001 - missing or undecodable: _read names it with the fix
                cache[key] = (None, None)
        return cache[key]

    # -- samples --
    def __len__(self) -> int:
        return len(self.ids)

    def _targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        if image_id not in self._boxes:
            boxes, labels = [], []
            for a in self.coco.imgToAnns.get(image_id, []):
                if a.get("iscrowd", 0):
                    continue
                x, y, w, h = (float(v) for v in a["bbox"])
                boxes.append((x, y, x + w, y + h))
                labels.append(self._label[a["category_id"]])
            self._boxes[image_id] = (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64))
        return self._boxes[image_id]

    def _read(self, image_id: int) -> torch.Tensor:
        """The decoded uint8 (3, h, w) image; cached ones are shared, so callers never write into it."""
        hit = self._cache.get(image_id)
        if hit is not None:
            return hit
        image = self._decode(image_id)
        if self._cache_bytes + image.numel() <= self.cache_limit:
            self._cache[image_id] = image
            self._cache_bytes += image.numel()
        return image

    def preload(self) -> None:
        """Fill the cache in this process, so forked loader workers share it (theirs die with each epoch)."""
        for image_id in self.ids:
            if self._cache_bytes >= self.cache_limit:
                return
            with contextlib.suppress(DataError):  # a bad image is reported when a sample needs it
                self._read(image_id)

    def _decode(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        path = self.img_dir / info["file_name"]
        fix = "remove it from the annotations or set data.skip_bad = true"
        try:
            return load_rgb(path)
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found (image {image_id} in {self.ann_file}); {fix}") from None
        except UNREADABLE as err:
            raise DataError(f"{path}: cannot decode the image (image {image_id}: {err}); {fix}") from None

    def __getitem__(self, key):
        if isinstance(key, tuple):
            epoch, index = int(key[0]), int(key[1])
            augment = self.train
        else:
            epoch, index, augment = 0, int(key), False
        n = len(self.ids)
        found: list[str] = []
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                image, target = self._sample(epoch, j, augment)
                if found:  # travels with the batch (also out of loader workers) so the trainer can count it
                    target["skipped"] = found
                return image, target
            except DataError as err:
                if not self.skip_bad:
                    raise
                if j not in self._bad_images:
                    self._bad_images.add(j)
                    self.skipped += 1
                    self.warnings.append(f"skipped: {err}")
                    found.append(str(err))
        raise DataError(f"{self.ann_file}: no readable image left in {self.img_dir}; check the images folder")

    def _sample(self, epoch: int, index: int, augment: bool):
        image_id = self.ids[index]
        img = self._read(image_id)
        orig_h, orig_w = img.shape[-2:]
        boxes_np, labels_np = self._targets(image_id)
        boxes = torch.from_numpy(boxes_np.copy())
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, orig_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, orig_h)
        labels = torch.from_numpy(labels_np.copy())
        if augment:
            with torch.random.fork_rng(devices=[]):
                # CPU generator only: torch.manual_seed would also queue lazy CUDA/XPU seeding with a stack trace
                torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
                img, boxes, labels = self._augment(img, boxes, labels)
        image, boxes, scale, pad = self._resize(img, boxes)
        return image, {"boxes": boxes, "labels": labels, "image_id": int(image_id), "scale": scale,
                       "pad": pad, "orig_size": (int(orig_h), int(orig_w))}

    def _augment(self, img: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor):
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        from .iou_crop import MinIoURandomCrop

        a = self.cfg.augment
        h, w = img.shape[-2:]
        sample = {"image": tv_tensors.Image(img),
                  "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
                  "labels": labels}
        steps = []
        # RandomIoUCrop needs boxes (it would loop forever without); its options are the minimum IoUs
        # it samples from, 0.0 = any crop, a value >= 1.0 = keep the image (as MMDetection's MinIoURandomCrop).
        if a.min_iou_random_crop and len(boxes):
            steps.append(MinIoURandomCrop(sampler_options=[0.0, *a.min_iou_set, 1.0]))
        if a.random_flip > 0:
            steps.append(v2.RandomHorizontalFlip(p=a.random_flip))
        if a.zoom_out > 1:
            fill = [round(255 * m) for m in self.cfg.normalize.mean]  # 0 after normalisation, as the padding
            steps.append(v2.RandomZoomOut(fill={tv_tensors.Image: fill, "others": 0}, side_range=(1.0, a.zoom_out)))
        if not steps:
            return img, boxes, labels
        steps.append(v2.SanitizeBoundingBoxes(min_size=1.0))
        out = v2.Compose(steps)(sample)
        return (out["image"].as_subclass(torch.Tensor), out["boxes"].as_subclass(torch.Tensor).float(),
                out["labels"])

    def _resize(self, img: torch.Tensor, boxes: torch.Tensor):
        """Place the uint8 (3, h, w) image on the S×S canvas; normalise; map boxes canvas = src*scale + pad."""
        S = self.cfg.preprocess.input_size
        h, w = img.shape[-2:]
        if self.cfg.preprocess.resize == "letterbox":
            scale = min(S / h, S / w)
        else:  # same_padding: unscaled, downscale only when a side is larger than the canvas
            scale = min(1.0, S / h, S / w)
        x = img
        if scale != 1.0:
            # scale_factor with recompute_scale_factor=False samples at exactly src = (dst + 0.5)/scale − 0.5,
            # so the image follows the same affine map as the boxes; output side = floor(side × scale).
            # On uint8 (the decoded image) PyTorch's vectorised kernel is ~4× the float one's speed.
            x = TF.interpolate(x[None], scale_factor=scale, mode="bilinear", align_corners=False,
                               antialias=scale < 1.0, recompute_scale_factor=False)[0]
        nh, nw = x.shape[-2:]
        nh, nw = min(nh, S), min(nw, S)
        if self.cfg.preprocess.resize == "letterbox":
            px, py = (S - nw) // 2, (S - nh) // 2
        else:
            px, py = 0, 0
        mean = torch.tensor(self.cfg.normalize.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.cfg.normalize.std, dtype=torch.float32).view(3, 1, 1)
        canvas = torch.zeros(3, S, S, dtype=torch.float32)  # padding = 0 after normalisation (the mean colour)
        canvas[:, py:py + nh, px:px + nw] = (x[:, :nh, :nw].float().div_(255.0) - mean) / std
        boxes = boxes.float() * scale
        boxes[:, 0::2] += px
        boxes[:, 1::2] += py
        boxes[:, 0::2] = boxes[:, 0::2].clamp(px, px + w * scale)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(py, py + h * scale)
        return canvas, boxes.contiguous(), float(scale), (float(px), float(py))


def to_original(boxes: torch.Tensor, scale: float, pad: tuple[float, float]) -> torch.Tensor:
    """Canvas xyxy boxes → original image pixels: (canvas − pad) / scale."""
    out = boxes.clone().float()
    out[..., 0::2] = (out[..., 0::2] - pad[0]) / scale
    out[..., 1::2] = (out[..., 1::2] - pad[1]) / scale
    return out


# --- the sets a run uses -------------------------------------------------------------------------

def train_dataset(cfg, seed: int) -> CocoDetection:
    img_dir, ann = resolve(cfg.data.train, "train", cfg)
    return CocoDetection(ann, img_dir, cfg, train=True, seed=seed)


def eval_dataset(cfg, seed: int) -> CocoDetection:
    """The non-augmented evaluation set of cfg.eval.val_data_mode (full / qmv / rsr)."""
    mode = cfg.eval.val_data_mode
    if mode == "rsr":
        img_dir, ann = resolve(cfg.data.train, "train", cfg)
        ds = CocoDetection(ann, img_dir, cfg, train=False, seed=seed)
        k = min(len(ds.ids), cfg.eval.rsr)
        g = torch.Generator()
        g.manual_seed(epoch_seed(seed, -2))
        pick = torch.randperm(len(ds.ids), generator=g)[:k].tolist()
        ds.ids = sorted(ds.ids[i] for i in pick)
        return ds
    img_dir, ann = resolve(cfg.data.val, "val", cfg)
    ds = CocoDetection(ann, img_dir, cfg, train=False, seed=seed)
    if mode == "qmv":
        ds.ids = ds.ids[:cfg.eval.qmv]
    return ds


def describe(ds: CocoDetection) -> dict[str, Any]:
    """A small summary for logs / the TUI."""
    return {"images": len(ds), "classes": ds.class_names, "skipped": ds.skipped, "ann_file": str(ds.ann_file)}
