"""TIDE-style error decomposition of COCO box detections (Bolya et al. 2020) plus per-class AP50.

Own implementation: tidecv 1.0.1 (last release 2020) imports cv2 and hard-requires opencv, matplotlib, seaborn, pandas.

Every detection that is not a true positive at IoU ``fg_iou`` gets one error kind, checked in tidecv's order:
localisation, classification, duplicate, background, both. A kind's delta is the AP50 gained by fixing only that
kind, the way TIDE fixes it. Matching, crowd handling, the 100-detections cap and the 101-point interpolation follow
pycocotools COCOeval, so ``map50`` equals COCOeval's AP at IoU 0.5 (all areas, maxDets 100).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

ERROR_KINDS = ("classification", "localisation", "both", "duplicate", "background", "missed")
BRANCH_OF = {"classification": "map", "localisation": "shape", "both": "map", "duplicate": "post-processing",
             "background": "map", "missed": "map"}

MAX_DETS = 100  # COCOeval's cap, per image and category
SIZES = (("small", 32 ** 2), ("medium", 96 ** 2), ("large", float("inf")))  # COCO's area ranges
_TP, _IGNORED = "tp", "ignored"
_RECALLS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class ErrorBreakdown:
    """AP50 over classes, the dAP50 each error kind costs, how often each occurs, and AP50 per class."""

    map50: float
    delta: dict[str, float]
    counts: dict[str, int]
    per_class_ap50: dict[int, float]
    # per COCO size (area < 32², < 96², larger, in the image's own pixels): [missed objects, objects]
    missed_by_size: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A plain JSON-able dict (class ids become str keys)."""
        return {"map50": self.map50, "delta": dict(self.delta), "counts": dict(self.counts),
                "per_class_ap50": {str(k): v for k, v in self.per_class_ap50.items()},
                "missed_by_size": {k: list(v) for k, v in self.missed_by_size.items()}}

    @classmethod
    def from_json(cls, d: dict) -> ErrorBreakdown:
        """Inverse of :meth:`to_json`."""
        return cls(map50=float(d["map50"]), delta={k: float(d["delta"][k]) for k in ERROR_KINDS},
                   counts={k: int(d["counts"][k]) for k in ERROR_KINDS},
                   per_class_ap50={int(k): float(v) for k, v in d["per_class_ap50"].items()},
                   missed_by_size={k: [int(x) for x in v] for k, v in (d.get("missed_by_size") or {}).items()})

    def largest(self) -> str | None:
        """The kind with the largest delta if that delta exceeds 0.005, else None (ties: ERROR_KINDS order)."""
        kind = max(ERROR_KINDS, key=lambda k: self.delta[k])
        return kind if self.delta[kind] > 0.005 else None


def _iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes, (D, G); a crowd GT's denominator is the detection's area, as in pycocotools."""
    dx2, dy2 = dets[:, 0] + dets[:, 2], dets[:, 1] + dets[:, 3]
    gx2, gy2 = gts[:, 0] + gts[:, 2], gts[:, 1] + gts[:, 3]
    iw = np.minimum(dx2[:, None], gx2[None]) - np.maximum(dets[:, None, 0], gts[None, :, 0])
    ih = np.minimum(dy2[:, None], gy2[None]) - np.maximum(dets[:, None, 1], gts[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    d_area = (dets[:, 2] * dets[:, 3])[:, None]
    union = np.where(crowd[None], d_area, d_area + (gts[:, 2] * gts[:, 3])[None] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _last_argmax(v: np.ndarray) -> int:
    # COCOeval replaces its match on equal IoU, so the last of tied GTs wins
    return len(v) - 1 - int(np.argmax(v[::-1]))


def _ap(scores: np.ndarray, tps: np.ndarray, npos: int) -> float:
    """COCO 101-point interpolated AP of one class; points are already in COCOeval's order before sorting."""
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(tps[order])
    fp = np.cumsum(~tps[order])
    if len(tp) == 0:
        return 0.0
    rc = tp / npos
    pr = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[::-1])[::-1]
    idx = np.searchsorted(rc, _RECALLS, side="left")
    return float(np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)], 0.0).mean())


