"""预测 prediction: a run's EMA weights on image files or on its val set, boxes in original-image pixels.

Nothing here re-does evaluation's maths: images go through CocoDetection's own resize / letterbox / normalise
step, outputs through decode.decode and evaluate.to_coco_results (canvas → original pixels, clipped), so on val
images a Prediction holds exactly the detections `nanxi-tune eval` scores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import config as C
from ..run import rundir
from ..run.checkpoint import CheckpointError
from ..data.dataset import UNREADABLE, CocoDetection, load_rgb
from ..data.loader import collate, make_loader
from ..model import flip_test
from ..model.decode import decode
from ..run.device import pick_device, place
from ..evaluation.evaluate import to_coco_results
from ..evaluation.evaluate_run import load_ema_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class PredictError(ValueError):
    """An image named on the command line is missing or cannot be read (the message names it)."""


@dataclass(frozen=True)
class Prediction:
    """One image's detections, best first; boxes are xyxy in the original image's pixels."""
    source: str  # the file as given, or the val image's file_name
    image_id: int | None  # the COCO id on the val set; None for a file
    width: int
    height: int
    boxes: list[tuple[float, float, float, float]]
    scores: list[float]
    category_ids: list[int]
    names: list[str]

    def coco_results(self) -> list[dict[str, Any]]:
        """COCO results format (bbox xywh): keyed by image_id on the val set, by file_name for a file."""
        key = {"image_id": self.image_id} if self.image_id is not None else {"file_name": self.source}
        return [{**key, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
                for (x1, y1, x2, y2), s, c in zip(self.boxes, self.scores, self.category_ids)]


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The image files named, a folder standing for the images directly in it (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PredictError(f"{p}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise PredictError(f"{p}: no such image file or folder")
    return out


def read_image(path: Path) -> torch.Tensor:
    """The uint8 (3, h, w) RGB image, decoded as CocoDetection decodes a dataset image."""
    try:
        return load_rgb(path)
    except FileNotFoundError:
        raise PredictError(f"{path}: no such image file") from None
    except UNREADABLE as err:
        raise PredictError(f"{path}: cannot read this image ({err}); give a JPEG, PNG or other image PIL "
                           "decodes") from None


class _Canvas:
    """CocoDetection's own resize step (it reads only ``self.cfg``), for images outside a COCO set."""
    _resize = CocoDetection._resize

    def __init__(self, cfg: C.Config):
        self.cfg = cfg


class ImageFiles(torch.utils.data.Dataset):
    """Image files as (canvas, target) samples shaped like a non-augmented CocoDetection sample."""

    def __init__(self, paths: list[Path], cfg: C.Config):
        self.paths, self.canvas = list(paths), _Canvas(cfg)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = read_image(self.paths[i])
        h, w = img.shape[-2:]
        image, _, scale, pad = self.canvas._resize(img, torch.zeros(0, 4))
        return image, {"image_id": i, "scale": scale, "pad": pad, "orig_size": (int(h), int(w))}


def require_checkpoint(run_dir: Path) -> None:
    """Refuse a run that saved no checkpoint yet, saying how to get one."""
    if not any(p.exists() for p in (rundir.best_checkpoint(run_dir), rundir.last_checkpoint(run_dir))):
        raise CheckpointError(f"{run_dir}: no checkpoint yet (checkpoints/best.pt or last.pt); train it further "
                              f"with `nanxi-tune resume {run_dir}`")


