"""Generic rules from the literature on training instability: non-finite loss, exploding gradients, loss
spikes, dead activations, the val plateau and EMA drift."""

from __future__ import annotations

import math

from .. import config as C
from .rulebook import PLAYBOOK, Finding, finite, lower_lr, median, r, raw_loss, remedy, rule
from .curve_rules import before_blowup, last_step, stabilise


# --- generic rules --------------------------------------------------------------------------------

@rule("non-finite-loss", f"{PLAYBOOK} (training instability)")
def non_finite_loss(cfg, h, stats):
    bad = h.nonfinite
    if bad is None:
        return None
    set_, how, window = stabilise(cfg, h, bad["step"])
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
        last_step(h))


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
    set_, how, window = stabilise(cfg, h, int(win[0]["step"]))
    return Finding(
        "exploding-gradient", "warning", f"{PLAYBOOK} (training instability)",
        f"Gradient norms exploded: median {cur:.3g} over the last {len(win)} lines, {ratio:.0f}× the calm median "
        f"{ref:.3g} of epoch {ref_epoch.epoch + 1}. The step is too large for the valley (学习率较大): {how}.",
        {"median_grad_norm": r(cur), "reference": r(ref), "reference_epoch": ref_epoch.epoch, "ratio": r(ratio),
         "window_from": int(win[0]["step"]), **window},
        remedy(set_, max(int(win[0]["step"]) - 1, 0), f"{how}; resume from before the window"),
        last_step(h))


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
    set_, how, window = stabilise(cfg, h, spikes[0][0])
    resume, where = max(spikes[0][0] - 1, 0), "resume from before the first spike"
    blown = before_blowup(h, d.flat_blowup)
    if blown is not None and blown[0] < resume:
        resume, where = blown  # the spikes go on from an earlier blow-up: a checkpoint after it is damaged
    return Finding(
        "loss-spikes", "warning", f"{PLAYBOOK} (training instability)",
        f"{len(spikes)} loss spikes (up to {max(x for _, x in spikes):.1f}× the running median) in the last "
        f"{len(lines) - start} lines: training is unstable (学习率较大,导致梯度向量在斜坡两侧不断来回碰撞). "
        f"The Tuning Playbook's fixes, warmup excluded by the notes: {how}.",
        {"spikes": len(spikes), "steps": [s for s, _ in spikes][:10], "max_ratio": r(max(x for _, x in spikes)),
         "first_spike_step": spikes[0][0], "last_spike_step": spikes[-1][0], "factor": d.spike_factor, **window},
        remedy(set_, resume, f"{how}; {where}"),
        last_step(h))


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
        remedy(set_, resume, how), last_step(h))


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
        remedy(set_, None, how), last_step(h))


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
        last_step(h))
