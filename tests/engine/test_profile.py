"""The train split read before training (engine.data.profile) and neck.out_stride = "auto" chosen from it."""

import json

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.profile import profile, proposals, resolve_auto
from nanxi_tune.engine.run import rundir
from tests.conftest import tiny


def coco(tmp_path, boxes_per_image, size=(640, 480)):
    """An instances JSON: image i holds boxes_per_image[i] (x, y, w, h) boxes of class 1."""
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": size[0], "height": size[1]})
        for b in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": list(b), "area": b[2] * b[3],
                         "iscrowd": 0})
    p = tmp_path / "instances_train.json"
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}))
    return p


def test_profile_counts_and_scales_sides_to_the_input_size(tmp_path):
    p = profile(coco(tmp_path, [[(0, 0, 64, 32)], [(0, 0, 64, 32), (10, 10, 128, 64)], []]), 320)
    assert (p.images, p.objects, p.classes, p.per_image_max) == (3, 3, {"cell": 3}, 2)
    assert p.short_side_p5 == pytest.approx(32 * 320 / 640)  # the long side 640 → 320: halved
    assert p.image_long_p50 == 640


def test_large_objects_get_a_coarse_stride_small_ones_keep_4(tmp_path):
    base = C.with_updates(C.load_preset("bccd"), {"neck.out_stride": 4})
    large = profile(coco(tmp_path, [[(0, 0, 400, 300)]] * 5), 320)  # 150 px short side at 320
    assert [(x.key, x.value) for x in proposals(large, base)] == [
        ("neck.out_stride", 16), ("encode.shape", "ltrb_dfl"), ("head.shape_quality", True)]  # tight boxes decide
    tight = C.with_updates(base, {"neck.out_stride": 16, "encode.shape": "ltrb_dfl", "head.shape_quality": True})
    assert proposals(large, tight) == []
    small = profile(coco(tmp_path, [[(0, 0, 40, 40)] * 3] * 5), 320)  # 20 px: stride 4 keeps 5 cells
    assert proposals(small, base) == []


def test_a_crowded_split_keeps_more_peaks_and_tiny_objects_a_larger_input(tmp_path):
    p = profile(coco(tmp_path, [[(0, 0, 10, 10)] * 120]), 320)  # 5 px at 320, images 640 px
    got = {x.key: x.value for x in proposals(p, C.load_preset("bccd"))}
    assert got["postprocess.top_k"] == 240 and got["preprocess.input_size"] == 640


def test_auto_resolves_from_the_split_and_is_refused_unresolved(tmp_path):
    cfg = C.with_updates(C.load_preset("bccd"), {"neck.out_stride": "auto"})
    done, why = resolve_auto(cfg, coco(tmp_path, [[(0, 0, 400, 300)]] * 5))
    assert done.neck.out_stride == 16 and "spans 4 cells" in why[0].why
    from nanxi_tune.engine.model.detector import build_model

    with pytest.raises(ValueError, match="neck.out_stride = auto"):
        build_model(cfg, 3)


def test_a_run_with_auto_stride_records_its_choice(tmp_path):
    from nanxi_tune.engine.train.trainer import Trainer

    cfg = tiny(**{"neck.out_stride": "auto", "data.synthetic_objects": "large", "train.max_steps": 1,
                  "eval.interval": 1000, "preprocess.input_size": 128})
    assert Trainer(cfg, tmp_path / "run").run() == "finished"
    saved = C.load(tmp_path / "run" / rundir.CONFIG)
    assert saved.neck.out_stride == 8  # shapes of 35-90 % of 128 px: ≥ 32 px short sides, 4 cells at stride 8
    logs = [e["message"] for e in rundir.read_events(tmp_path / "run") if e.get("kind") == "log"]
    assert any(m.startswith(f"neck.out_stride = auto → {saved.neck.out_stride}:") for m in logs)
