"""The notes' tuning schedule (§4-5) as data: rounds, their steps, the action that does each step, and
what the journal recorded for it. The TUI's schedule view walks this; the engine never imports textual.

Round 1 — QMV (100 val images): a simple initial model, then lr, loss weights, loss_scale, optimiser.
Round 2 — RSR (3000 random training images): tune against training samples; augmentation at its end
(and normalisation after it, computed over augmented samples); batch size as large as memory allows.
After training — post-processing (NMS) on fixed weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Step:
    id: str
    round: str
    title: str
    action: str  # sweep, stats, autobatch, tune-post, config
    keys: tuple[str, ...] = ()
    start: float | None = None  # a sweep's suggested start value
    section: str = ""
    note: str = ""
    val_data_mode: str = ""
    set: dict[str, Any] = field(default_factory=dict)  # config the step runs with (e.g. eval mode)


ROUNDS = ("round 1 — QMV 100", "round 2 — RSR 3000", "after training")

SCHEDULE: tuple[Step, ...] = (
    Step("simple-model", ROUNDS[0], "simple initial model (QMV = 100)", "config",
         ("eval.val_data_mode", "eval.qmv"), section="4", val_data_mode="qmv",
         note="build a simple initial model; validate on a fixed quick subset of 100 val images",
         set={"eval.val_data_mode": "qmv", "eval.qmv": 100}),
    Step("lr", ROUNDS[0], "learning rate: seven stars", "sweep", ("train.base_lr",), 0.0003, "10.1",
         "七星连珠法 on 0.001 0.003 0.01 0.03 0.1 …; slide when the best sits at an edge", "qmv"),
    Step("loss-weights", ROUNDS[0], "loss log-weights s_map / s_offset / s_shape", "config",
         ("loss.s_map", "loss.s_offset", "loss.s_shape"), section="3.1", val_data_mode="qmv",
         note="initial values of the learnable log-weights (HPS set)"),
    Step("loss-scale", ROUNDS[0], "loss_scale: seven stars", "sweep", ("loss.loss_scale",), 0.03, "14.1",
         "left at its default in the notes: unstable to tune, Adam likely insensitive", "qmv"),
    Step("optimizer", ROUNDS[0], "AdamW weight_decay, beta1, beta2", "sweep", ("train.weight_decay",), 0.001,
         "3.1", "weight_decay by seven stars; betas by hand", "qmv"),
    Step("rsr", ROUNDS[1], "tune on training samples (RSR = 3000)", "config", ("eval.val_data_mode", "eval.rsr"),
         section="5", val_data_mode="rsr", note="below 3000 random samples the metric was very unstable",
         set={"eval.val_data_mode": "rsr", "eval.rsr": 3000}),
    Step("batch", ROUNDS[1], "batch size as large as possible", "autobatch", ("data.batch_size",), section="10",
         note="fixed after the loss function is fixed; lr follows by linear scaling", val_data_mode="rsr"),
    Step("augment", ROUNDS[1], "augmentation (MinIoURandomCrop, RandomFlip)", "config",
         ("augment.min_iou_random_crop", "augment.random_flip"), section="9", val_data_mode="rsr",
         note="tuned at the end of round 2; without RandomFlip TTFNet dropped to 0.342"),
    Step("normalize", ROUNDS[1], "mean/std after augmentation", "stats", ("normalize.mean", "normalize.std"),
         section="8", note="样本增广之后进行计算", val_data_mode="rsr"),
    Step("nms", ROUNDS[2], "post-processing: NMS on trained weights", "tune-post",
         ("postprocess.nms_iou", "postprocess.score_threshold", "postprocess.top_k"), section="10.2",
         note="tuned after training, on fixed weights"),
)


def recorded(step: Step, recs: list[dict[str, Any]]) -> list[str]:
    """The journal lines that belong to ``step``: sweeps of its keys, runs that changed them, its action's records."""
    from .records import line

    out = []
    for rec in recs:
        if rec.get("error"):
            continue
        if rec.get("kind") == "sweep":
            if rec.get("key") in step.keys:
                out.append(rec["line"])
            continue
        if rec.get("reason") == "sweep":
            continue  # trials are summarised by their sweep
        if step.action == "tune-post" and rec.get("tune_post"):
            out.append(line(rec))
        elif step.action == "stats" and rec.get("normalize_source") == "computed":
            out.append(line(rec))
        elif any(k in (rec.get("changes") or {}) for k in step.keys):
            out.append(line(rec))
    return out


def status(root: Path | str = "runs") -> list[tuple[Step, list[str]]]:
    """Every step with what the journal recorded for it (oldest first)."""
    from .records import records

    recs = records(Path(root))
    return [(s, recorded(s, recs)) for s in SCHEDULE]
