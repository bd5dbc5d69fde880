"""The notes' vocabulary as names, defined once: the head's three branches and the keys every run logs.

A branch is a per-class heatmap ("map"), a sub-pixel centre offset ("offset") and a box shape ("shape"); each
has a raw loss ``loss_<branch>`` and a learnable log weight ``s_<branch>`` (uncertainty weighting).
"""

from __future__ import annotations

BRANCHES = ("map", "offset", "shape")
BRANCH_LOSSES = tuple(f"loss_{b}" for b in BRANCHES)  # raw per-branch losses, as logged
LOG_WEIGHTS = tuple(f"s_{b}" for b in BRANCHES)  # the learnable log weights s_map, s_offset, s_shape
LOSSES = ("loss", *BRANCH_LOSSES)  # the weighted total, then each branch
COCO_METRICS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")
