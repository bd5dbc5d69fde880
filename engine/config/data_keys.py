"""The data-side keys: preprocess (input size, resize), normalize (mean/std), encode (the box encoding), data
(paths, batch, loaders) and augment."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from .fields import F, Strict


class Preprocess(Strict):
    """图像预处理 image preprocessing"""
    input_size: int = F(640, "Square network input side in pixels (multiple of 32).", zh="输入分辨率",
                        note="640×640: set from COCO's largest image to keep all information", ge=64, le=2048,
                        multiple_of=32)
    resize: Literal["same_padding", "letterbox"] = F(
        "same_padding", "same_padding: place the image unscaled on the canvas (downscale only if larger); "
        "letterbox: scale to fit keeping aspect ratio, then pad.", zh="图像尺寸预处理",
        note="letterbox paused: letterbox640 scored below same_padding (exp_lb640_2021-04-21_193450)")


class Normalize(Strict):
    """特征归一化 feature normalisation"""
    mean: tuple[float, float, float] = F((0.485, 0.456, 0.406), "Per-channel RGB mean, images scaled to [0, 1].",
                                         zh="mean", note="computed after augmentation (样本增广之后进行计算)")
    std: tuple[float, float, float] = F((0.229, 0.224, 0.225), "Per-channel RGB std, images scaled to [0, 1].",
                                        zh="std", note="computed after augmentation (样本增广之后进行计算)")
    source: Literal["default", "computed"] = F("default", "Where mean/std came from: defaults, or computed "
                                               "over augmented training samples (`nanxi-tune stats`).",
                                               note="~ defaults until computed")

    @field_validator("mean")
    @classmethod
    def _mean_finite(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        import math

        if not all(math.isfinite(m) for m in v):
            raise ValueError("every mean must be a finite number (images are scaled to [0, 1])")
        return v

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        import math

        if not all(math.isfinite(s) and s > 0 for s in v):
            raise ValueError("every std must be a finite number greater than 0")
        return v


class Encode(Strict):
    """编码 encode"""
    offset: Literal["subpixel", "centered"] = F(
        "subpixel", "Position encoding of the sub-pixel centre: subpixel = fraction in [0, 1) of the peak cell; "
        "centered = fraction − 0.5 in [−0.5, 0.5).", zh="位置编码")
    shape: Literal["wh", "log_wh", "ltrb", "ltrb_dfl"] = F(
        "wh", "Shape encoding of the box at its peak cell: wh = width/height in output cells; log_wh = their log; "
        "ltrb = distances from the centre to the four edges; ltrb_dfl = each distance as a distribution over bins "
        "of 16 input px, its expectation the distance (GFL's Distribution Focal Loss added to the shape loss).",
        zh="Shape编码")
    gaussian_alpha: float = F(0.54, "Heatmap Gaussian size: sigma = alpha × box side / 6 (TTFNet's alpha).",
                              gt=0, le=2)


class Data(Strict):
    """载入数据 data loading"""
    train: str = F("synthetic", "Training data: a COCO folder (images/ + annotations/instances_train.json), "
                   "an instances JSON path, or `synthetic` for the embedded demo set.")
    val: str = F("synthetic", "Validation data, same forms as data.train (instances_val.json in a folder).")
    batch_size: int = F(16, "Images per step.", zh="bs:批处理的数据个数",
                        note="fixed after the loss function is fixed (bs在确定loss函数之后确定)", ge=1, le=4096)
    workers: int | Literal["auto"] = F(
        0, "DataLoader worker processes: 0 = load in the training thread; auto = from the CPU cores (on a GPU all "
        "but one, at most 8; on a CPU none below 4 cores — workers would take cores from the model — then a "
        "quarter of them).")
    cache_mb: int = F(0, "Keep decoded images in memory up to this many MiB per set (0 = off); a set that fits "
                      "is decoded once instead of every epoch (BCCD at 640×480: ~0.9 MiB an image).",
                      ge=0, le=1048576)
    skip_bad: bool = F(False, "Skip unreadable images and invalid boxes with a warning instead of stopping.")
    synthetic_seed: int = F(0, "Seed of the embedded synthetic set (same seed, same images).", ge=0)
    synthetic_train: int = F(512, "Images in the synthetic train split.", ge=1, le=100000)
    synthetic_val: int = F(128, "Images in the synthetic val split.", ge=1, le=100000)
    synthetic_val_style: Literal["same", "shifted"] = F(
        "same", "Draw synthetic val from the train distribution, or from a shifted one (inverted colours, "
        "different textures) to reproduce a distribution shift.")
    synthetic_objects: Literal["mixed", "large"] = F(
        "mixed", "Objects of the synthetic set (train and val): mixed = 1-6 an image, 8 px to 45 % of the side; "
        "large = 1-3 an image, 35-90 % of the side (one object filling half the frame).")

    @model_validator(mode="after")
    def _one_synthetic_style(self) -> "Data":
        if self.synthetic_objects == "large" and self.synthetic_val_style != "same":
            raise ValueError("data.synthetic_objects = large draws train and val alike: set "
                             "data.synthetic_val_style = same (or synthetic_objects = mixed for the shifted val)")
        return self

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 64):
            return v
        raise ValueError('expected a whole number of workers from 0 to 64, or "auto"')


class Augment(Strict):
    """数据增广 augmentation"""
    min_iou_random_crop: bool = F(True, "MinIoURandomCrop (torchvision RandomIoUCrop).",
                                  zh="随机IoU限定裁减 MinIoURandomCrop", note="tuned at the end of round 2")
    min_iou_set: tuple[float, ...] = F((0.1, 0.3, 0.5, 0.7, 0.9), "IoU thresholds the crop samples from.")
    random_flip: float = F(0.5, "Horizontal flip probability.", zh="随机翻转 RandomFlip",
                           note="Record 1: TTFNet without RandomFlip dropped to 0.342", ge=0, le=1)
    zoom_out: float = F(1.0, "Scale jitter: half the samples are placed at a random spot of a canvas up to this "
                        "many times their side (torchvision RandomZoomOut, the mean colour around), so objects "
                        "shrink by up to 1/zoom_out; 1 = off.", zh="随机缩小 RandomZoomOut", ge=1, le=4)
    clean_last: float = F(0.0, "The last fraction of the planned steps trains without augmentation (as "
                          "Ultralytics closes mosaic for its last epochs), from the first epoch that starts there.",
                          zh="最后阶段不增广", ge=0, le=1)

    @field_validator("min_iou_set")
    @classmethod
    def _ious(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 <= x <= 1 for x in v):
            raise ValueError("need one or more IoU values between 0 and 1")
        return v
