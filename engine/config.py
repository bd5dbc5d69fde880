"""The notes' cheat-sheet (超参数速查表) as strict pydantic models.

Every field carries a description, the notes' Chinese label (``zh``) where the notes
give one, the notes' remark (``note``) and whether it may change mid-run (``live``).
The TUI builds its panels from this schema; presets and ``--set`` use the dotted keys.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from .files import RecordError, write_atomic

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
try:  # installed wheel: presets live beside engine inside nanxi_tune
    from importlib.resources import files

    _pkg = Path(str(files("nanxi_tune.presets")))
    if _pkg.is_dir():
        PRESETS_DIR = _pkg
except Exception:  # noqa: BLE001 - source checkout without install
    pass


def F(default: Any, description: str, *, zh: str | None = None, note: str | None = None,
      live: bool = False, **constraints: Any) -> Any:
    """A field with the notes' metadata attached for the UI."""
    extra = {"zh": zh, "note": note, "live": live}
    return Field(default, description=description,
                 json_schema_extra={k: v for k, v in extra.items() if v not in (None, False)} | {"live": live},
                 **constraints)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info) -> Any:
        """pydantic's lax mode reads true/false as 1/0 in a number field and 1/0 as true/false in a switch; in a
        preset either is a typo, not a value."""
        ann = cls.model_fields[info.field_name].annotation
        if isinstance(v, bool) and ann in (int, float):
            raise ValueError("expected a number, not true/false")
        if ann is bool and isinstance(v, (int, float)) and not isinstance(v, bool):
            raise ValueError("expected true or false, not a number")
        return v


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
    shape: Literal["wh", "log_wh", "ltrb"] = F(
        "wh", "Shape encoding of the box at its peak cell: wh = width/height in output cells; log_wh = their log; "
        "ltrb = distances from the centre to the four edges.", zh="Shape编码")
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
    out_stride: Literal[4, 8, 16] = F(4, "Output stride of the head's feature map.", zh="步长设置")

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


class Loss(Strict):
    """loss函数"""
    loss_scale: float = F(1.0, "Global loss scaling factor.", zh="loss_scale: loss函数缩放因子",
                          note="~ unstable to tune; with Adam likely insensitive", gt=0, le=1e4)
    s_map: float = F(0.0, "Initial log weight of the map (heatmap) loss.", zh="s_map 对数权重", ge=-10, le=10)
    s_offset: float = F(0.0, "Initial log weight of the offset loss.", zh="s_offset 对数权重", ge=-10, le=10)
    s_shape: float = F(0.0, "Initial log weight of the shape loss.", zh="s_shape 对数权重", ge=-10, le=10)
    learn_log_weights: bool = F(True, "Learn s_map/s_offset/s_shape (uncertainty weighting) or keep them fixed.")
    shape_loss: Literal["l1", "giou"] = F("l1", "Regression loss of the shape branch.")
    focal_alpha: float = F(2.0, "Focal loss exponent on the prediction (CenterNet's alpha).", gt=0, le=8)
    focal_beta: float = F(4.0, "Focal loss penalty reduction exponent near peaks (CenterNet's beta).", gt=0, le=16)


