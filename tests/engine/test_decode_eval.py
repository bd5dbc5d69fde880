"""engine/model/decode.py and engine/evaluation/evaluate.py: peaks → boxes → NMS; canvas → COCO; COCOeval; evaluate()."""

import json
import sys
import types

import pytest
import torch
from torch import nn

from nanxi_tune.engine.model import encoding
from nanxi_tune.engine.config import Config, with_updates
from nanxi_tune.engine.model.decode import decode
from nanxi_tune.engine.evaluation.evaluate import coco_map, evaluate, to_coco_results

S = 128


def cfg_with(**upd) -> Config:
    return with_updates(Config(), {"preprocess.input_size": S, **upd})


def perfect_outputs(boxes: list[torch.Tensor], labels: list[torch.Tensor], c: int, cfg: Config,
                    scores: list[torch.Tensor] | None = None) -> dict:
    """Network outputs that encode exactly these canvas boxes: one peak per box, exact offset/shape."""
    st = cfg.neck.out_stride
    h = S // st
    k = encoding.shape_channels(cfg.encode.shape)
    b = len(boxes)
    out = {"map": torch.zeros(b, c, h, h), "offset": torch.zeros(b, 2, h, h), "shape": torch.zeros(b, k, h, h)}
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        ctr = encoding.centres(bx, st)
        cell = ctr.floor().long()
        off = encoding.encode_offset(ctr, cell, cfg.encode.offset)
        shp = encoding.encode_shape(bx, ctr, st, cfg.encode.shape)
        for j in range(len(bx)):
            cx, cy = cell[j].tolist()
            assert out["map"][i, :, cy, cx].max() == 0, "test boxes must have distinct centre cells"
            out["map"][i, lb[j], cy, cx] = 1.0 if scores is None else scores[i][j]
            out["offset"][i, :, cy, cx] = off[j]
            out["shape"][i, :, cy, cx] = shp[j]
    out["map_logits"] = torch.logit(out["map"].clamp(1e-6, 1 - 1e-6))
    return out


def _sorted(boxes: torch.Tensor, labels: torch.Tensor):
    key = boxes[:, 0] * 1e4 + boxes[:, 1]
    o = key.argsort()
    return boxes[o], labels[o]


BOXES = [torch.tensor([[8.0, 10.0, 40.0, 50.0], [70.0, 64.0, 120.0, 100.0], [50.5, 3.25, 61.75, 21.0]]),
         torch.tensor([[30.0, 30.0, 60.0, 90.0]])]
LABELS = [torch.tensor([0, 2, 1]), torch.tensor([1])]


@pytest.mark.parametrize("stride", [4, 8])
@pytest.mark.parametrize("shape", ["wh", "log_wh", "ltrb"])
@pytest.mark.parametrize("offset", ["subpixel", "centered"])
def test_decode_recovers_perfect_boxes(offset, shape, stride):
    cfg = cfg_with(**{"encode.offset": offset, "encode.shape": shape, "neck.out_stride": stride})
    dets = decode(perfect_outputs(BOXES, LABELS, 3, cfg), cfg)
    assert len(dets) == 2
    for det, bx, lb in zip(dets, BOXES, LABELS):
        assert det["labels"].dtype == torch.int64
        assert len(det["boxes"]) == len(bx)
        got_b, got_l = _sorted(det["boxes"], det["labels"])
        want_b, want_l = _sorted(bx, lb)
        torch.testing.assert_close(got_b, want_b, atol=1e-4, rtol=0)
        assert torch.equal(got_l, want_l)
        assert torch.all(det["scores"] == 1.0)


