"""The diagnostic rules: small pure functions ``(cfg, history, stats) -> Finding | None``.

Ids are public and stable (like a linter's). ``RULES`` maps each id to its function, the notes'
section (or a generic rule's source) and the evidence key whose material change lets the watcher
report it again (see engine.diagnosis.watcher.Watcher). Thresholds live in ``cfg.diagnose``.

Epoch numbers in evidence are metrics.jsonl's (0-based: epoch 1 is the notes' "2nd epoch");
messages count from 1.
"""

from __future__ import annotations

import math
from typing import Any

from .. import config as C
from .rulebook import BRANCHES, PLAYBOOK, RULES, Finding, History, Rule, finite, lower_lr, median, r, raw_loss, rel_drop, remedy, rule

def _step(h: History) -> int:
    return h.last_step


def _quantile(xs: list[float], q: float) -> float | None:
    xs = sorted(x for x in xs if finite(x))
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def healthy_window(cfg: C.Config, h: History, before_step: int):
    """The latest complete epoch that ended before ``before_step`` and was healthy: its raw train loss (median) at
    least ``flat_min_progress`` below the first logged loss, no line in it above ``spike_factor`` × that median,
    finite gradient norms logged, and no blow-up (an epoch median above ``flat_blowup`` × the first loss) at or
    before it. None when the run never was healthy (a too-large lr blows the loss up in its first steps)."""
    d = cfg.diagnose
    start = raw_loss(h.first_train) if h.first_train else None
    if not finite(start) or start <= 0:
        return None
    found = None
    for e in h.complete_epochs(0):
        if e.last_step >= before_step:
            break
        m = e.median("raw")
        if m is None:
            continue
        if m > d.flat_blowup * start:
            return None  # blown up: what came before is too early to size a clip from, what comes after is damaged
        raw, grads = e.samples("raw"), [g for g in e.samples("grad_norm") if finite(g)]
        if grads and (rel_drop(start, m) or 0.0) >= d.flat_min_progress and max(raw) <= d.spike_factor * m:
            found = e
    return found


