"""TIDE-style error breakdown (engine.evaluation.errors): each error kind on a hand-made case, edge cases, and map50 agreeing
with pycocotools COCOeval's AP at IoU 0.5."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from nanxi_tune.engine.evaluation.errors import BRANCH_OF, ERROR_KINDS, ErrorBreakdown, breakdown


def _gt(anns: list[tuple], n_images: int = 1, cats=(1, 2, 3)) -> dict:
    """anns: (image_id, category_id, [x, y, w, h]) or with a 4th element iscrowd."""
    out = []
    for k, a in enumerate(anns):
        img, cat, box = a[:3]
        out.append({"id": k + 1, "image_id": img, "category_id": cat, "bbox": list(box),
                    "area": float(box[2] * box[3]), "iscrowd": int(a[3]) if len(a) > 3 else 0})
    return {"images": [{"id": i + 1, "width": 200, "height": 200} for i in range(n_images)],
            "annotations": out, "categories": [{"id": c, "name": f"c{c}"} for c in cats]}


def _det(cat: int, box, score: float, img: int = 1) -> dict:
    return {"image_id": img, "category_id": cat, "bbox": list(box), "score": score}


def _assert_only(b: ErrorBreakdown, kind: str, count: int = 1) -> None:
    assert b.counts[kind] == count
    assert b.delta[kind] > 0.01
    for other in ERROR_KINDS:
        if other != kind:
            assert b.counts[other] == 0, (other, b.counts)
            assert b.delta[other] == 0.0, (other, b.delta)
    assert b.largest() == kind


A, B = [0, 0, 10, 10], [30, 30, 10, 10]


def test_classification():
    # the class-2 object is found but called class 1; relabelling it makes class 2 perfect
    gt = _gt([(1, 1, A), (1, 2, B)])
    b = breakdown(gt, [_det(1, A, 0.9), _det(1, B, 0.8)])
    _assert_only(b, "classification")
    assert b.map50 == pytest.approx(0.5)
    assert b.delta["classification"] == pytest.approx(0.5)
    assert b.per_class_ap50 == pytest.approx({1: 1.0, 2: 0.0})


def test_localisation():
    b = breakdown(_gt([(1, 1, A)]), [_det(1, [5, 0, 10, 10], 0.9)])  # IoU 1/3
    _assert_only(b, "localisation")
    assert b.map50 == 0.0 and b.delta["localisation"] == pytest.approx(1.0)


def test_both():
    # a class-1 box with IoU 1/3 on the class-2 object only, scored above the class-1 true positive
    gt = _gt([(1, 1, A), (1, 2, B)])
    b = breakdown(gt, [_det(1, [35, 30, 10, 10], 0.9), _det(1, A, 0.5), _det(2, B, 0.8)])
    _assert_only(b, "both")
    assert b.per_class_ap50[1] == pytest.approx(0.5)
    assert b.delta["both"] == pytest.approx(0.25)


def test_duplicate():
    # the duplicate sits between the two true positives, so it costs precision
    gt = _gt([(1, 1, A), (1, 1, B)])
    b = breakdown(gt, [_det(1, A, 0.9), _det(1, [1, 0, 10, 10], 0.8), _det(1, B, 0.7)])
    _assert_only(b, "duplicate")
    assert b.map50 == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert b.map50 + b.delta["duplicate"] == pytest.approx(1.0)


def test_background():
    b = breakdown(_gt([(1, 1, A)]), [_det(1, [100, 100, 10, 10], 0.9), _det(1, A, 0.5)])
    _assert_only(b, "background")
    assert b.map50 == pytest.approx(0.5) and b.delta["background"] == pytest.approx(0.5)


def test_missed():
    b = breakdown(_gt([(1, 1, A), (1, 1, B)]), [_det(1, A, 0.9)])
    _assert_only(b, "missed")
    assert b.map50 == pytest.approx(51 / 101)
    assert b.map50 + b.delta["missed"] == pytest.approx(1.0)


def test_localisation_takes_precedence_like_tidecv():
    # IoU 1/3 with a same-class GT and 1.0 with another-class GT: tidecv checks localisation first
    gt = _gt([(1, 1, [5, 0, 10, 10]), (1, 2, A)])
    b = breakdown(gt, [_det(1, A, 0.9), _det(2, A, 0.8)])
    assert b.counts["localisation"] == 1 and b.counts["classification"] == 0


def test_only_best_error_per_gt_is_fixed():
    # two mislocalised boxes on one GT: fixing both must not create a second true positive
    b = breakdown(_gt([(1, 1, A)]), [_det(1, [5, 0, 10, 10], 0.9), _det(1, [0, 5, 10, 10], 0.8)])
    assert b.counts["localisation"] == 2
    assert b.delta["localisation"] == pytest.approx(1.0)


def test_perfect_detections():
    anns = [(1, 1, A), (1, 2, B), (2, 3, [50, 60, 20, 30]), (3, 1, [5, 5, 40, 40]), (3, 1, [100, 100, 30, 30])]
    b = breakdown(_gt(anns, n_images=3), [_det(c, box, 0.9 - 0.1 * k, img) for k, (img, c, box) in enumerate(anns)])
    assert b.map50 == pytest.approx(1.0)
    assert all(v == 0.0 for v in b.delta.values()) and all(v == 0 for v in b.counts.values())
    assert b.per_class_ap50 == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0})
    assert b.largest() is None


def test_no_detections():
    b = breakdown(_gt([(1, 1, A), (1, 2, B), (2, 1, A)], n_images=2), [])
    assert b.map50 == 0.0
    assert b.counts["missed"] == 3
    assert sum(b.counts.values()) == 3
    # tidecv drops a class with no GT left and no detections, so removing every GT leaves nothing to gain
    assert all(v == 0.0 for v in b.delta.values())


def test_crowd_match_is_ignored():
    gt = _gt([(1, 1, A), (1, 1, [50, 50, 40, 40], 1)])
    b = breakdown(gt, [_det(1, [55, 55, 10, 10], 0.95), _det(1, A, 0.5)])  # inside the crowd region
    assert b.map50 == pytest.approx(1.0)
    assert all(v == 0 for v in b.counts.values())
    assert b.per_class_ap50 == pytest.approx({1: 1.0})


def test_unknown_image_is_refused():
    with pytest.raises(ValueError, match="image 7"):
        breakdown(_gt([(1, 1, A)]), [_det(1, A, 0.9, img=7)])


def test_json_round_trip():
    b = breakdown(_gt([(1, 1, A), (1, 2, B)]), [_det(1, A, 0.9), _det(1, B, 0.8), _det(3, [90, 90, 5, 5], 0.7)])
    d = json.loads(json.dumps(b.to_json()))
    assert all(isinstance(k, str) for k in d["per_class_ap50"])
    assert ErrorBreakdown.from_json(d) == b
    assert set(d["delta"]) == set(d["counts"]) == set(ERROR_KINDS) == set(BRANCH_OF)


def test_largest():
    zero = dict.fromkeys(ERROR_KINDS, 0.0)

    def mk(**kw: float) -> ErrorBreakdown:
        return ErrorBreakdown(0.5, {**zero, **kw}, dict.fromkeys(ERROR_KINDS, 1), {1: 0.5})

    assert mk(localisation=0.02, missed=0.08, background=0.05).largest() == "missed"
    assert mk(duplicate=0.004).largest() is None
    assert mk().largest() is None
    assert mk(both=0.006).largest() == "both"


def _synthetic(seed: int, crowd: bool) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    anns, dets = [], []
    for img in range(1, 21):
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(8, 50, 2)
            cat = int(rng.integers(1, 4))
            anns.append((img, cat, [x, y, w, h], bool(crowd and rng.random() < 0.1)))
            for _ in range(rng.integers(0, 3)):  # 0-2 jittered detections; some relabelled
                jx, jy, jw, jh = rng.normal(0, 0.12, 4) * [w, h, w, h]
                dc = cat if rng.random() < 0.8 else int(rng.integers(1, 4))
                dets.append(_det(dc, [x + jx, y + jy, max(w + jw, 1), max(h + jh, 1)], float(rng.random()), img))
        for _ in range(rng.integers(0, 3)):  # false positives anywhere
            dets.append(_det(int(rng.integers(1, 4)), [*rng.uniform(0, 150, 2), *rng.uniform(5, 50, 2)],
                             float(rng.random()), img))
    # image 21 goes past COCOeval's 100-detections cap for a class: its one true positive scores lowest, so is cut
    anns.append((21, 2, [10, 10, 30, 30], False))
    dets += [_det(2, [*rng.uniform(60, 150, 2), 20, 20], float(rng.uniform(0.5, 1)), 21) for _ in range(100)]
    dets.append(_det(2, [10, 10, 30, 30], 0.01, 21))
    return _gt(anns, n_images=21), dets


def _coco_ap50(gt: dict, dets: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


@pytest.mark.parametrize("seed,crowd", [(0, False), (1, False), (2, True)])
def test_map50_agrees_with_pycocotools(seed, crowd):
    gt, dets = _synthetic(seed, crowd)
    b = breakdown(gt, dets)
    assert 0.05 < b.map50 < 0.95  # a non-trivial case
    assert b.map50 == pytest.approx(_coco_ap50(gt, dets), abs=1e-6)
    assert sum(b.counts[k] for k in ERROR_KINDS if k != "missed") > 0
    assert all(v >= 0.0 for v in b.delta.values())


def test_match_image_counts_false_detections_and_missed_objects():
    from nanxi_tune.engine.evaluation.errors import match_image

    gt = [(0, 0, 10, 10), (20, 20, 30, 30)]
    m = match_image(gt, ["a", "b"], [(0, 0, 10, 10), (0, 0, 10, 9), (20, 20, 30, 30), (50, 50, 60, 60)],
                    ["a", "a", "a", "b"], [0.9, 0.8, 0.7, 0.1], threshold=0.5)
    assert m.kept == [0, 1, 2]  # 0.1 is below the threshold
    assert m.hit == [True, False, False]  # a duplicate, and the right place with the wrong class
    assert m.missed == [1] and m.errors == 3
    assert match_image(gt, ["a", "b"], [], [], [], 0.5).errors == 2


def test_missed_objects_are_counted_by_coco_size():
    # two small objects (10×10) missed, a medium one (50×50) and a large one (120×120) found
    gt = _gt([(1, 1, (0, 0, 10, 10)), (1, 1, (20, 0, 10, 10)), (1, 1, (40, 40, 50, 50)), (1, 2, (0, 60, 120, 120))])
    b = breakdown(gt, [_det(1, (40, 40, 50, 50), 0.9), _det(2, (0, 60, 120, 120), 0.8)])
    assert b.missed_by_size == {"small": [2, 2], "medium": [0, 1], "large": [0, 1]}
    assert ErrorBreakdown.from_json(json.loads(json.dumps(b.to_json()))).missed_by_size == b.missed_by_size