def _overlapping(cfg: Config) -> dict:
    """Per image: class 0 peaks 0.9 and 0.8 two cells apart with near-identical boxes, and a class-1 peak
    0.7 with the same box as the 0.9 one."""
    st = cfg.neck.out_stride
    box = torch.tensor([20.0, 20.0, 84.0, 84.0])
    shifted = box + torch.tensor([2.0 * st, 0.0, 2.0 * st, 0.0])  # centre two cells right: IoU ≈ 0.78
    other = box + torch.tensor([0.0, 4 * st, 0.0, 4 * st])  # class 1, centre four cells down
    boxes = [torch.stack([box, shifted, other])] * 2
    labels = [torch.tensor([0, 0, 1])] * 2
    scores = [torch.tensor([0.9, 0.8, 0.7])] * 2
    return perfect_outputs(boxes, labels, 2, cfg, scores)


def _counts(cfg: Config) -> list[int]:
    return [len(d["scores"]) for d in decode(_overlapping(cfg), cfg)]


def test_nms_threshold_topk_change_results():
    base = {"postprocess.score_threshold": 0.1}
    assert _counts(cfg_with(**base, **{"postprocess.nms": False})) == [3, 3]
    dets = decode(_overlapping(cfg_with(**base)), cfg_with(**base))
    # NMS per image and per class: the 0.8 box goes, the class-1 box and the other image stay
    assert [len(d["scores"]) for d in dets] == [2, 2]
    assert dets[0]["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert dets[0]["labels"].tolist() == [0, 1]
    assert _counts(cfg_with(**base, **{"postprocess.nms_iou": 0.9})) == [3, 3]  # IoU 0.78 < 0.9 survives
    assert _counts(cfg_with(**{"postprocess.score_threshold": 0.75, "postprocess.nms": False})) == [2, 2]
    assert _counts(cfg_with(**base, **{"postprocess.top_k": 1})) == [1, 1]
    # a 5×5 peak window swallows the 0.8 peak two cells from the 0.9 one
    assert _counts(cfg_with(**base, **{"postprocess.nms": False, "postprocess.pool_kernel": 5})) == [2, 2]
    # score_threshold 0 keeps top_k cells even where the map is 0
    assert _counts(cfg_with(**{"postprocess.score_threshold": 0.0, "postprocess.nms": False,
                               "postprocess.top_k": 10})) == [10, 10]


def test_decode_empty_map():
    cfg = cfg_with()
    dets = decode(perfect_outputs([torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2, 2, cfg), cfg)
    assert [d["boxes"].shape for d in dets] == [(0, 4), (0, 4)]


# --- COCO -----------------------------------------------------------------------------------------

CAT_IDS = [3, 7]  # label 0 → category 3, label 1 → category 7
IMAGES = {11: (150, 200), 22: (180, 120)}  # id → (h, w)
ANNS = [  # image_id, category_id, xywh in original pixels: small, medium, large objects
    (11, 3, [20.0, 30.0, 15.0, 12.0]),
    (11, 7, [60.0, 40.0, 80.0, 70.0]),
    (22, 3, [5.0, 10.0, 110.0, 120.0]),
    (22, 7, [70.0, 20.0, 20.0, 25.0]),
]
GEOM = {11: (0.5, (10.0, 6.0)), 22: (0.6, (20.0, 4.0))}  # id → (scale, pad)


@pytest.fixture
def coco_gt(tmp_path):
    from pycocotools.coco import COCO

    data = {"images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in IMAGES.items()],
            "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
            "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for n, (i, c, b) in enumerate(ANNS)]}
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(data))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def gt_targets() -> list[dict]:
    """Loader targets (canvas px) for the tiny COCO set, with non-trivial scale and pad."""
    out = []
    for img_id, (h, w) in IMAGES.items():
        scale, (x0, y0) = GEOM[img_id]
        rows = [(c, b) for i, c, b in ANNS if i == img_id]
        xyxy = torch.tensor([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for _, b in rows])
        canvas = xyxy * scale + torch.tensor([x0, y0, x0, y0])
        out.append({"boxes": canvas.float(), "labels": torch.tensor([CAT_IDS.index(c) for c, _ in rows]),
                    "image_id": img_id, "scale": scale, "pad": (x0, y0), "orig_size": (h, w)})
    return out


def test_ground_truth_as_predictions_scores_one(coco_gt):
    targets = gt_targets()
    dets = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    results = to_coco_results(dets, targets, CAT_IDS)
    assert len(results) == len(ANNS)
    for r, (i, c, b) in zip(results, ANNS):
        assert (r["image_id"], r["category_id"]) == (i, c)
        assert r["bbox"] == pytest.approx(b, abs=1e-4)
    m = coco_map(coco_gt, results, list(IMAGES))
    assert set(m) == {"mAP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(v == pytest.approx(1.0) for v in m.values()), m


def test_ground_truth_through_decode_scores_one(coco_gt):
    cfg = cfg_with(**{"encode.shape": "ltrb", "encode.offset": "centered"})
    targets = gt_targets()
    outputs = perfect_outputs([t["boxes"] for t in targets], [t["labels"] for t in targets], 2, cfg)
    results = to_coco_results(decode(outputs, cfg), targets, CAT_IDS)
    assert coco_map(coco_gt, results, list(IMAGES))["mAP"] == pytest.approx(1.0)


def test_wrong_mapping_scores_less(coco_gt):
    targets = gt_targets()
    dets = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    no_pad = [{**t, "pad": (0.0, 0.0)} for t in targets]
    assert coco_map(coco_gt, to_coco_results(dets, no_pad, CAT_IDS), list(IMAGES))["mAP"] < 0.6
    swapped = [{**d, "labels": 1 - d["labels"]} for d in dets]
    assert coco_map(coco_gt, to_coco_results(swapped, targets, CAT_IDS), list(IMAGES))["mAP"] == 0.0
    # restricted to one image, only that image's ground truth counts
    one = to_coco_results(dets[:1], targets[:1], CAT_IDS)
    assert coco_map(coco_gt, one, [11])["mAP"] == pytest.approx(1.0)
    assert coco_map(coco_gt, one, list(IMAGES))["mAP"] < 1.0


def test_empty_results_score_zero(coco_gt):
    assert coco_map(coco_gt, [], list(IMAGES)) == {k: 0.0 for k in ("mAP", "AP50", "AP75", "APs", "APm", "APl")}
    targets = gt_targets()
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    assert to_coco_results(empty, targets, CAT_IDS) == []


def test_undefined_area_reported_as_zero(coco_gt):
    targets = gt_targets()[:1]  # image 11: one small and one medium object, no large one
    dets = [{"boxes": targets[0]["boxes"], "scores": torch.ones(2), "labels": targets[0]["labels"]}]
    m = coco_map(coco_gt, to_coco_results(dets, targets, CAT_IDS), [11])
    assert m["mAP"] == pytest.approx(1.0) and m["APs"] == pytest.approx(1.0) and m["APl"] == 0.0


def test_to_coco_clips_to_image():
    t = {"image_id": 5, "scale": 2.0, "pad": (4.0, 8.0), "orig_size": (50, 40)}
    det = {"boxes": torch.tensor([[-10.0, 0.0, 100.0, 50.0], [200.0, 200.0, 220.0, 220.0]]),
           "scores": torch.tensor([0.5, 0.4]), "labels": torch.tensor([1, 0])}
    r = to_coco_results([det], [t], [9, 4])
    assert len(r) == 1  # the second box lies wholly outside the image
    assert r[0]["bbox"] == pytest.approx([0.0, 0.0, 40.0, 21.0])
    assert r[0]["category_id"] == 4 and r[0]["image_id"] == 5 and r[0]["score"] == pytest.approx(0.5)


# --- evaluate() -----------------------------------------------------------------------------------

def _hand_build_targets(targets, num_classes, cfg, device):
    """A stand-in for engine/targets.build_targets (its format, one-hot heatmap)."""
    st = cfg.neck.out_stride
    h = cfg.preprocess.input_size // st
    k = encoding.shape_channels(cfg.encode.shape)
    b = len(targets)
    z = {"device": device}
    t = {"heatmap": torch.zeros(b, num_classes, h, h, **z), "offset": torch.zeros(b, 2, h, h, **z),
         "shape": torch.zeros(b, k, h, h, **z), "box": torch.zeros(b, 4, h, h, **z),
         "mask": torch.zeros(b, 1, h, h, **z)}
    n = 0
    for i, tg in enumerate(targets):
        bx = tg["boxes"].to(device)
        ctr = encoding.centres(bx, st)
        cell = ctr.floor().long()
        off = encoding.encode_offset(ctr, cell, cfg.encode.offset)
        shp = encoding.encode_shape(bx, ctr, st, cfg.encode.shape)
        for j in range(len(bx)):
            cx, cy = cell[j].tolist()
            t["heatmap"][i, tg["labels"][j], cy, cx] = 1.0
            t["offset"][i, :, cy, cx] = off[j]
            t["shape"][i, :, cy, cx] = shp[j]
            t["box"][i, :, cy, cx] = bx[j]
            t["mask"][i, 0, cy, cx] = 1.0
            n += 1
    t["num_pos"] = torch.tensor(float(max(n, 1)), device=device)
    return t


class PerfectModel(nn.Module):
    """Returns precomputed outputs batch after batch; losses from the real DetectionLoss."""

    def __init__(self, outputs: list[dict], cfg: Config):
        super().__init__()
        from nanxi_tune.engine.model.loss import DetectionLoss

        self.outs, self.i, self.num_classes, self.cfg = outputs, 0, 2, cfg
        self.criterion = DetectionLoss(cfg)
        self.seen_training: list[bool] = []

    def forward(self, images):
        self.seen_training.append(self.training)
        out = self.outs[self.i]
        self.i += 1
        return {k: v.to(images.device) for k, v in out.items()}

    def losses(self, outputs, targets):
        return self.criterion(outputs, targets)


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluate_perfect_model(coco_gt, monkeypatch, start_training):
    stub = types.ModuleType("nanxi_tune.engine.model.targets")
    stub.build_targets = _hand_build_targets
    monkeypatch.setitem(sys.modules, "nanxi_tune.engine.model.targets", stub)
    cfg = cfg_with()
    targets = gt_targets()
    batches = [(torch.zeros(1, 3, S, S), [t]) for t in targets]  # one image per batch
    outs = [perfect_outputs([t["boxes"]], [t["labels"]], 2, cfg) for t in targets]
    model = PerfectModel(outs, cfg).train(start_training)
    m = evaluate(model, batches, cfg, torch.device("cpu"), coco_gt, CAT_IDS)
    assert model.seen_training == [False, False]
    assert model.training is start_training
    assert m["images"] == 2
    assert set(m) >= {"mAP", "AP50", "AP75", "APs", "APm", "APl", "loss", "loss_map", "loss_offset", "loss_shape"}
    assert m["mAP"] == pytest.approx(1.0)
    assert m["loss_offset"] == pytest.approx(0.0, abs=1e-6) and m["loss_shape"] == pytest.approx(0.0, abs=1e-4)
    assert 0 <= m["loss_map"] < 0.05


def test_evaluate_real_model_runs(coco_gt, monkeypatch):
    stub = types.ModuleType("nanxi_tune.engine.model.targets")
    stub.build_targets = _hand_build_targets
    monkeypatch.setitem(sys.modules, "nanxi_tune.engine.model.targets", stub)
    from nanxi_tune.engine.model.detector import build_model

    cfg = cfg_with(**{"backbone.width": 8, "head.channels": 8, "head.depth": 1})
    model = build_model(cfg, 2)
    batches = [(torch.randn(2, 3, S, S), gt_targets())]
    m = evaluate(model, batches, cfg, torch.device("cpu"), coco_gt, CAT_IDS)
    assert model.training and m["images"] == 2
    assert m["loss_map"] > 1.0 and 0.0 <= m["mAP"] < 0.5
