"""The notes' rules on the configuration (warmup, head BatchNorm and activation, letterbox, flips, the RSR
sample, normalization, loss_scale with Adam) and on resources (batch headroom, the time budget, negative loss)."""

from __future__ import annotations

import math

from .rulebook import Finding, History, finite, median, r, remedy, rule
from .curve_rules import last_step


# --- the notes' rules: configuration -------------------------------------------------------------

def _config_finding(rule_id: str, severity: str, section: str, message: str, evidence: dict, set_: dict,
                    text: str, h: History, command: str = "") -> Finding:
    return Finding(rule_id, severity, section, message, evidence, remedy(set_, None, text, command), last_step(h))


@rule("warmup-enabled", "10.2.1.1")
def warmup_enabled(cfg, h, stats):
    if cfg.train.warmup_steps <= 0:
        return None
    return _config_finding(
        "warmup-enabled", "warning", "10.2.1.1",
        f"Warmup is on (train.warmup_steps = {cfg.train.warmup_steps}); the notes disable it: it slowed early "
        "convergence (我们尝试了Warmup策略,会使模型在初期收敛缓慢; 2020-06-06 config-warmup 0.000310 vs config-plain "
        "0.010725).", {"warmup_steps": cfg.train.warmup_steps}, {"train.warmup_steps": 0},
        "start a new run with train.warmup_steps = 0", h)


@rule("head-batchnorm", "13")
def head_batchnorm(cfg, h, stats):
    if cfg.head.norm != "bn":
        return None
    return _config_finding(
        "head-batchnorm", "warning", "13",
        "The head uses BatchNorm (head.norm = bn); the notes say no BatchNorm in the head: it slows convergence, "
        "likely because of the heatmap's sparsity (Head模块中不要使用BN层,会使得网络收敛变慢).",
        {"head.norm": "bn"}, {"head.norm": "none"}, "start a new run with head.norm = none", h)


_ACT_NOTES = {
    "hsigmoid": ("warning", "H-Sigmoid slowed convergence: keep head operators smooth, avoid non-differentiable "
                 "points (尽量保证head部分算子的连续性)"),
    "softskim": ("warning", "SoftSkim (x.sigmoid()−0.1)·1.2 tested badly (初步测试了一下,效果不好)"),
    "heatskim": ("info", "HeatSkim was of no use and is disabled (不要使用heat_skim)"),
}


@rule("non-smooth-head-activation", "13")
def non_smooth_head_activation(cfg, h, stats):
    act = cfg.head.range_norm_act
    if act not in _ACT_NOTES:
        return None
    severity, why = _ACT_NOTES[act]
    return _config_finding(
        "non-smooth-head-activation", severity, "13",
        f"head.range_norm_act = {act}: {why}. The notes keep sigmoid.", {"head.range_norm_act": act},
        {"head.range_norm_act": "sigmoid"}, "start a new run with head.range_norm_act = sigmoid", h)


@rule("letterbox-selected", "7")
def letterbox_selected(cfg, h, stats):
    if cfg.preprocess.resize != "letterbox":
        return None
    return _config_finding(
        "letterbox-selected", "info", "7",
        "preprocess.resize = letterbox; the notes paused letterbox: letterbox640 scored below same_padding "
        "(暂停使用letterbox; exp_lb640_2021-04-21_193450).", {"preprocess.resize": "letterbox"},
        {"preprocess.resize": "same_padding"}, "start a new run with preprocess.resize = same_padding", h)


@rule("random-flip-disabled", "9")
def random_flip_disabled(cfg, h, stats):
    if cfg.augment.random_flip > 0:
        return None
    return _config_finding(
        "random-flip-disabled", "warning", "9",
        "RandomFlip is off (augment.random_flip = 0); Record 1: TTFNet without RandomFlip dropped to 0.342 "
        "(TTFNet去掉RandomFlip分数降到0.342).", {"augment.random_flip": cfg.augment.random_flip},
        {"augment.random_flip": 0.5}, "start a new run with augment.random_flip = 0.5", h)


@rule("rsr-sample-too-small", "5.2")
def rsr_sample_too_small(cfg, h, stats):
    d = cfg.diagnose
    if cfg.eval.val_data_mode != "rsr" or cfg.eval.rsr >= d.rsr_min:
        return None
    return _config_finding(
        "rsr-sample-too-small", "warning", "5.2",
        f"RSR reviews only {cfg.eval.rsr} random train images; below {d.rsr_min} the metric was very unstable "
        f"(RANDOM_SAMPLE_NUM = 3000,如果小于这个参数,评测值会十分不稳定). Compare evals with care.",
        {"eval.rsr": cfg.eval.rsr, "min": d.rsr_min}, {"eval.rsr": d.rsr_min},
        f"set eval.rsr = {d.rsr_min} (live: applies at the next eval)", h)