def _stabilise(cfg: C.Config, h: History, before_step: int) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The Playbook's order of fixes for instability, warmup excluded (the notes disable it, 10.2.1.1): clip the
    gradient near the 90th percentile of a window that was actually healthy first; once clipping is on, or when
    the run never was healthy (nothing to size a clip from), lower the lr. Returns (set, how, evidence)."""
    win = healthy_window(cfg, h, before_step) if cfg.train.grad_clip == 0 else None
    p90 = _quantile(win.samples("grad_norm"), 0.9) if win is not None else None
    if p90:
        clip = float(f"{p90:.2g}")
        return ({"train.grad_clip": clip}, f"clip gradients at {clip:g} (≈ the 90th percentile of the gradient "
                f"norms of epoch {win.epoch + 1}, the last healthy one), then resume; if it recurs, lower the lr",
                {"healthy_epoch": win.epoch, "healthy_steps": [win.first_step, win.last_step], "clip_p90": r(p90)})
    new = lower_lr(cfg.train.base_lr)
    why = ("clipping is already on" if cfg.train.grad_clip else
           "no healthy window before it to size a gradient clip from")
    return ({"train.base_lr": new}, f"lower the lr ({why}): train.base_lr {cfg.train.base_lr:g} → {new:g}",
            {"healthy_epoch": None})


# --- the notes' rules: training curves ------------------------------------------------------------

@rule("flat-loss-after-epoch-2", "13.1")
def flat_loss_after_epoch_2(cfg, h, stats):
    """From the 2nd epoch on the raw train loss stops decreasing, judged once ≥ ``flat_epochs`` epochs from the
    2nd are complete, in either of the two ways a too-large lr shows on real runs:

    * flat: the median of the later half of those epochs' medians is less than ``flat_min_drop`` below the
      earlier half (the step bounces between the valley's walls at one level);
    * no progress: it is still less than ``flat_min_progress`` below the loss of the first logged step, after an
      epoch median rose above ``flat_blowup`` × that loss (the first steps blew the loss up and it is only
      crawling back, often with the log weights s_* run away). The blow-up keeps a slow, too-small lr — which
      also makes little progress — from being told to lower the lr.
    """
    d = cfg.diagnose
    eps = h.complete_epochs(start=1)
    if len(eps) < d.flat_epochs:
        return None
    first, last = eps[0], eps[-1]
    half = len(eps) // 2  # more epochs, less noise: compare the first and the last half of the window
    a = median(e.median("raw") for e in eps[:half])
    b = median(e.median("raw") for e in eps[-half:])
    drop = rel_drop(a, b)
    start = raw_loss(h.first_train) if h.first_train else None
    progress = rel_drop(start, b) if finite(start) and start > 0 else None
    peak = max((e.median("raw") or 0.0) for e in h.complete_epochs(0))
    blew_up = progress is not None and peak > d.flat_blowup * start
    flat = drop is not None and drop < d.flat_min_drop
    stuck = blew_up and progress < d.flat_min_progress
    if not (flat or stuck):
        return None
    new = lower_lr(cfg.train.base_lr)
    meds = {str(e.epoch): r(e.median("raw")) for e in eps[-10:]}
    if stuck:
        how = (f"it is {b:.4g} in epochs {eps[-half].epoch + 1}–{last.epoch + 1}, "
               + (f"{progress:.0%} below" if progress >= 0 else f"{-progress:.0%} above")
               + f" the {start:.4g} it started from")
    else:
        how = f"its median went {a:.4g} → {b:.4g} ({-drop:+.1%}) from epoch 2 to epoch {last.epoch + 1}"
    # The evidence window starts at the 2nd epoch: rewind to the end of the 1st. After a blow-up the evidence
    # starts at the blow-up: every checkpoint since carries its damage (real runs: a child resumed at lr 0.1 from
    # the end of a blown-up 1st epoch scored mAP 0.000), so rewind to before the epoch where it began.
    resume, where = max(first.first_step - 1, 0), "resume from the end of the 1st epoch, before the loss went flat"
    if stuck:
        blew = next(e for e in h.complete_epochs(0) if (e.median("raw") or 0.0) > d.flat_blowup * start)
        resume = max(blew.first_step - 1, 0) if blew.epoch > 0 else 0
        where = ("start again from step 0: the loss blew up in the 1st epoch" if resume == 0 else
                 f"resume from the end of epoch {blew.epoch}, before the loss blew up")
    return Finding(
        "flat-loss-after-epoch-2", "warning", "13.1",
        f"From the 2nd epoch on the train loss stays flat (从第二个epoch开始loss就一直保持不变,不在下降): {how}. "
        f"The lr is likely too large: the step bounces between the walls of the valley "
        f"(学习率较大,导致梯度向量在斜坡两侧不断来回碰撞). Lower the lr (降低学习率lr): {cfg.train.base_lr:g} → {new:g}.",
        {"epoch_medians": meds, "from_epoch": first.epoch, "to_epoch": last.epoch, "drop": r(drop),
         "threshold": d.flat_min_drop, "start_loss": r(start), "progress": r(progress),
         "progress_threshold": d.flat_min_progress, "peak_epoch_median": r(peak),
         "kind": "no-progress" if stuck else "flat",
         "base_lr": cfg.train.base_lr},
        remedy({"train.base_lr": new}, resume,
               f"lower train.base_lr one step on the 0.001/0.003/0.01 grid ({cfg.train.base_lr:g} → {new:g}) and "
               f"{where}"),
        _step(h))


def _train_level(h: History, val_line: dict[str, Any]) -> float | None:
    s = h.epochs.get(int(val_line.get("epoch", -1)))
    return s.median("raw") if s else None


@rule("train-val-gap", "13.2", key="ratio")
def train_val_gap(cfg, h, stats):
    """Train loss falls while val loss does not, in either of two ways (both 13.2):

    * rising: the val raw loss of each of the last two evals is ≥ ``gap_val_rise`` above the best (lowest) val
      loss before them, while the train loss (epoch medians at those evals) kept falling since that best eval
      and fell ≥ ``gap_train_min_drop`` since the first eval — val turned away from train (over-fitting, or a
      val set from another distribution);
    * far: after ≥ ``gap_min_evals`` evals, from the first half of the evals to the last the train loss fell by
      ≥ ``gap_train_min_drop`` while the val loss fell by less than ``gap_val_frac`` of that (flat, oscillating
      or rising), ending ≥ ``gap_ratio``× above the train loss.

    The min of the last two evals (not the last alone) keeps a single noisy eval from firing the rising test.
    Neither fires before the train loss is ``flat_min_progress`` below its first step's (a too-large lr's
    blow-up recovering is flat-loss-after-epoch-2's finding).
    """
    d = cfg.diagnose
    vals = [v for v in h.val if finite(raw_loss(v))]
    if len(vals) < 3:
        return None
    levels = [_train_level(h, v) for v in vals]
    if any(x is None for x in levels):
        return None
    vl = [raw_loss(v) for v in vals]
    new = lower_lr(cfg.train.base_lr)
    start = raw_loss(h.first_train) if h.first_train else None
    if finite(start) and (rel_drop(start, levels[-1]) or 0.0) < d.flat_min_progress:
        return None  # train has not come down from its start: a blow-up recovering (flat-loss's business), not a gap

    # rising: the last two evals both above the best one before them, train still falling
    best_i = min(range(len(vals) - 2), key=lambda i: vl[i])
    rise = min(vl[-2:]) / vl[best_i] - 1 if vl[best_i] > 0 else None
    t_drop = rel_drop(levels[best_i], median(levels[-2:]))
    t_total = rel_drop(levels[0], median(levels[-2:]))
    rising = (rise is not None and rise >= d.gap_val_rise and t_drop is not None and t_drop > 0
              and t_total is not None and t_total >= d.gap_train_min_drop)

    far = False
    win, half = vals, len(vals) // 2
    if len(vals) >= d.gap_min_evals and not rising:
        t0, t1 = median(levels[:half]), median(levels[-half:])
        train_drop = rel_drop(t0, t1)
        v0, v1 = median(vl[:half]), median(vl[-half:])
        val_drop = rel_drop(v0, v1)
        far = (train_drop is not None and train_drop >= d.gap_train_min_drop and val_drop is not None
               and val_drop < d.gap_val_frac * train_drop and bool(t1) and v1 / t1 >= d.gap_ratio)
    if not (rising or far):
        return None
    if rising:
        v0, v1, t0, t1 = vl[best_i], min(vl[-2:]), levels[0], median(levels[-2:])
        train_drop, val_drop, win = t_total, rel_drop(v0, v1), vals[best_i:]
        how = (f"val rose {rise:+.0%} from its best {v0:.4g} (step {int(vals[best_i]['step'])}) to {v1:.4g} while "
               f"train kept falling ({levels[best_i]:.4g} → {t1:.4g}; {-train_drop:+.0%} since the first eval)")
    else:
        how = (f"train fell {-train_drop:+.0%} while val {'only oscillates' if val_drop > -0.05 else 'rises'} "
               f"({-val_drop:+.0%}) over {len(win)} evals, ending at {v1:.4g} vs train {t1:.4g} ({v1 / t1:.1f}×)")
    return Finding(
        "train-val-gap", "warning", "13.2",
        f"Train loss keeps falling while val loss ends far from it "
        f"(train集的loss不断下降,而val集的loss最终与训练集loss相差很大): {how}. Over-fitting, or the train set does "
        f"not represent the val set (distribution shift: 训练集与验证集的分布存在较大的差异性). Try a lower lr "
        f"({cfg.train.base_lr:g} → {new:g}) and look at the data.",
        {"evals": [int(v["step"]) for v in win], "val_losses": [r(raw_loss(v)) for v in win],
         "train_from": r(t0), "train_to": r(t1), "train_drop": r(train_drop), "val_drop": r(val_drop),
         "ratio": r(v1 / t1) if t1 else None, "kind": "rising" if rising else "far",
         **({"train_drop_since_best": r(t_drop)} if rising else {})},
        remedy({"train.base_lr": new}, int(win[0]["step"]),
               "lower the lr one grid step and resume from the first eval of the window (the best val before the "
               "gap opened); compare a few train and val images side by side (colours, textures, object sizes) "
               "for a distribution shift"),
        _step(h))


@rule("shape-loss-stuck", "13")
def shape_loss_stuck(cfg, h, stats):
    """Once ≥ ``shape_epochs`` epochs from the 2nd are complete: from the first half of them (and from the 2nd
    epoch) to the last half, loss_shape fell < ``shape_max_drop`` while loss_map and loss_offset fell ≥ ``shape_others_min_drop`` on
    average and both are below the values they started from, and the raw loss as a whole came down at least
    ``flat_min_progress`` (the run learns; a too-large lr's blow-up leaves every branch high or the total stuck,
    which is flat-loss-after-epoch-2's finding, not the head's)."""
    d = cfg.diagnose
    eps = h.complete_epochs(start=1)
    if len(eps) < d.shape_epochs:
        return None
    win = eps
    a, b, half = win[0], win[-1], len(win) // 2  # first half of the window against the last half
    lasts = {k: median(e.median(k) for e in win[-half:]) for k in BRANCHES}
    drops = {k: rel_drop(median(e.median(k) for e in win[:half]), lasts[k]) for k in BRANCHES}
    if any(v is None for v in drops.values()):
        return None
    others = (drops["loss_map"] + drops["loss_offset"]) / 2
    if drops["loss_shape"] >= d.shape_max_drop or others < d.shape_others_min_drop:
        return None
    since_2nd = rel_drop(eps[0].median("loss_shape"), lasts["loss_shape"])
    if since_2nd is None or since_2nd >= d.shape_max_drop:  # "stays high": not coming down since the 2nd epoch
        return None
    first = h.first_train or {}
    if any(not finite(first.get(k)) or lasts[k] >= first[k] for k in ("loss_map", "loss_offset")):
        return None
    raw_progress = rel_drop(raw_loss(first), median(e.median("raw") for e in win[-half:]))
    if raw_progress is None or raw_progress < d.flat_min_progress:
        return None  # the run as a whole is not learning: that is flat-loss-after-epoch-2 (lr), not the head
    ch = min(cfg.head.channels * 2, 1024)
    return Finding(
        "shape-loss-stuck", "warning", "13",
        f"loss_shape stays high and hard to bring down (loss_shape较高,而且很难下降): {a.median('loss_shape'):.4g} → "
        f"{b.median('loss_shape'):.4g} ({-drops['loss_shape']:+.0%}) over epochs {a.epoch + 1}–{b.epoch + 1} while "
        f"loss_map fell {drops['loss_map']:.0%} and loss_offset {drops['loss_offset']:.0%}. The head is likely too "
        f"simple for its regression branches (Head部分的神经元需要具有足够的复杂性): widen it "
        f"(head.channels {cfg.head.channels} → {ch}) or deepen it (head.depth).",
        {"from_epoch": a.epoch, "to_epoch": b.epoch, **{f"{k}_drop": r(v) for k, v in drops.items()},
         "loss_shape": r(b.median("loss_shape")), "head_channels": cfg.head.channels, "head_depth": cfg.head.depth},
        remedy({"head.channels": ch}, None, f"start a new run with head.channels = {ch} (or head.depth = "
               f"{min(cfg.head.depth + 1, 8)}); the head's shape is fixed at build time"),
        _step(h))


# --- the notes' rules: configuration -------------------------------------------------------------

def _config_finding(rule_id: str, severity: str, section: str, message: str, evidence: dict, set_: dict,
                    text: str, h: History, command: str = "") -> Finding:
    return Finding(rule_id, severity, section, message, evidence, remedy(set_, None, text, command), _step(h))


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
        _step(h))


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
        _step(h))


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
        _step(h))


# --- generic rules --------------------------------------------------------------------------------

@rule("non-finite-loss", f"{PLAYBOOK} (training instability)")
def non_finite_loss(cfg, h, stats):
    bad = h.nonfinite
    if bad is None:
        return None
    set_, how, window = _stabilise(cfg, h, bad["step"])
    if "train.base_lr" not in set_:
        set_["train.base_lr"] = lower_lr(cfg.train.base_lr)
        how += f" and lower the lr ({cfg.train.base_lr:g} → {set_['train.base_lr']:g})"
    what = ", ".join(bad["keys"]) or bad.get("error", "a loss")
    return Finding(
        "non-finite-loss", "error", f"{PLAYBOOK} (training instability)",
        f"Non-finite values ({what}) at step {bad['step']}: training diverged. The lr is likely too large "
        f"(学习率较大); {how}.",
        {"step": bad["step"], "split": bad["split"], "keys": bad["keys"], "source": bad["source"],
         "base_lr": cfg.train.base_lr, "grad_clip": cfg.train.grad_clip, **window},
        remedy(set_, max(bad["step"] - 1, 0), f"{how}; resume from the last checkpoint before step {bad['step']}"),
        _step(h))


@rule("exploding-gradient", f"{PLAYBOOK} (training instability)", key="ratio")
def exploding_gradient(cfg, h, stats):
    """Median gradient norm of the last ``explode_window`` lines > ``explode_ratio`` × the lowest epoch median."""
    d = cfg.diagnose
    eps = [e for e in h.complete_epochs() if e.median("grad_norm")]
    if not eps:
        return None
    ref_epoch = min(eps, key=lambda e: e.median("grad_norm"))
    ref = ref_epoch.median("grad_norm")
    win = [m for m in h.recent(d.explode_window) if finite(m.get("grad_norm"))]
    if len(win) < max(5, d.explode_window // 2) or ref <= 0:
        return None
    cur = median(m["grad_norm"] for m in win)
    ratio = cur / ref
    if ratio <= d.explode_ratio:
        return None
    set_, how, window = _stabilise(cfg, h, int(win[0]["step"]))
    return Finding(
        "exploding-gradient", "warning", f"{PLAYBOOK} (training instability)",
        f"Gradient norms exploded: median {cur:.3g} over the last {len(win)} lines, {ratio:.0f}× the calm median "
        f"{ref:.3g} of epoch {ref_epoch.epoch + 1}. The step is too large for the valley (学习率较大): {how}.",
        {"median_grad_norm": r(cur), "reference": r(ref), "reference_epoch": ref_epoch.epoch, "ratio": r(ratio),
         "window_from": int(win[0]["step"]), **window},
        remedy(set_, max(int(win[0]["step"]) - 1, 0), f"{how}; resume from before the window"),
        _step(h))


@rule("loss-spikes", f"{PLAYBOOK} (training instability)", key="max_ratio")
def loss_spikes(cfg, h, stats):
    """≥ ``spike_min_count`` raw train losses in the last ``spike_window`` lines above ``spike_factor`` × the
    median of their previous ``spike_ref`` lines."""
    d = cfg.diagnose
    lines = [m for m in h.recent(d.spike_window + d.spike_ref) if finite(raw_loss(m))]
    vals = [raw_loss(m) for m in lines]
    start = max(5, len(lines) - d.spike_window)
    spikes = []
    for i in range(start, len(lines)):
        ref = median(vals[max(0, i - d.spike_ref):i])
        if ref and ref > 0 and vals[i] > d.spike_factor * ref:
            spikes.append((int(lines[i]["step"]), vals[i] / ref))
    if len(spikes) < d.spike_min_count:
        return None
    set_, how, window = _stabilise(cfg, h, spikes[0][0])
    return Finding(
        "loss-spikes", "warning", f"{PLAYBOOK} (training instability)",
        f"{len(spikes)} loss spikes (up to {max(x for _, x in spikes):.1f}× the running median) in the last "
        f"{len(lines) - start} lines: training is unstable (学习率较大,导致梯度向量在斜坡两侧不断来回碰撞). "
        f"The Tuning Playbook's fixes, warmup excluded by the notes: {how}.",
        {"spikes": len(spikes), "steps": [s for s, _ in spikes][:10], "max_ratio": r(max(x for _, x in spikes)),
         "first_spike_step": spikes[0][0], "last_spike_step": spikes[-1][0], "factor": d.spike_factor, **window},
        remedy(set_, max(spikes[0][0] - 1, 0), f"{how}; resume from before the first spike"),
        _step(h))


@rule("dead-activations", "AUTOTRAINER / DeepDiagnosis (dying ReLU)", key="worst")
def dead_activations(cfg, h, stats):
    d = cfg.diagnose
    dead = {k: v for k, v in (stats.get("dead_fraction") or {}).items() if finite(v) and v > d.dead_max}
    if not dead:
        return None
    worst = max(dead.values())
    if cfg.principles.act == "relu":
        set_, how, resume = {"principles.act": "silu"}, "start a new run with principles.act = silu", None
    else:
        new = lower_lr(cfg.train.base_lr)
        set_, how, resume = {"train.base_lr": new}, f"lower the lr ({cfg.train.base_lr:g} → {new:g})", None
    names = ", ".join(f"{k} {v:.0%}" for k, v in sorted(dead.items(), key=lambda kv: -kv[1])[:5])
    return Finding(
        "dead-activations", "warning", "AUTOTRAINER / DeepDiagnosis (dying ReLU)",
        f"{len(dead)} layer(s) have most units never active on a batch ({names}); dead units stop learning "
        f"(act: 激活函数 = {cfg.principles.act}). {how[0].upper() + how[1:]}.",
        {"layers": {k: r(v, 3) for k, v in dead.items()}, "worst": r(worst, 3), "threshold": d.dead_max},
        remedy(set_, resume, how), _step(h))


@rule("val-plateau", "Keras ReduceLROnPlateau / early stopping", key=None)
def val_plateau(cfg, h, stats):
    """No new best mAP (by ``plateau_min_delta``) in the last ``plateau_evals`` evals."""
    d = cfg.diagnose
    vals = [v for v in h.val if finite(v.get("mAP"))]
    if len(vals) <= d.plateau_evals:
        return None
    before, win = vals[:-d.plateau_evals], vals[-d.plateau_evals:]
    best = max(before, key=lambda v: v["mAP"])
    if max(v["mAP"] for v in win) > best["mAP"] + d.plateau_min_delta:
        return None
    last = h.last_train or {}
    total = last.get("total_steps") or 0
    progress = h.last_step / total if total else None
    decayed = h.max_lr is not None and finite(last.get("lr")) and last["lr"] < h.max_lr * 0.999
    if not decayed and progress is not None and progress < 0.95:
        at = min(math.ceil(round(progress * 20, 6)) / 20, 0.95)
        ms = tuple(sorted({at, *(m for m in cfg.train.milestones if m > at)}))
        set_, how = {"train.milestones": list(ms)}, f"decay the lr now: train.milestones → {list(ms)} (live)"
    else:
        set_, how = {}, "the lr is already decayed: the best checkpoint is likely final; stop or keep it"
    return Finding(
        "val-plateau", "info", "Keras ReduceLROnPlateau / early stopping",
        f"Val mAP has not improved for {len(win)} evals: best {best['mAP']:.4f} at step {best['step']} "
        f"(抽象能力:指标度量 mAP). {how[0].upper() + how[1:]}.",
        {"best_mAP": r(best["mAP"]), "best_step": int(best["step"]), "evals_since": len(win),
         "recent_mAP": [r(v["mAP"]) for v in win], "lr_decayed": decayed},
        remedy(set_, None, how), _step(h))


def _ema_ramp_steps(cfg: C.Config) -> int:
    """Steps until the ramped EMA decay min(decay, (1 + n) / (10 + n)) reaches train.ema_decay (0.99: 890).

    Until then the EMA averages over an ever longer window, so its distance to the online weights grows by
    design: on real runs (12 steps per epoch, lr 0.001) ema_l2 rose 3.6× from the 2nd epoch to the 13th with
    nothing wrong, which fired ema-drift on 3 of 5 healthy runs."""
    dec = cfg.train.ema_decay
    if not cfg.train.ema_ramp or dec <= 0.1:
        return 0
    return math.ceil((10 * dec - 1) / (1 - dec))


@rule("ema-drift", "notes 6-7.1 (EMA retention, L2) / Polyak averaging", key="ratio")
def ema_drift(cfg, h, stats):
    """Epoch-median ema_l2 climbs to > ``ema_drift_ratio`` × its lowest epoch median since the 2nd epoch, among
    the epochs that start after the EMA decay ramp has settled (``train.ema_ramp``)."""
    d = cfg.diagnose
    settled = _ema_ramp_steps(cfg)
    eps = [e for e in h.complete_epochs(start=1) if e.median("ema_l2") is not None and e.first_step > settled]
    if len(eps) < 2:
        return None
    low = min(eps, key=lambda e: e.median("ema_l2"))
    cur = eps[-1].median("ema_l2")
    if low is eps[-1] or low.median("ema_l2") <= 0:
        return None
    ratio = cur / low.median("ema_l2")
    if ratio <= d.ema_drift_ratio:
        return None
    new = lower_lr(cfg.train.base_lr)
    return Finding(
        "ema-drift", "warning", "notes 6-7.1 (EMA retention, L2) / Polyak averaging",
        f"The online weights drift away from their EMA (保持能力:L2度量): ema_l2 median {cur:.3g} in epoch "
        f"{eps[-1].epoch + 1}, {ratio:.1f}× its low of {low.median('ema_l2'):.3g} in epoch {low.epoch + 1}. The "
        f"weights keep moving instead of settling: lower the lr ({cfg.train.base_lr:g} → {new:g}).",
        {"ema_l2": r(cur), "low": r(low.median("ema_l2")), "low_epoch": low.epoch, "ratio": r(ratio)},
        remedy({"train.base_lr": new}, low.last_step, "lower the lr one grid step and resume from the end of the "
               "epoch where the EMA was closest"),
        _step(h))


from . import error_rules  # noqa: E402, F401 - registers the rules that read the detector's errors

__all__ = ["RULES", "Rule", "rule"]
