"""The run's keys: train (lr, schedule, EMA, devices, budget in time), postprocess, eval and budget."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from .fields import F, Strict


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
                               "there, re-planning as the speed changes (and when the budget is edited live); "
                               "train.max_steps still caps it.", ge=0, le=525600, live=True)
    checkpoint_every: int = F(0, "Also write last.pt every N steps between evaluations (0 = only at evaluations "
                              "and stops); a killed run loses at most N steps.", ge=0, live=True)
    keep_checkpoints: int = F(5, "Per-evaluation checkpoints kept (checkpoints/step-N.pt) for rewinding a remedy to "
                              "before the evidence.", ge=1, le=1000, live=True)
    grad_clip: float = F(0.0, "Clip the gradient norm to this value (0 = off).", ge=0, live=True)
    seed: int = F(0, "Run seed: model init, data order and augmentation derive from it.", ge=0)
    init_from: str = F("", "Start from another run's detector: a run folder or a checkpoint file (its EMA weights, "
                       "the ones its evaluations scored; every layer — backbone, neck, head); the optimizer, step "
                       "and lr schedule start fresh. Empty: random weights (backbone.weights still loads a "
                       "backbone alone). The autopilot's final run starts from its search's best trial.")
    device: str = F("auto", "Device: auto (CUDA when present), cpu, cuda or cuda:N.")
    channels_last: bool = F(True, "Hold the model and its batches in channels_last memory (NHWC): the convolutions' "
                            "fast path on CPUs and on GPUs' tensor cores — a training step 1.56× (BCCD) and 1.45× "
                            "(stride 16) faster on a 2-core CPU (bench/step_breakdown.py times both layouts). The "
                            "weights are the same either way.")
    precision: Literal["auto", "bf16", "fp32"] = F(
        "auto", "Compute precision of the detector's layers: bf16 runs them in bfloat16 (autocast; the weights, "
        "the optimizer, the loss and the decode stay float32), fp32 in float32 throughout. auto = bf16 where the "
        "device computes it natively (a bf16 GPU; a CPU with AVX512-BF16 or AMX), else fp32.",
        zh="混合精度", note="a BCCD training step 1.57× faster in bf16 on a 2-core AVX512-BF16 CPU")
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
    score_threshold: float = F(0.01, "Drop detections scoring below this (with head.shape_quality: whose heatmap "
                               "peak is below this, before the quality weighs in).", ge=0, lt=1, live=True)
    top_k: int = F(100, "Heatmap peaks kept per image.", ge=1, le=10000, live=True)
    pool_kernel: int = F(3, "Max-pool kernel that finds heatmap peaks (odd).", ge=1, le=15, live=True)
    flip_test: bool = F(False, "Also run the detector on the mirrored image and average the two heatmaps and shapes "
                        "(CenterNet's flip test): twice the inference time, no training change.", zh="翻转测试",
                        note="tune-post keeps it when it raises mAP on the scored images (BCCD +0.009 to +0.012)",
                        live=True)
    quality_weight: float = F(1.0, "With head.shape_quality, a detection scores heatmap × quality^w (w = this): 0 "
                              "ranks by the heatmap alone; the larger, the more a tight box outranks a loose one.",
                              ge=0, le=16, live=True, note="tune-post chooses it on the scored images (a few "
                              "large objects: held-out mAP rose with it, +0.005 from 0 to 8 on the same weights)")
    shape_vote: float = F(0.0, "Each peak's box shape is the average of the shapes at the 3×3 cells around it, each "
                          "weighted by its heatmap value^p (p = this); 0: the peak's own shape alone.", ge=0, le=16,
                          zh="邻格投票", live=True, note="tune-post chooses it on the scored images (a few large "
                          "objects, held-out, same weights: +0.004 to +0.010 mAP50-95 with p = 4)")


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
