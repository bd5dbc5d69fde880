"""The vectorised MinIoURandomCrop keeps torchvision RandomIoUCrop's rules and distribution."""

import statistics

import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from nanxi_tune.engine.data.iou_crop import MinIoURandomCrop

BOXES = torch.tensor([[10.0, 12, 40, 50], [60, 20, 90, 44], [30, 70, 70, 110], [100, 90, 118, 118]])


def draws(cls, n=200, options=(0.0, 0.3, 0.5, 1.0)):
    crop = cls(sampler_options=list(options))
    flat = [tv_tensors.Image(torch.zeros(3, 120, 128)),
            tv_tensors.BoundingBoxes(BOXES, format="XYXY", canvas_size=(120, 128))]
    torch.manual_seed(0)
    return [crop.make_params(flat) for _ in range(n)]


def test_every_crop_obeys_torchvision_rules():
    for p in draws(MinIoURandomCrop, options=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9)):
        assert p, "no 1.0 option, so every draw crops"
        w, h, l, t = p["width"], p["height"], p["left"], p["top"]
        assert 0.3 * 128 - 1 <= w <= 128 and 0.3 * 120 - 1 <= h <= 120 and 0.5 <= w / h <= 2.0
        assert 0 <= l and l + w <= 128 and 0 <= t and t + h <= 120
        cx, cy = (BOXES[:, 0] + BOXES[:, 2]) / 2, (BOXES[:, 1] + BOXES[:, 3]) / 2
        inside = (l < cx) & (cx < l + w) & (t < cy) & (cy < t + h)
        assert torch.equal(inside, p["is_within_crop_area"]) and inside.any()


def test_same_distribution_as_torchvision():
    ours, theirs = draws(MinIoURandomCrop), draws(v2.RandomIoUCrop)
    for key in ("width", "height", "left", "top"):
        a = [p.get(key, 128) for p in ours]
        b = [p.get(key, 128) for p in theirs]
        assert abs(statistics.mean(a) - statistics.mean(b)) < 0.1 * statistics.mean(b), key
    assert abs(sum(not p for p in ours) - sum(not p for p in theirs)) < 0.1 * len(ours)  # the keep-as-is share


def test_min_iou_is_met():
    for p in draws(MinIoURandomCrop, options=(0.3,)):
        crop = torch.tensor([[p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]]]).float()
        assert box_iou(crop, BOXES[p["is_within_crop_area"]]).max() >= 0.3
