"""The detector's keys: principles, backbone, neck, head and loss (the map / offset / shape branches)."""

from __future__ import annotations

from typing import Literal

from pydantic import StrictInt, field_validator

from .fields import F, Strict


class Principles(Strict):
    """principles 设计原则"""
    act: Literal["relu", "silu", "leaky_relu", "mish", "hardswish"] = F("silu", "Activation function.",
                                                                          zh="act: 激活函数")
    weights_init: Literal["trunc_normal", "kaiming", "xavier", "torch_default"] = F(
        "trunc_normal", "Parameter initialisation.", zh="weights_init: 参数初始化",
        note="trunc_normal in use (a controlled comparison was run)")


class Backbone(Strict):
    """Backbone"""
    name: Literal["nanxi", "resnet18", "resnet34", "resnet50", "mobilenet_v3_large", "regnet_y_400mf",
                  "regnet_y_800mf", "efficientnet_b0", "convnext_tiny"] = F(
        "nanxi", "nanxi: the notes' own small residual stack (width, depth and principles.act apply); the others "
        "are torchvision's builders without their classifier, with their own activations, feeding the same neck "
        "and head (stage strides and channels read from the built model).")
    weights: str = F("", "Initial backbone weights: a state dict file (.pt/.pth; a run's checkpoint works too), a "
                     "torchvision weights name such as IMAGENET1K_V1 (downloaded when the machine can), or empty "
                     "to train from scratch.")
    width: int = F(32, "Channels of the first stage; each stage doubles it (backbone.name = nanxi).", ge=4, le=512)
    depth: int = F(1, "Residual blocks per stage (backbone.name = nanxi).", ge=1, le=8)
    input_channels_bn: bool = F(False, "A learnable BatchNorm on the input channels.",
                                zh="input_channels_bn: 输入通道归一化", note="~ off: no visible effect")


class Neck(Strict):
    """neck"""
    spp_kernels: tuple[StrictInt, ...] = F((5, 9, 13), "Max-pool kernels of the SPP block (odd).",
                                     note="yolov5x's SPP instead of a costly stride search")
    out_stride: Literal[4, 8, 16, "auto"] = F(
        4, "Output stride of the head's feature map. auto: chosen from the train split when a run starts — the "
        "coarsest stride on which the 5th-percentile object's short side still spans 4 cells (BCCD: 4; a few large "
        "objects: 16); the run's config.toml records the choice.", zh="步长设置",
        note="few large objects: 8 or 16 (15-min held-out mAP 0.86 / 0.88 vs 0.60 at 4, bench/ablation.py); "
        "BCCD's small cells: 8 as good as 4 (0.596 vs 0.604)")

    @field_validator("spp_kernels")
    @classmethod
    def _odd(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(k < 1 or k % 2 == 0 or k > 31 for k in v):
            raise ValueError("need one or more odd kernel sizes between 1 and 31")
        return v


class Head(Strict):
    """Head"""
    channels: int = F(64, "Channels of each branch's conv tower.", ge=4, le=1024,
                      note="needs enough capacity: loss_shape stuck high means the head is too simple")
    depth: int = F(2, "3×3 conv layers per branch before its output layer.", ge=0, le=8)
    norm: Literal["none", "bn"] = F("none", "Normalisation in the head.", note="no BatchNorm in the head: "
                                    "it slows convergence (不要使用BN层); bn only for experiments")
    range_norm_act: Literal["sigmoid", "hsigmoid", "softskim", "heatskim"] = F(
        "sigmoid", "Range-normalising activation of the heatmap.", zh="range_norm_act",
        note="keep it smooth: hsigmoid slowed convergence; softskim tested badly; heatskim no use")
    shape_quality: bool = F(
        False, "The shape branch also predicts how well its own box fits (框质量: the IoU of the box it decodes with "
        "the object's box, learned at the centre cells), so a tight box can outrank a loose one "
        "(postprocess.quality_weight); one more output channel.", zh="框质量")


class Loss(Strict):
    """loss函数"""
    loss_scale: float = F(1.0, "Global loss scaling factor.", zh="loss_scale: loss函数缩放因子",
                          note="~ unstable to tune; with Adam likely insensitive", gt=0, le=1e4)
    s_map: float = F(0.0, "Initial log weight of the map (heatmap) loss.", zh="s_map 对数权重", ge=-10, le=10)
    s_offset: float = F(0.0, "Initial log weight of the offset loss.", zh="s_offset 对数权重", ge=-10, le=10)
    s_shape: float = F(0.0, "Initial log weight of the shape loss.", zh="s_shape 对数权重", ge=-10, le=10)
    learn_log_weights: bool = F(True, "Learn s_map/s_offset/s_shape (uncertainty weighting) or keep them fixed.")
    shape_loss: Literal["l1", "giou"] = F("l1", "Regression loss of the shape branch (live: the weights fit either "
                                          "loss, so a run may switch to GIoU mid-way, as the localisation-bound "
                                          "remedy does).", live=True)
    shape_samples: Literal["centre", "gaussian"] = F(
        "centre", "Cells the shape branch learns from: each object's centre cell (CenterNet), or every cell of its "
        "Gaussian window weighted by the Gaussian (TTFNet: more samples, tighter boxes on large objects).",
        zh="回归样本", live=True)
    focal_alpha: float = F(2.0, "Focal loss exponent on the prediction (CenterNet's alpha).", gt=0, le=8)
    focal_beta: float = F(4.0, "Focal loss penalty reduction exponent near peaks (CenterNet's beta).", gt=0, le=16)
