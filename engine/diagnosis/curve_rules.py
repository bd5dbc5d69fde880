"""The notes' rules on the training curves (flat loss from the 2nd epoch, train/val gap, shape loss stuck), and
the helpers the instability rules share: the last healthy window and the Playbook's order of fixes."""

from __future__ import annotations

from typing import Any

from .. import config as C
from .rulebook import BRANCHES, Finding, History, finite, lower_lr, median, r, raw_loss, rel_drop, remedy, rule


def last_step(h: History) -> int:
    return h.last_step


def quantile(xs: list[float], q: float) -> float | None:
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


def stabilise(cfg: C.Config, h: History, before_step: int) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The Playbook's order of fixes for instability, warmup excluded (the notes disable it, 10.2.1.1): clip the
    gradient near the 90th percentile of a window that was actually healthy first; once clipping is on, or when
    the run never was healthy (nothing to size a clip from), lower the lr. Returns (set, how, evidence)."""
    win = healthy_window(cfg, h, before_step) if cfg.train.grad_clip == 0 else None
    p90 = quantile(win.samples("grad_norm"), 0.9) if win is not None else None
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
      crawling back, often with the log weights s_* run away); after a blow-up above ``flat_severe_blowup`` ×,
      less than ``flat_severe_progress`` below it. The blow-up keeps a slow, too-small lr — which also makes
      little progress — from being told to lower the lr.
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
    # the larger the blow-up, the more of the way back it must come: a plateau far above a healthy run's level
    severe = blew_up and peak > d.flat_severe_blowup * start
    stuck = blew_up and progress < (d.flat_severe_progress if severe else d.flat_min_progress)
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
        resume, where = before_blowup(h, d.flat_blowup)
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
        last_step(h))


def blowup_epoch(h: History, factor: float):
    """The first complete epoch whose median raw train loss rose above ``factor`` × the first step's, or None."""
    start = raw_loss(h.first_train) if h.first_train else None
    if not (finite(start) and start > 0):
        return None
    return next((e for e in h.complete_epochs(0) if (e.median("raw") or 0.0) > factor * start), None)


def before_blowup(h: History, factor: float) -> tuple[int, str] | None:
    """(step to resume from, how to say it) before the blow-up epoch: every checkpoint since carries its damage."""
    blew = blowup_epoch(h, factor)
    if blew is None:
        return None
    if blew.epoch == 0:
        return 0, "start again from step 0: the loss blew up in the 1st epoch"
    return max(blew.first_step - 1, 0), f"resume from the end of epoch {blew.epoch}, before the loss blew up"


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
        last_step(h))


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
        last_step(h))