class Predictor:
    """A run's model, ready to predict: ``on_files(paths)`` or ``on_val()``.

    ``updates`` are dotted config keys over the run's config.toml (e.g. postprocess.score_threshold), as for
    `nanxi-tune eval --set`."""

    def __init__(self, run_dir: Path | str, which: str = "best", updates: dict[str, Any] | None = None):
        run_dir = Path(run_dir)
        require_checkpoint(run_dir)
        cfg = C.load(run_dir / rundir.CONFIG)
        if updates:
            cfg = C.with_updates(cfg, updates)
        cfg, model, val_set = load_ema_model(run_dir, which, cfg)
        device = pick_device(cfg.train.device)
        self._use(run_dir, cfg, place(model, device, cfg.train.channels_last).eval(), val_set, device)

    @classmethod
    def of_model(cls, run_dir: Path, cfg: C.Config, model, val_set, device) -> "Predictor":
        """A Predictor over a model already in memory (a live trainer's EMA model and eval set)."""
        p = cls.__new__(cls)
        p._use(Path(run_dir), cfg, model, val_set, device)
        return p

    def _use(self, run_dir: Path, cfg: C.Config, model, val_set, device) -> None:
        self.run_dir, self.cfg, self.model, self.val_set, self.device = run_dir, cfg, model, val_set, device
        self.cat_ids = self.val_set.cat_ids
        self.class_names = list(self.val_set.class_names)
        self.names = dict(zip(self.cat_ids, self.class_names))

    def on_files(self, paths: Iterable[str | Path]) -> list[Prediction]:
        """Every image named (folders expanded), in order. Raises PredictError naming a missing or bad file."""
        files = image_files(paths)
        ds = ImageFiles(files, self.cfg)
        bs = self.cfg.data.batch_size
        # decoded in this process: a bad file's PredictError reaches the caller as itself, not a worker's wrapper
        batches = (collate([ds[i] for i in range(k, min(k + bs, len(ds)))]) for k in range(0, len(ds), bs))
        found, sizes = self._run(batches)
        return [self._prediction(str(p), None, found.get(i, []), sizes[i]) for i, p in enumerate(files)]

    def on_val(self) -> list[Prediction]:
        """The images `nanxi-tune eval` scores (the set of eval.val_data_mode), with their COCO ids."""
        ds = self.val_set
        loader = make_loader(ds, range(len(ds)), self.cfg.data.batch_size, self.cfg.data.workers, self.device.type,
                             drop_last=False)
        found, sizes = self._run(loader)
        return [self._prediction(str(ds.coco.imgs[i]["file_name"]), int(i), found.get(int(i), []), sizes[int(i)])
                for i in ds.ids if int(i) in sizes]  # with data.skip_bad an unreadable image is left out

    def on_batch(self, batch) -> list[Prediction]:
        """One collated batch of the val set (images, targets), in eval mode for the call (BatchNorm on its running
        statistics, as evaluate() does)."""
        was_training = self.model.training
        self.model.eval()
        try:
            found, sizes = self._run([batch])
        finally:
            self.model.train(was_training)
        ids = [int(t["image_id"]) for t in batch[1]]
        return [self._prediction(str(self.val_set.coco.imgs[i]["file_name"]), i, found.get(i, []), sizes[i])
                for i in ids]

    def ground_truth(self, image_id: int) -> tuple[list[tuple[float, float, float, float]], list[str]]:
        """A val image's labelled boxes (xyxy, original pixels) and class names; crowd boxes left out."""
        anns = [a for a in self.val_set.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (map(float, a["bbox"]) for a in anns)]
        return boxes, [self.names[a["category_id"]] for a in anns]

    def image_path(self, p: Prediction) -> Path:
        """Where the prediction's image lies (a val image's file_name is relative to the set's images folder)."""
        return self.val_set.img_dir / p.source if p.image_id is not None else Path(p.source)

    # -- internals --
    def _run(self, batches) -> tuple[dict[int, list[dict]], dict[int, tuple[int, int]]]:
        """COCO results and (width, height) per image id (a file's index), by evaluation's decode and mapping."""
        found: dict[int, list[dict]] = {}
        sizes: dict[int, tuple[int, int]] = {}
        with torch.inference_mode():
            for images, targets in batches:
                outputs = flip_test.infer(self.model, images.to(self.device, non_blocking=True), self.cfg)
                for r in to_coco_results(decode(outputs, self.cfg), targets, self.cat_ids):
                    found.setdefault(r["image_id"], []).append(r)
                for t in targets:
                    h, w = t["orig_size"]
                    sizes[int(t["image_id"])] = (int(w), int(h))
        return found, sizes

    def _prediction(self, source: str, image_id: int | None, results: list[dict], size) -> Prediction:
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (r["bbox"] for r in results)]
        cats = [int(r["category_id"]) for r in results]
        return Prediction(source, image_id, int(size[0]), int(size[1]), boxes, [float(r["score"]) for r in results],
                          cats, [self.names[c] for c in cats])