def _mean_ap(cls: np.ndarray, scores: np.ndarray, tps: np.ndarray, npos: dict[int, int],
             classes: list[int]) -> tuple[float, dict[int, float]]:
    """Mean AP over ``classes``; one whose GT count fell to 0 scores 0 if it still has detections, else drops out."""
    per = {}
    for c in classes:
        m = cls == c
        if npos[c] > 0:
            per[c] = _ap(scores[m], tps[m], npos[c])
        elif m.any():  # tidecv's convention for an emptied class
            per[c] = 0.0
    return (float(np.mean(list(per.values()))) if per else 0.0), per


def breakdown(gt: dict, results: list[dict], fg_iou: float = 0.5, bg_iou: float = 0.1) -> ErrorBreakdown:
    """TIDE error breakdown of ``results`` against ``gt``.

    gt: a COCO dataset dict (images, annotations with bbox xywh + category_id + optional iscrowd, categories);
    results: COCO result dicts {image_id, category_id, bbox xywh, score}.
    """
    img_ids = sorted(int(im["id"]) for im in gt.get("images", []))
    known = set(img_ids)
    gts_by_img: dict[int, list[dict]] = defaultdict(list)
    for a in gt.get("annotations", []):
        if int(a["image_id"]) in known:
            gts_by_img[int(a["image_id"])].append(a)
    dets_by_img: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        if int(r["image_id"]) not in known:
            raise ValueError(f"result for image {r['image_id']}, which is not in the ground truth")
        dets_by_img[int(r["image_id"])].append(r)

    # one row per kept detection, in COCOeval's order (image id, then score); GT rows are non-crowd only
    d_cls, d_score, d_state, d_target = [], [], [], []
    g_cls, g_used, g_area = [], [], []
    for img in img_ids:
        anns, dets = gts_by_img[img], dets_by_img[img]
        dets = sorted(dets, key=lambda r: -float(r["score"]))  # stable, like COCOeval's mergesort
        per_cat: dict[int, int] = defaultdict(int)
        kept = []
        for r in dets:
            c = int(r["category_id"])
            per_cat[c] += 1
            if per_cat[c] <= MAX_DETS:
                kept.append(r)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        gc = np.array([int(a["category_id"]) for a in anns], dtype=np.int64)
        gb = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        db = np.array([r["bbox"] for r in kept], dtype=np.float64).reshape(-1, 4)
        ious = _iou(db, gb, crowd)
        used = np.zeros(len(anns), dtype=bool)
        offset = len(g_cls)
        regular = np.flatnonzero(~crowd)  # index into this image's anns -> global GT row
        glob = np.full(len(anns), -1)
        glob[regular] = offset + np.arange(len(regular))
        g_cls += gc[regular].tolist()
        g_area += [float(anns[j].get("area") or gb[j, 2] * gb[j, 3]) for j in regular]
        for i, r in enumerate(kept):
            c, row = int(r["category_id"]), ious[i]
            same = gc == c
            ok = same & ~crowd & ~used & (row >= fg_iou)
            state, target = None, -1
            if ok.any():
                j = _last_argmax(np.where(ok, row, -1.0))
                used[j], state, target = True, _TP, glob[j]
            elif (same & crowd & (row >= fg_iou)).any():
                state = _IGNORED  # COCO: a match to a crowd region is neither TP nor FP
            else:
                state, target = _classify(row[~crowd], same[~crowd], used[~crowd], fg_iou, bg_iou)
                if target >= 0:
                    target = offset + target
            d_cls.append(c)
            d_score.append(float(r["score"]))
            d_state.append(state)
            d_target.append(target)
        g_used += used[regular].tolist()

    return _decompose(np.array(d_cls, dtype=np.int64), np.array(d_score, dtype=np.float64), d_state,
                      np.array(d_target, dtype=np.int64), np.array(g_cls, dtype=np.int64),
                      np.array(g_used, dtype=bool), np.array(g_area, dtype=np.float64))


def _classify(row: np.ndarray, same: np.ndarray, used: np.ndarray, fg: float, bg: float) -> tuple[str, int]:
    """Error kind and target GT (index into the non-crowd GTs, -1 if none) of an unmatched detection."""
    if len(row) == 0:
        return "background", -1
    s = np.where(same, row, 0.0)
    o = np.where(same, 0.0, row)
    js, jo = int(np.argmax(s)), int(np.argmax(o))
    if bg <= s[js] < fg:
        return "localisation", js
    if o[jo] >= fg:
        return "classification", jo
    if s[js] >= fg and used[js]:
        return "duplicate", js
    if row.max() < bg:
        return "background", -1
    return "both", -1


