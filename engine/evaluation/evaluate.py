"""Evaluation: val losses + COCO mAP (pycocotools COCOeval, bbox).

COCO metrics that COCOeval leaves undefined (−1: no ground truth in that area range, e.g.
no large objects) are reported as 0.0, never NaN, so metrics stay plain JSON numbers and
"best" comparisons keep working. An empty result list gives all zeros.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Callable

import torch

from ..config import Config
from ..model import flip_test
from ..model.decode import decode
from ..metric_keys import COCO_METRICS, LOSSES

METRICS = COCO_METRICS


class EvalInterrupted(Exception):
    """``interrupt`` asked to end the evaluation between batches (a stop)."""


def _float(v: Any) -> float:
    return float(v.item()) if torch.is_tensor(v) else float(v)


def to_coco_results(dets: list[dict], targets: list[dict], cat_ids: list[int]) -> list[dict]:
    """Detections in canvas pixels → COCO result dicts in original-image pixels (xywh, clipped)."""
    results = []
    for det, tgt in zip(dets, targets):
        boxes = det["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        scores = det["scores"].detach().float().cpu().tolist()
        labels = det["labels"].detach().cpu().tolist()
        pad = tgt.get("pad", (0.0, 0.0))
        x0, y0 = (_float(p) for p in pad)
        scale = _float(tgt.get("scale", 1.0))
        h, w = (_float(v) for v in tgt["orig_size"])
        image_id = int(_float(tgt["image_id"]))
        b = boxes.clone()
        b[:, 0::2] = ((b[:, 0::2] - x0) / scale).clamp(0.0, w)
        b[:, 1::2] = ((b[:, 1::2] - y0) / scale).clamp(0.0, h)
        for (x1, y1, x2, y2), s, lab in zip(b.tolist(), scores, labels):
            bw, bh = x2 - x1, y2 - y1
            if bw <= 0 or bh <= 0:
                continue
            results.append({"image_id": image_id, "category_id": int(cat_ids[int(lab)]),
                            "bbox": [x1, y1, bw, bh], "score": float(s)})
    return results


def coco_map(coco_gt, results: list[dict], img_ids: list[int]) -> dict[str, float]:
    """COCOeval bbox metrics over ``img_ids``: mAP, AP50, AP75, APs, APm, APl (undefined → 0.0)."""
    zeros = {k: 0.0 for k in METRICS}
    img_ids = sorted({int(i) for i in img_ids})
    if not results or not img_ids:
        return zeros
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes mutates its input
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: max(float(v), 0.0) for k, v in zip(METRICS, ev.stats[:6])}


def error_breakdown(coco_gt, results: list[dict], img_ids: list[int]) -> dict:
    """What costs AP50 on ``img_ids`` (engine.evaluation.errors: the TIDE kinds, per-class AP50), as JSON for the eval line."""
    from .errors import breakdown

    keep = {int(i) for i in img_ids}
    gt = coco_gt.dataset
    subset = {"images": [im for im in gt["images"] if int(im["id"]) in keep],
              "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in keep],
              "categories": gt["categories"]}
    return breakdown(subset, [r for r in results if int(r["image_id"]) in keep]).to_json()


def evaluate(model, loader, cfg: Config, device, coco_gt, cat_ids: list[int],
             interrupt: Callable[[], bool] | None = None, dist=None, batches: int = 0) -> dict[str, float]:
    """Val losses (averaged over images) and COCO metrics of ``model`` on ``loader``. ``interrupt`` is asked
    between batches; True raises EvalInterrupted.

    Data-parallel (``dist``, engine.run.distributed): each rank's ``loader`` holds the global batches k with
    k % world == rank (data.eval_indices); ``interrupt`` is asked ``batches`` times on every rank (the longest
    rank's count), the parts are gathered in the global batch order and rank 0's COCO metrics go to all, so
    they equal a one-process evaluation of the same weights."""
    from ..model.targets import build_targets

    was_training = model.training
    model.eval()
    sums = {k: 0.0 for k in LOSSES}
    n_images = 0
    per_batch: list[list[dict]] = []
    img_ids: list[int] = []
    try:
        with torch.inference_mode():
            for images, targets in loader:
                if interrupt is not None and interrupt():
                    raise EvalInterrupted
                images = images.to(device, non_blocking=True)
                outputs = model(images)
                t = build_targets(targets, model.num_classes, cfg, images.device)
                losses = model.losses(outputs, t)
                bs = images.shape[0]
                for k in LOSSES:
                    sums[k] += _float(losses[k]) * bs
                n_images += bs
                if cfg.postprocess.flip_test:
                    outputs = flip_test.mirrored(model, images, outputs, cfg.encode.shape)
                per_batch.append(to_coco_results(decode(outputs, cfg), targets, cat_ids))
                img_ids.extend(int(_float(tg["image_id"])) for tg in targets)
            for _ in range(batches - len(per_batch)):  # a rank with a batch fewer still answers every ask
                if interrupt is not None and interrupt():
                    raise EvalInterrupted
    finally:
        model.train(was_training)
    if dist is not None and dist.active:
        parts = dist.gather((per_batch, sums, n_images, img_ids))
        per_batch = [b for i in range(max(len(p[0]) for p in parts)) for p in parts if i < len(p[0])
                     for b in [p[0][i]]]  # global batch k = rank + i × world
        sums = {k: sum(p[1][k] for p in parts) for k in LOSSES}
        n_images = sum(p[2] for p in parts)
        img_ids = [i for p in parts for i in p[3]]
    results = [r for batch in per_batch for r in batch]
    metrics = coco_map(coco_gt, results, img_ids) if dist is None or dist.is_main else {}
    if dist is None or dist.is_main:
        metrics["errors"] = error_breakdown(coco_gt, results, img_ids)
    if dist is not None:
        metrics = dist.from_main(metrics)
    metrics.update({k: v / max(n_images, 1) for k, v in sums.items()})
    metrics["images"] = n_images
    return metrics