@rule("stale-normalization", "8")
def stale_normalization(cfg, h, stats):
    if cfg.normalize.source == "computed":
        return None
    return _config_finding(
        "stale-normalization", "info", "8",
        "normalize.mean/std are defaults, not computed over the augmented training samples; the notes compute "
        "them after augmentation (mean&std在样本增广之后进行计算), which speeds up convergence.",
        {"normalize.source": cfg.normalize.source, "mean": list(cfg.normalize.mean), "std": list(cfg.normalize.std)},
        {}, "compute per-channel mean/std over augmented training samples, set normalize.mean/std and "
        "normalize.source = computed, then start a new run (TUI: Alt+M)", h,
        "nanxi-tune stats --preset {run}/config.toml --save {run}-normalized.toml, then "
        "nanxi-tune train --preset {run}-normalized.toml")


@rule("loss-scale-with-adam", "14.1")
def loss_scale_with_adam(cfg, h, stats):
    if cfg.loss.loss_scale == 1 or cfg.train.optimizer != "adamw":
        return None
    return _config_finding(
        "loss-scale-with-adam", "info", "14.1",
        f"loss.loss_scale = {cfg.loss.loss_scale:g} with AdamW: the notes left it at its default as too unstable "
        "to tune, and conjecture Adam makes the optimisation insensitive to a global loss scale "
        "(不稳定的原因可能是因为使用了Adam优化算法,导致优化过程对缩放因子ls不敏感).",
        {"loss.loss_scale": cfg.loss.loss_scale, "train.optimizer": cfg.train.optimizer},
        {"loss.loss_scale": 1.0}, "start a new run with loss.loss_scale = 1", h)


# --- the notes' rules: resources ------------------------------------------------------------------

@rule("batch-size-headroom", "10", key="used_fraction")
def batch_size_headroom(cfg, h, stats):
    """Peak memory below ``headroom_max_used`` of the device: propose the largest power-of-two multiple of
    the batch that stays under ``headroom_fill``."""
    d = cfg.diagnose
    mem = stats.get("memory") or {}
    used, total = mem.get("used"), mem.get("total")
    if not (finite(used) and finite(total)) or total <= 0 or used <= 0:
        return None
    frac = used / total
    if frac >= d.headroom_max_used:
        return None
    factor = 2 ** int(math.floor(math.log2(d.headroom_fill / frac)))
    if factor < 2:
        return None
    bs = min(cfg.data.batch_size * factor, 4096)
    return Finding(
        "batch-size-headroom", "info", "10",
        f"Peak memory is {frac:.0%} of the device: a {factor}× batch fits (data.batch_size {cfg.data.batch_size} → "
        f"{bs}). Batch size as large as possible (Batchsize调整的尽量大): a larger batch represents the training "
        f"distribution better and zig-zags less; lr follows by linear scaling.",
        {"used": used, "total": total, "used_fraction": r(frac, 3), "batch_size": cfg.data.batch_size},
        remedy({"data.batch_size": bs}, None, f"start a new run with data.batch_size = {bs} (the notes fix the batch "
               "size after the loss function)"),
        last_step(h))


@rule("over-time-budget", "3", key="projected_days")
def over_time_budget(cfg, h, stats):
    """total_steps × median seconds per step (evals excluded: a lower bound) > budget.max_days."""
    d = cfg.diagnose
    lines = [m for m in h.train if finite(m.get("time"))]
    if len(lines) < d.budget_min_lines:
        return None
    rates = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(lines, lines[1:])
             if b["step"] > a["step"] and b["time"] >= a["time"]]
    sps = median(rates)
    total = lines[-1].get("total_steps") or cfg.train.max_steps
    if not sps or not total:
        return None
    days = total * sps / 86400
    if days <= cfg.budget.max_days:
        return None
    scale = cfg.budget.max_days / days * 0.95
    if cfg.train.max_steps:
        key, value = "train.max_steps", max(1, int(cfg.train.max_steps * scale))
    else:
        key, value = "train.epochs", max(1, int(cfg.train.epochs * scale))
    return Finding(
        "over-time-budget", "warning", "3",
        f"At {sps:.3g} s/step the {total} steps take {days:.1f} days, over the budget of "
        f"{cfg.budget.max_days:g} (训练时长要求: < 4days). Shorten the run ({key} → {value}), use a larger batch or a "
        f"smaller input.",
        {"seconds_per_step": r(sps), "total_steps": total, "projected_days": r(days, 3),
         "max_days": cfg.budget.max_days},
        remedy({key: value}, None, f"set {key} = {value} (live)"),
        last_step(h))


@rule("negative-loss", "14.3")
def negative_loss(cfg, h, stats):
    neg = h.negative
    if neg is None:
        return None
    keys = ", ".join(f"{k} = {v:.4g}" for k, v in neg["values"].items())
    return Finding(
        "negative-loss", "error", "14.3",
        f"A loss that cannot be negative went negative at step {neg['step']} ({neg['split']}: {keys}). The notes "
        f"deprecated KLDivLoss for exactly this (KLDivLoss的loss会出现负数): the loss implementation or its targets "
        f"are wrong, so the run's numbers cannot be trusted.",
        {"step": neg["step"], "split": neg["split"], **{k: r(v) for k, v in neg["values"].items()}},
        remedy({}, max(neg["step"] - 1, 0), "fix the loss (or its targets) before tuning anything; the runs since "
               "this step optimised a wrong objective"),
        last_step(h))
