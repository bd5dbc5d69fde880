"""Rules that read the detector's errors, not its losses: each evaluation's TIDE breakdown (engine.evaluation.errors) says what
costs AP50, and each error kind has a branch the notes tune for it (engine.evaluation.errors.BRANCH_OF).

They judge only evaluations from ``diagnose.errors_from`` of the run on (early evaluations are loose by nature) and
fire when ``diagnose.errors_evals`` evaluations in a row show the same largest error, costing at least
``diagnose.error_min_delta`` AP50, while AP50 has stopped climbing (less than ``diagnose.errors_min_gain``
relative over them): an error that shrinks as the run learns is not yet a finding (the healthy demo's confusion
between shapes falls from 0.39 to 0.07 dAP50 as its AP50 climbs to 0.91).
"""

from __future__ import annotations

from typing import Any

from .rulebook import Finding, History, finite, r, remedy, rule
from ..evaluation.errors import BRANCH_OF, ERROR_KINDS

TIDE = "TIDE (Bolya et al. 2020)"


def _largest(errors: dict[str, Any], min_delta: float) -> str | None:
    delta = errors.get("delta") or {}
    kind = max(ERROR_KINDS, key=lambda k: delta.get(k, 0.0))
    return kind if delta.get(kind, 0.0) >= min_delta else None