def _decompose(d_cls: np.ndarray, d_score: np.ndarray, d_state: list, d_target: np.ndarray,
               g_cls: np.ndarray, g_used: np.ndarray, g_area: np.ndarray) -> ErrorBreakdown:
    """Counts, the original AP50 and the AP50 after fixing each kind on its own."""
    state = np.array(d_state, dtype=object)
    npos = defaultdict(int, Counter(g_cls.tolist()))
    classes = sorted(c for c in npos if npos[c] > 0)
    live = state != _IGNORED
    is_tp = state == _TP
    base, per_class = _mean_ap(d_cls[live], d_score[live], is_tp[live], npos, classes)

    # a cls/loc error makes its GT "usable" (TIDE), so that GT is not also counted missed
    fixable = np.isin(state, ["classification", "localisation"])
    usable = np.zeros(len(g_cls), dtype=bool)
    usable[d_target[fixable]] = True
    missed = ~g_used & ~usable
    counts = {k: int((state == k).sum()) for k in ERROR_KINDS if k != "missed"}
    counts["missed"] = int(missed.sum())
    size = np.searchsorted([hi for _, hi in SIZES[:-1]], g_area, side="right")  # 0 small, 1 medium, 2 large
    by_size = {name: [int((missed & (size == i)).sum()), int((size == i).sum())] for i, (name, _) in enumerate(SIZES)}

    delta = {}
    for kind in ERROR_KINDS:
        cls, keep, tp, n = d_cls.copy(), live.copy(), is_tp.copy(), defaultdict(int, npos)
        if kind == "missed":
            for c in g_cls[missed]:
                n[int(c)] -= 1
        elif kind in ("classification", "localisation"):
            taken = set()  # highest score wins the GT; later errors on it would be duplicates
            for i in np.flatnonzero(state == kind)[np.argsort(-d_score[state == kind], kind="mergesort")]:
                g = int(d_target[i])
                if g_used[g] or g in taken:
                    keep[i] = False
                else:
                    taken.add(g)
                    tp[i], cls[i] = True, g_cls[g]  # the box fix for localisation only changes TP status
        else:
            keep &= state != kind
        fixed, _ = _mean_ap(cls[keep], d_score[keep], tp[keep], n, classes)
        delta[kind] = max(fixed - base, 0.0)  # fixes never lower AP; clamp float noise as tidecv does
    return ErrorBreakdown(map50=base, delta=delta, counts=counts, per_class_ap50=per_class, missed_by_size=by_size)


@dataclass(frozen=True)
class ImageMatch:
    """One image at a score threshold: which predictions hit a ground-truth box (same class, IoU ≥ 0.5), which
    ground truth nobody found; ``errors`` = false detections + missed objects (the Predictions view's order)."""

    hit: list[bool]  # per prediction at or above the threshold, in the order given
    missed: list[int]  # indices of unmatched ground-truth boxes
    kept: list[int]  # indices of the predictions at or above the threshold

    @property
    def errors(self) -> int:
        return self.hit.count(False) + len(self.missed)


def match_image(gt_boxes: list, gt_labels: list, boxes: list, labels: list, scores: list, threshold: float,
                iou: float = 0.5) -> ImageMatch:
    """Greedy matching by score, as COCO does at one IoU: boxes xyxy; labels compared for equality."""
    kept = sorted((i for i, s in enumerate(scores) if s >= threshold), key=lambda i: -scores[i])
    used: set[int] = set()
    hit = {}
    g = np.asarray(gt_boxes, dtype=float).reshape(-1, 4)
    for i in kept:
        best, best_iou = -1, iou
        if len(g):
            b = np.asarray(boxes[i], dtype=float)
            iw = np.clip(np.minimum(b[2], g[:, 2]) - np.maximum(b[0], g[:, 0]), 0, None)
            ih = np.clip(np.minimum(b[3], g[:, 3]) - np.maximum(b[1], g[:, 1]), 0, None)
            inter = iw * ih
            union = (b[2] - b[0]) * (b[3] - b[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter
            ious = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
            for j in np.argsort(-ious):
                if ious[j] < best_iou:
                    break
                if j not in used and gt_labels[j] == labels[i]:
                    best = int(j)
                    break
        hit[i] = best >= 0
        if best >= 0:
            used.add(best)
    kept_in_order = sorted(kept)
    return ImageMatch([hit[i] for i in kept_in_order], [j for j in range(len(g)) if j not in used], kept_in_order)