class Train(Strict):
    """训练策略 training strategy"""
    optimizer: Literal["adamw"] = F("adamw", "Optimiser.", note="AdamW as in Swin-Transformer-Object-Detection")
    base_lr: float = F(0.001, "Base learning rate at base_batch_size.", zh="base_lr: 基础学习率",
                       note="linear scaling: lr = base_lr × batch_size / base_batch_size", gt=0, le=10, live=True)
    base_batch_size: int = F(16, "Batch size at which base_lr applies.", ge=1, le=4096)
    weight_decay: float = F(0.05, "AdamW weight decay.", zh="权重衰减weight_decay", ge=0, le=10)
    beta1: float = F(0.9, "AdamW beta1.", zh="beta1", ge=0, lt=1)
    beta2: float = F(0.999, "AdamW beta2.", zh="beta2", ge=0, lt=1)
    schedule: Literal["piecewise", "constant"] = F("piecewise", "Learning-rate schedule.",
                                                   zh="piecewise_decay", note="~ default")
    milestones: tuple[float, ...] = F((0.7, 0.9), "Piecewise decay points as fractions of the total steps.",
                                      live=True)
    gamma: float = F(0.1, "Factor applied to the lr at each milestone.", gt=0, le=1, live=True)
    warmup_steps: int = F(0, "Linear warmup steps (0 = off).", ge=0,
                          note="warmup disabled: slowed early convergence (0.000310 vs 0.010725)")
    ema_decay: float = F(0.99, "EMA decay of the weights.", zh="权重更新 Decay", note="0.99", ge=0, lt=1)
    ema_ramp: bool = F(True, "Ramp the EMA decay up as min(ema_decay, (1 + n) / (10 + n)) after n updates, so "
                       "early EMA weights are not an average of weights too far apart.")
    epochs: int = F(12, "Training epochs.", ge=1, le=100000, live=True)
    max_steps: int = F(0, "Stop after this many steps (0 = run all epochs).", ge=0, live=True)
    time_budget_min: float = F(0.0, "Wall-clock budget of the run in minutes (0 = off: the length is train.epochs). "
                               "On, the run measures its step time, projects the steps that fit (evaluations "
                               "included, budget.max_days the ceiling) and places the end and train.milestones "
                               "there, re-planning as the speed changes; train.max_steps still caps it.",
                               ge=0, le=525600)
    checkpoint_every: int = F(0, "Also write last.pt every N steps between evaluations (0 = only at evaluations "
                              "and stops); a killed run loses at most N steps.", ge=0, live=True)
    keep_checkpoints: int = F(5, "Per-evaluation checkpoints kept (checkpoints/step-N.pt) for rewinding a remedy to "
                              "before the evidence.", ge=1, le=1000, live=True)
    grad_clip: float = F(0.0, "Clip the gradient norm to this value (0 = off).", ge=0, live=True)
    seed: int = F(0, "Run seed: model init, data order and augmentation derive from it.", ge=0)
    device: str = F("auto", "Device: auto (CUDA when present), cpu, cuda or cuda:N.")
    log_every: int = F(1, "Write a train metrics line every N steps.", ge=1, live=True)
    tensorboard: bool = F(True, "Also write TensorBoard event files to RUN/tensorboard/ (losses, lr, COCO metrics, "
                          "the error breakdown, and a few val images with boxes at each evaluation), so "
                          "`tensorboard --logdir runs` works beside the TUI.")
    devices: int | Literal["auto"] = F(
        1, "Devices to train on, one process each (data-parallel through torchrun); auto = every visible GPU "
        "(1 without CUDA). Above 1 the run starts through torchrun (the TUI starts it detached).",
        note="data.batch_size stays per device; lr scales with the global batch (batch_size × devices)")
    sync_bn: Literal["auto", "on", "off"] = F(
        "auto", "Data-parallel runs (torchrun): BatchNorm statistics over the global batch (SyncBatchNorm). "
        "auto = on when several devices train with data.batch_size below 16 each; one process ignores it.",
        note="data.batch_size is per device; the global batch is batch_size × devices")
    dist_timeout_s: float = F(600.0, "Data-parallel runs: seconds a collective waits for the other ranks before "
                              "the group ends (a killed or hung rank never leaves the rest waiting longer).",
                              ge=10, le=86400)

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024):
            return v
        raise ValueError("a whole number of devices from 1 to 1024, or auto (every visible GPU)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < m < 1 for m in v) or list(v) != sorted(v):
            raise ValueError("milestones are increasing fractions of the run between 0 and 1")
        return v


class Postprocess(Strict):
    """后处理 post-processing"""
    nms: bool = F(True, "Apply NMS to decoded boxes.", zh="nms: 使用NMS算法",
                  note="tuned after training, on fixed weights", live=True)
    nms_iou: float = F(0.6, "IoU above which NMS suppresses a box.", gt=0, le=1, live=True)
    score_threshold: float = F(0.01, "Drop detections scoring below this.", ge=0, lt=1, live=True)
    top_k: int = F(100, "Heatmap peaks kept per image.", ge=1, le=10000, live=True)
    pool_kernel: int = F(3, "Max-pool kernel that finds heatmap peaks (odd).", ge=1, le=15, live=True)


class Augment(Strict):
    """数据增广 augmentation"""
    min_iou_random_crop: bool = F(True, "MinIoURandomCrop (torchvision RandomIoUCrop).",
                                  zh="随机IoU限定裁减 MinIoURandomCrop", note="tuned at the end of round 2")
    min_iou_set: tuple[float, ...] = F((0.1, 0.3, 0.5, 0.7, 0.9), "IoU thresholds the crop samples from.")
    random_flip: float = F(0.5, "Horizontal flip probability.", zh="随机翻转 RandomFlip",
                           note="Record 1: TTFNet without RandomFlip dropped to 0.342", ge=0, le=1)

    @field_validator("min_iou_set")
    @classmethod
    def _ious(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 <= x <= 1 for x in v):
            raise ValueError("need one or more IoU values between 0 and 1")
        return v


class Eval(Strict):
    """实验配置 evaluation"""
    val_data_mode: Literal["full", "qmv", "rsr"] = F(
        "qmv", "Validation data: full val set, QMV (fixed quick subset of val) or RSR (random train samples).",
        zh="val_data_mode: 模型验证的数据模式", live=True)
    qmv: int = F(100, "Images in the QMV subset.", zh="QMV", note="QMV = 100", ge=1, live=True)
    rsr: int = F(3000, "Random training images reviewed in RSR mode.", zh="RANDOM_SAMPLE_NUM",
                 note="3000: below that the metric was very unstable", ge=1, live=True)
    interval: int = F(1, "Epochs between evaluations.", ge=1, live=True)
    online: bool = F(True, "Also evaluate the online (non-EMA) weights.", live=True)


class Budget(Strict):
    """训练时长要求 training-time budget"""
    max_days: float = F(4.0, "A full run must take less than this many days.", zh="训练时长要求",
                        note="< 4 days", gt=0, le=365, live=True)


class Diagnose(Strict):
    """诊断 diagnosis: thresholds of the rules in engine.diagnosis.rulebook (all live).

    The loss-curve thresholds are tuned on real runs from bench/diagnosis.py (small model on the synthetic
    set, 12 steps per epoch, an eval per epoch, seeds 0-2, run twice: before and after the vectorised
    MinIoURandomCrop changed the augmentation stream): healthy (base_lr 0.003 / 0.01), too-large lr
    (0.3 / 1 / 3) and a val set from another distribution; probes at lr 0.001, 0.03 and 0.1. The numbers
    quoted per field are from those runs (a shifted-val run's train side is its healthy twin's). The
    rest still come from one demo run (batch 16, 32 steps per epoch): per-step raw loss ±20% around its
    epoch median, largest loss over the previous-20 median 1.29, largest gradient norm over its
    previous-20 median 2.97.
    """
    enabled: bool = F(True, "Run the diagnostic rules during training.", zh="诊断", live=True)
    check_every: int = F(50, "Also check every N logged train lines between evaluations (0 = only at evals).",
                         ge=0, le=100000, live=True)
    keep_lines: int = F(2000, "Recent train lines the watcher keeps for windowed rules (older ones survive only "
                        "as per-epoch medians), so a check never rescans the whole run.", ge=100, le=1000000,
                        live=True)
    refire_change: float = F(0.25, "A rule already reported fires again only when its key evidence changed by "
                             "more than this fraction, or its remedy changed.", gt=0, le=10, live=True)
    flat_epochs: int = F(3, "Complete epochs, counted from the 2nd, before the flat-loss rule may judge "
                         "(12 healthy real runs: from the 2nd to the 3rd epoch the loss fell only 4.1-16%, at or "
                         "under flat_min_drop; from the 2nd to the 4th 7.2-21%). The check at the 4th epoch's eval "
                         "judges it.", zh="从第二个epoch开始",
                         ge=2, le=1000, live=True)
    flat_min_drop: float = F(0.05, "Flat loss: the epoch-median raw train loss fell less than this fraction from "
                             "the first half of the epochs since the 2nd to the last half (12 healthy runs: ≥ 7.2% "
                             "from the 2nd to the 4th epoch; a bouncing lr on the 6-step tiny set: 1-4.6%).",
                             gt=0, lt=1, live=True)
    flat_min_progress: float = F(0.2, "Flat loss, no progress: the raw train loss of the later epochs is less "
                                 "than this fraction below the loss of the first logged step. At the 4th epoch "
                                 "12 healthy runs (lr 0.003, 0.01) are 26-41% below it, lr 0.03 and 0.1 27-41%; lr 0.3 "
                                 "runs 3.5-15% below, lr 1 and 3 runs 3-24× above (the first steps blow the loss "
                                 "up). lr 0.001 (16% below) is slow, not hot: flat_blowup keeps it quiet.", ge=0, lt=1,
                                 live=True)
    flat_blowup: float = F(1.2, "Flat loss, no progress: only after a blow-up — some epoch-median raw train loss "
                           "above this many times the first step's (healthy runs at lr 0.001-0.1: ≤ 1.05×; lr 0.3: "
                           "1.34-3.1×, lr 1 and 3: 16-350×).", gt=1, le=1e6, live=True)
    gap_min_evals: int = F(4, "Evaluations needed before the 'far' test of the train/val gap (val lags early: on "
                           "healthy runs it stays flat for the first 3-4 evals while train falls 25%); it "
                           "compares the first half of all evals with the last half.",
                           ge=2, le=1000, live=True)
    gap_ratio: float = F(1.5, "Train/val gap: latest val raw loss at least this many times the train raw loss.",
                         gt=1, le=100, live=True)
    gap_train_min_drop: float = F(0.10, "Train/val gap: train raw loss must have fallen at least this fraction "
                                  "from the first half of the evals to the last.", gt=0, lt=1, live=True)
    gap_val_rise: float = F(0.05, "Train/val gap, rising: each of the last two val raw losses at least this "
                            "fraction above the best val loss before them while the train loss fell (healthy runs: "
                            "≤ +1.2% after their val started falling; shifted val: +6% to +20% within one eval "
                            "of rising ≥ 5% over its first evals).", gt=0, le=10,
                            live=True)
    gap_val_frac: float = F(0.25, "Train/val gap: val loss fell less than this fraction of the train loss's "
                            "relative fall (flat, oscillating or rising val loss).", ge=0, lt=1, live=True)
    shape_epochs: int = F(5, "Complete epochs (from the 2nd) before the shape-loss rule judges; it compares the "
                          "first half of all epochs since the 2nd with the last half (per-step loss_shape "
                          "varies ±20%; a healthy loss_shape can pause for 3 epochs: a 3-epoch window misfired "
                          "on 3 of 6 healthy runs, a 4-epoch one on a healthy demo run whose shape loss "
                          "paused in epochs 2–4 and fell 17% in the 5th).",
                          ge=2, le=1000, live=True)
    shape_max_drop: float = F(0.08, "Shape loss stuck: loss_shape fell less than this fraction over the window "
                              "and since the 2nd epoch (healthy runs: ≥ 15% since the 2nd epoch by the 6th).",
                              gt=0, lt=1, live=True)
    shape_others_min_drop: float = F(0.15, "…while loss_map and loss_offset fell at least this fraction on "
                                     "average (healthy demo: 22% from the 2nd to the 4th epoch).", gt=0, lt=1, live=True)
    rsr_min: int = F(3000, "Fewest random train samples for a stable RSR metric.", zh="RANDOM_SAMPLE_NUM",
                     note="3000: below that the metric was very unstable", ge=1, live=True)
    headroom_max_used: float = F(0.5, "Batch-size headroom: peak memory used below this fraction of the device "
                                 "means at least twice the batch fits.", gt=0, lt=1, live=True)
    headroom_fill: float = F(0.8, "Target memory fill when proposing a larger batch (room for fragmentation).",
                             gt=0, lt=1, live=True)
    budget_min_lines: int = F(20, "Train lines needed before projecting the run's duration (first steps are "
                              "slow: warm caches, data loading).", ge=2, le=100000, live=True)
    negative_tol: float = F(1e-6, "A branch loss below −tol counts as negative (float rounding below).",
                            ge=0, le=1, live=True)
    explode_ratio: float = F(10.0, "Exploding gradient: the median gradient norm of the last explode_window "
                             "lines exceeds this many times the lowest epoch median (healthy demo: 1.4×).",
                             gt=1, le=1e6, live=True)
    explode_window: int = F(50, "Train lines in the exploding-gradient window.", ge=5, le=100000, live=True)
    spike_factor: float = F(2.0, "Loss spike: a raw train loss above this many times the median of the "
                            "previous spike_ref lines (healthy demo max: 1.29×).", gt=1, le=1000, live=True)
    spike_ref: int = F(20, "Lines in the causal median a spike is measured against.", ge=5, le=10000,
                       live=True)
    spike_window: int = F(200, "Recent train lines in which spikes are counted.", ge=10, le=100000, live=True)
    spike_min_count: int = F(3, "Spikes in the window before the rule fires (one spike is a bad batch).",
                             ge=1, le=10000, live=True)
    dead_max: float = F(0.5, "Dead activations: a layer with more than this fraction of units never active on "
                        "a batch.", gt=0, le=1, live=True)
    plateau_evals: int = F(5, "Val plateau: evaluations without a new best mAP.", ge=2, le=1000, live=True)
    errors_from: float = F(0.5, "Rules that read the detector's errors (TIDE kinds) judge evaluations from this "
                           "fraction of the run on: early evaluations are loose by nature.", gt=0, le=1, live=True)
    errors_evals: int = F(3, "…and fire when this many evaluations in a row show the error…", ge=2, le=100,
                          live=True)
    errors_min_gain: float = F(0.02, "…while AP50 rose less than this fraction over them (still climbing: the "
                               "error is being learned away; healthy demo: +2.5% over its last three).", ge=0,
                               le=1, live=True)
    error_min_delta: float = F(0.03, "An error kind counts when fixing it would gain at least this much AP50 and "
                               "it is the largest kind.", gt=0, lt=1, live=True)
    loc_ap75_ratio: float = F(0.45, "Localisation-bound: AP75 / AP50 below this (boxes found but loosely fitted; a "
                              "15-minute run on a set of few large objects: 0.27; BCCD, healthy: 0.7).", gt=0,
                              lt=1, live=True)
    plateau_min_delta: float = F(0.005, "Val plateau: a new best must beat the old by this much mAP "
                                 "(64-image demo evals move by ~0.002 from noise).", ge=0, le=1, live=True)
    ema_drift_ratio: float = F(3.0, "EMA drift: epoch-median ema_l2 (EMA↔online weight distance, the notes' "
                               "retention metric) above this many times its lowest epoch median since the 2nd "
                               "epoch, counting only epochs after the EMA decay ramp settled (890 steps at 0.99): "
                               "while it ramps, ema_l2 grows by design (real runs: up to 3.6× at lr 0.001, 3.0× "
                               "at lr 0.01).", gt=1, le=1e6, live=True)


GROUPS: tuple[str, ...] = ("preprocess", "normalize", "encode", "data", "principles", "backbone", "neck",
                           "head", "loss", "train", "postprocess", "augment", "eval", "budget", "diagnose")


class Config(Strict):
    """The whole cheat-sheet. ``preset`` names the preset it was built from (for diffs)."""
    preset: str = Field("", description="Preset this config was built from.")
    preprocess: Preprocess = Preprocess()
    normalize: Normalize = Normalize()
    encode: Encode = Encode()
    data: Data = Data()
    principles: Principles = Principles()
    backbone: Backbone = Backbone()
    neck: Neck = Neck()
    head: Head = Head()
    loss: Loss = Loss()
    train: Train = Train()
    postprocess: Postprocess = Postprocess()
    augment: Augment = Augment()
    eval: Eval = Eval()
    budget: Budget = Budget()
    diagnose: Diagnose = Diagnose()

    @model_validator(mode="after")
    def _stride_fits(self) -> "Config":
        if self.preprocess.input_size % 32:
            raise ValueError("preprocess.input_size must be a multiple of 32")
        return self

    @property
    def lr(self) -> float:
        return linear_lr(self.train.base_lr, self.data.batch_size, self.train.base_batch_size)


# --- errors -----------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A config problem: one line per bad key, each naming the dotted key, the value and what is allowed."""

    def __init__(self, problems: list[tuple[str, Any, str]], source: str = ""):
        self.problems = problems
        self.source = source
        head = f"invalid config{f' in {source}' if source else ''}:"
        lines = [f"  {_short(str(key))} = {_repr(value)}: {msg}" if value is not _MISSING else
                 f"  {_short(str(key))}: {msg}" for key, value, msg in problems]
        super().__init__("\n".join([head, *lines]))


_MISSING = object()


def _short(text: str, limit: int = 120) -> str:
    """A text cut for a message: a 10 MB string stays one line."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _repr(value: Any) -> str:
    try:
        return _short(repr(value))
    except RecursionError:  # a list nested thousands deep
        return f"<a {type(value).__name__} nested too deeply to show>"


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        ann = model.model_fields.get(str(part))
        if ann is None or not (isinstance(ann.annotation, type) and issubclass(ann.annotation, BaseModel)):
            return []
        model = ann.annotation
    return list(model.model_fields)


def problems_from(err: ValidationError) -> list[tuple[str, Any, str]]:
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, int)) or ("config",)
        key = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            msg = "unknown key" + did_you_mean(key) + (f"; known keys here: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "model_type":
            msg = "expected a table of keys (a [section] in TOML)"
        value = e.get("input", _MISSING)
        if isinstance(value, dict):
            value = _MISSING
        out.append((key, value, msg))
    return out


def validate(data: dict, source: str = "") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(problems_from(err), source) from None


# --- dotted keys ------------------------------------------------------------------------------

def flatten(cfg: Config | dict) -> dict[str, Any]:
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in flatten(v).items()})
        else:
            out[k] = v
    return out


def field_info(key: str):
    """The pydantic FieldInfo of a dotted key, or None."""
    group, _, name = key.partition(".")
    g = Config.model_fields.get(group)
    if g is None or not name:
        return g if not name else None
    return g.annotation.model_fields.get(name)


def is_live(key: str) -> bool:
    info = field_info(key)
    return bool(info and (info.json_schema_extra or {}).get("live"))


def linear_lr(base_lr: float, batch_size: int, base_batch_size: int) -> float:
    """The notes' linear scaling rule: lr = base_lr × batch_size / base_batch_size."""
    return base_lr * batch_size / base_batch_size


def toml_value(value: Any) -> str:
    """A value as one line of TOML, as `--set key=value` and the live-edit dialogs read it back."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    import tomli_w

    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def live_keys() -> list[str]:
    """The keys a running run accepts (``live=True`` in the schema), in the cheat-sheet's order."""
    return [k for k in flatten(Config()) if is_live(k)]


def live_keys_summary() -> str:
    """The live keys in a line: ``group.*`` where a whole group is live."""
    groups: dict[str, list[str]] = {}
    for k in flatten(Config()):
        groups.setdefault(k.partition(".")[0], []).append(k)
    out = []
    for group, keys in groups.items():
        live = [k for k in keys if is_live(k)]
        out += [f"{group}.*"] if live and live == keys else live
    return ", ".join(out)


def with_live_updates(cfg: Config, updates: dict[str, Any], source: str = "live edit") -> Config:
    """``cfg`` with ``updates`` applied mid-run: unknown keys and bad values as ``with_updates`` names them, and
    every known key that is not live refused, naming the live ones."""
    problems = [(k, v, "not a live key: it cannot change mid-run (start a new run for it); live keys are "
                 + live_keys_summary()) for k, v in updates.items() if "." in k and field_info(k) is not None
                and not is_live(k)]
    try:
        new = with_updates(cfg, updates, source)
    except ConfigError as err:
        problems = [p for p in err.problems if p[0] not in {q[0] for q in problems}] + problems
        raise ConfigError(problems, source) from None
    if problems:
        raise ConfigError(problems, source)
    return new


def parse_value(text: str) -> Any:
    """A `--set` value: TOML syntax (numbers, true/false, [lists], "strings"), bare words as strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError([("value", _short(text), "nested too deeply (arrays or tables hundreds of levels deep) "
                            "to read; write a flat value")], "--set") from None


def with_updates(cfg: Config, updates: dict[str, Any], source: str = "--set") -> Config:
    """A new validated config with dotted-key updates applied."""
    data = cfg.model_dump(mode="json")
    problems = []
    for key, value in updates.items():
        group, _, name = key.partition(".")
        if group not in data or not isinstance(data[group], dict) or not name or "." in name:
            known = ", ".join(k for k in data if isinstance(data[k], dict))
            problems.append((key, value, f"unknown key{did_you_mean(key)}; keys are group.name with group one of: "
                                         f"{known}"))
            continue
        if name not in data[group]:
            problems.append((key, value, f"unknown key{did_you_mean(key)}; known keys in [{group}]: "
                                         f"{', '.join(data[group])}"))
            continue
        data[group][name] = value
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        problems += problems_from(err)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def known_keys() -> list[str]:
    """Every dotted key of the schema (group.name), in the notes' order."""
    return [f"{g}.{n}" for g, info in Config.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
            for n in info.annotation.model_fields]


def did_you_mean(key: str) -> str:
    """" (did you mean train.base_lr?)" for a misspelt dotted key (a bare name or a group's typo too), else ""."""
    import difflib

    keys = known_keys()
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close and "." not in key:  # a bare name: match it against the names without their group
        by_name = {k.split(".", 1)[1]: k for k in keys}
        close = [by_name[n] for n in difflib.get_close_matches(key, list(by_name), n=3, cutoff=0.75)]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError([(item, _MISSING, "expected key=value, e.g. train.base_lr=0.003")], "--set")
        try:
            out[key.strip()] = parse_value(text.strip())
        except ConfigError as err:  # a value nested too deeply to read: name the key
            raise ConfigError([(key.strip(), _MISSING, err.problems[0][2])], "--set") from None
    return out


def diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ: {key: (a_value, b_value)}."""
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in fa if k != "preset" and fa.get(k) != fb.get(k)}


# --- TOML / presets ---------------------------------------------------------------------------

def loads(text: str, source: str = "") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([("toml", _MISSING, f"not valid TOML: {err}")], source) from None
    except RecursionError:
        raise ConfigError([("toml", _MISSING, "not a usable preset: arrays or tables nested too deeply (hundreds "
                            "of levels) to read")], source) from None
    try:
        return validate(data, source)
    except RecursionError:
        raise ConfigError([("toml", _MISSING, "not a usable preset: values nested too deeply to check")],
                          source) from None


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("file", str(path), "no such file; give a preset name or an existing .toml path")],
                          str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([("file", str(path), f"cannot read it: {err}")], str(path)) from None
    return loads(text, str(path))


def dumps(cfg: Config) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.model_dump(mode="json"))


def save(cfg: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, dumps(cfg))
    except OSError as err:  # a full disk: the old file kept, no temp file left, the file named
        raise RecordError(err.errno, path, err) from None
    return path


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def resolve_preset(name_or_path: str) -> Path:
    p = Path(name_or_path)
    try:
        if p.suffix == ".toml" or p.exists():
            return p
    except OSError:  # a name too long for a path ("File name too long"): not a file, so not a preset either
        name_or_path = _short(name_or_path, 60)
    bundled = PRESETS_DIR / f"{name_or_path}.toml"
    if bundled.exists():
        return bundled
    raise ConfigError([("preset", name_or_path, f"no such preset; bundled presets: {', '.join(preset_names())}"
                        " (or give a path to a .toml file)")])


def load_preset(name_or_path: str) -> Config:
    """Load a preset by bundled name or path; the result remembers the preset it came from."""
    path = resolve_preset(name_or_path)
    cfg = load(path)
    if not cfg.preset:
        cfg = cfg.model_copy(update={"preset": path.stem if path.parent == PRESETS_DIR else str(path)})
    return cfg


def base_of(cfg: Config) -> Config | None:
    """The preset a config was built from, if it can still be loaded."""
    if not cfg.preset:
        return None
    try:
        return load_preset(cfg.preset)
    except ConfigError:
        return None