def _streak(cfg, h: History, kinds: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """The last ``errors_evals`` evaluations, when each has one of ``kinds`` as its largest error; else None."""
    d = cfg.diagnose
    total = (h.last_train or {}).get("total_steps") or 0
    if not total:
        return None
    judged = [v for v in h.val if isinstance(v.get("errors"), dict) and v["step"] >= d.errors_from * total]
    last = judged[-d.errors_evals:]
    if len(last) < d.errors_evals or any(_largest(v["errors"], d.error_min_delta) not in kinds for v in last):
        return None
    first, now = last[0].get("AP50"), last[-1].get("AP50")
    if finite(first) and finite(now) and now > first * (1 + d.errors_min_gain):
        return None  # still climbing: the error is being learned away
    return last


def _evidence(last: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    v = last[-1]
    return {"kind": kind, "branch": BRANCH_OF[kind], "dAP50": r(v["errors"]["delta"][kind], 3),
            "count": int(v["errors"]["counts"][kind]), "AP50": r(v.get("AP50"), 3), "AP75": r(v.get("AP75"), 3),
            "evals": [int(x["step"]) for x in last]}


@rule("localisation-bound", TIDE)
def localisation_bound(cfg, h, stats):
    """Boxes found (AP50 at least ``loc_min_ap50``) but loosely fitted: AP75 / AP50 below ``loc_ap75_ratio`` and
    localisation the largest error."""
    last = _streak(cfg, h, ("localisation",))
    if last is None:
        return None
    ap50, ap75 = last[-1].get("AP50"), last[-1].get("AP75")
    d = cfg.diagnose
    if not (finite(ap50) and finite(ap75)) or ap50 < d.loc_min_ap50 or ap75 / ap50 >= d.loc_ap75_ratio:
        return None
    step = int(last[-1]["step"])
    if cfg.loss.shape_loss != "giou":  # live: the run continues from this evaluation's checkpoint, proven first
        how = (f"continue from step {step} with loss.shape_loss = giou: it trains the box's overlap, which AP75 "
               "measures, not each side on its own (a short trial against the unchanged run proves it on AP75 first)")
        rem = remedy({"loss.shape_loss": "giou"}, step, how, proof="AP75")
    elif cfg.loss.shape_samples == "centre":  # live as well: more cells learn each box (TTFNet)
        how = (f"continue from step {step} with loss.shape_samples = gaussian: every cell of an object's Gaussian "
               "window learns its box, not only the centre cell (a short trial against the unchanged run proves it "
               "on AP75 first)")
        rem = remedy({"loss.shape_samples": "gaussian"}, step, how, proof="AP75")
    else:
        s = round(cfg.loss.s_shape - 1.0, 3)
        how = (f"start a new run with loss.s_shape = {s} (the shape branch weighted e≈2.7× more), or a larger "
               "preprocess.input_size for objects near the input's size")
        rem = remedy({"loss.s_shape": s}, None, how)
    return _localisation(cfg, last, ap50, ap75, rem, how)


def _localisation(cfg, last: list[dict[str, Any]], ap50: float, ap75: float, rem: dict, how: str) -> Finding:
    ev = _evidence(last, "localisation")
    return Finding(
        "localisation-bound", "warning", TIDE,
        f"The boxes are found but loosely fitted: AP75 {ap75:.3f} is {ap75 / ap50:.0%} of AP50 {ap50:.3f}, and "
        f"localisation is the largest error (fixing it gains {ev['dAP50']:.3f} AP50 over {ev['count']} "
        f"detections) in the last {len(last)} evaluations. The notes tune this in the shape branch (编码 shape "
        f"encoding, loss): {how}.",
        {**ev, "ratio": r(ap75 / ap50, 3), "shape_loss": cfg.loss.shape_loss, "s_shape": cfg.loss.s_shape},
        rem, int(last[-1]["step"]))


@rule("background-detections", TIDE)
def background_detections(cfg, h, stats):
    """Detections on background (or duplicates of found objects) cost the most AP50: post-processing's job."""
    last = _streak(cfg, h, ("background", "duplicate"))
    if last is None:
        return None
    kind = _largest(last[-1]["errors"], cfg.diagnose.error_min_delta)
    ev = _evidence(last, kind)
    pp = cfg.postprocess
    what = "on background" if kind == "background" else "that duplicate found objects"
    how = (f"tune score_threshold ({pp.score_threshold}), NMS ({'on' if pp.nms else 'off'}, iou {pp.nms_iou}) and "
           f"top_k ({pp.top_k}) on the trained weights (后处理: tuned after training, on fixed weights)")
    return Finding(
        "background-detections", "warning", TIDE,
        f"Detections {what} are the largest error (fixing them gains {ev['dAP50']:.3f} AP50 over {ev['count']} "
        f"detections) in the last {len(last)} evaluations: {how}.",
        {**ev, "score_threshold": pp.score_threshold, "nms": pp.nms, "nms_iou": pp.nms_iou, "top_k": pp.top_k},
        remedy({}, None, how, command="nanxi-tune tune-post {run} --apply"), int(last[-1]["step"]))


@rule("classes-confused", TIDE)
def classes_confused(cfg, h, stats):
    """Objects found in the right place with the wrong class cost the most AP50: the map branch's job."""
    last = _streak(cfg, h, ("classification",))
    if last is None:
        return None
    ev = _evidence(last, "classification")
    per_class = last[-1]["errors"].get("per_class_ap50") or {}
    worst = sorted(per_class.items(), key=lambda kv: kv[1])[:3]
    s = round(cfg.loss.s_map - 1.0, 3)
    how = (f"check the labels of the weakest classes ({', '.join(f'{k}: AP50 {v:.2f}' for k, v in worst)}); "
           f"give the map branch more weight (loss.s_map = {s}) in a new run")
    return Finding(
        "classes-confused", "info", TIDE,
        f"Objects are found where they are but given the wrong class: classification is the largest error (fixing "
        f"it gains {ev['dAP50']:.3f} AP50 over {ev['count']} detections) in the last {len(last)} evaluations; "
        f"{how}.",
        {**ev, "weakest_classes": {k: r(v, 3) for k, v in worst}},
        remedy({"loss.s_map": s}, None, how), int(last[-1]["step"]))


@rule("small-objects-missed", TIDE)
def small_objects_missed(cfg, h, stats):
    """Missed objects are the largest error and they are the small ones: at least half of the small objects
    (COCO: area < 32²) missed, twice the share of the larger ones. The input's resolution or the output stride
    is what loses them (a small object covers few heatmap cells)."""
    last = _streak(cfg, h, ("missed",))
    if last is None:
        return None
    sizes = last[-1]["errors"].get("missed_by_size") or {}
    small, medium, large = (sizes.get(k, [0, 0]) for k in ("small", "medium", "large"))
    if small[1] < 10:
        return None  # too few small objects to judge
    small_share = small[0] / small[1]
    rest = (medium[0] + large[0]) / max(1, medium[1] + large[1])
    if small_share < 0.5 or small_share < 2 * rest:
        return None
    size = min(2048, int(round(cfg.preprocess.input_size * 1.5 / 32)) * 32)
    if size > cfg.preprocess.input_size:
        set_, how = {"preprocess.input_size": size}, (f"start a new run with preprocess.input_size = {size} (a small "
                                                      f"object spans more heatmap cells)")
    else:
        set_, how = {}, "the input is at its largest: a smaller neck.out_stride keeps more cells per object"
    if cfg.neck.out_stride > 4:
        how += f", or neck.out_stride = {cfg.neck.out_stride // 2}"
    ev = _evidence(last, "missed")
    return Finding(
        "small-objects-missed", "warning", TIDE,
        f"Small objects go unseen: {small[0]} of {small[1]} small objects (area < 32²) are missed against "
        f"{rest:.0%} of the larger ones, and missed objects are the largest error (fixing them gains "
        f"{ev['dAP50']:.3f} AP50) in the last {len(last)} evaluations; {how}.",
        {**ev, "small_missed": small, "larger_missed_share": r(rest, 3), "input_size": cfg.preprocess.input_size,
         "out_stride": cfg.neck.out_stride},
        remedy(set_, None, how), int(last[-1]["step"]))
