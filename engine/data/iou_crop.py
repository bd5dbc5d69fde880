"""MinIoURandomCrop as torchvision's RandomIoUCrop, with its candidate search vectorised.

torchvision's ``make_params`` tries up to ``trials`` crops one at a time in Python (a box_iou call per
trial) and, for an IoU option no crop can meet — small objects rarely reach IoU 0.7 with a crop of
at least 30 % of the image — loops until another option is drawn: ~50 ms a sample on a CPU, most of
a demo training step. Here the ``trials`` candidates of one option are drawn and checked at once;
the distribution and the validity rules are torchvision's, the crop itself is still its ``transform``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import box_iou
from torchvision.transforms import v2
from torchvision.transforms.v2._utils import get_bounding_boxes, query_size


class MinIoURandomCrop(v2.RandomIoUCrop):
    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        orig_h, orig_w = query_size(flat_inputs)
        boxes = get_bounding_boxes(flat_inputs).as_subclass(torch.Tensor).float()  # XYXY (the only format we make)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        n = self.trials
        while True:
            min_iou = self.options[int(torch.randint(0, len(self.options), (1,)))]
            if min_iou >= 1.0:  # leave the image as it is
                return {}
            r = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(n, 2)
            w, h = (orig_w * r[:, 0]).long(), (orig_h * r[:, 1]).long()
            aspect = w / h.clamp(min=1)
            p = torch.rand(n, 2)
            left, top = ((orig_w - w) * p[:, 0]).long(), ((orig_h - h) * p[:, 1]).long()
            right, bottom = left + w, top + h
            ok = (h > 0) & (w > 0) & (aspect >= self.min_aspect_ratio) & (aspect <= self.max_aspect_ratio)
            inside = ((left[:, None] < cx) & (cx < right[:, None]) & (top[:, None] < cy) & (cy < bottom[:, None]))
            crops = torch.stack([left, top, right, bottom], 1).float()
            iou = torch.where(inside, box_iou(crops, boxes), torch.zeros(()))  # only boxes centred inside count
            ok &= inside.any(1) & (iou.max(1).values >= min_iou)
            hits = ok.nonzero()
            if len(hits):
                i = int(hits[0])
                return dict(top=int(top[i]), left=int(left[i]), height=int(h[i]), width=int(w[i]),
                            is_within_crop_area=inside[i])
