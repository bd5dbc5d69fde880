"""The key diagnostic rules on real training (the synthetic set), not fabricated traces.

The setups are bench/diagnosis.py's (small model, 96 train images at batch 8 = 12 steps per epoch, an eval
per epoch, a 10-epoch schedule); the bench runs them over more seeds and scores precision/recall. Here:

* a too-large lr (base_lr 0.3 and 1, 100× and 330× the demo's) → ``flat-loss-after-epoch-2`` by the eval that
  ends the 4th epoch (or ``non-finite-loss`` / ``loss-spikes`` if it diverges);
* val drawn from another distribution (``data.synthetic_val_style = "shifted"``) → ``train-val-gap``;
* healthy demo settings (base_lr 0.003, 0.01) → no warning-level finding over the whole run;
* the flat-loss remedy applied (engine.workflows.remedy.apply, then Trainer.resume of the child) → the child's loss
  falls again, well below the parent's flat level; the child's events.jsonl names its parent and the finding.

Findings are the live watcher's Diagnosis events, as the TUI sees them. One torch thread throughout.
"""

from __future__ import annotations

import json
import statistics

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.workflows import remedy
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.diagnosis.rulebook import lower_lr, raw_loss
from nanxi_tune.engine.diagnosis.watcher import diagnose_run
from nanxi_tune.engine.train.trainer import Trainer

SPE = 12  # steps per epoch
SMALL = {"preprocess.input_size": 64, "data.synthetic_train": 96, "data.synthetic_val": 16, "data.batch_size": 8,
         "backbone.width": 8, "head.channels": 16, "eval.interval": 1, "eval.online": False,
         "train.device": "cpu", "train.epochs": 10}
LR_RULES = {"flat-loss-after-epoch-2", "non-finite-loss", "loss-spikes"}

pytestmark = pytest.mark.usefixtures("one_thread")


def small(seed: int = 0, **updates) -> C.Config:
    return C.with_updates(C.load_preset("demo"), SMALL | {"train.seed": seed, "data.synthetic_seed": seed} | updates)


def train(cfg: C.Config, run_dir, max_steps: int | None = None) -> list:
    """Run and return the warning/error Diagnosis events (the live watcher's)."""
    events = []
    state = Trainer(cfg, run_dir, events.append, max_steps=max_steps).run()
    assert state in ("finished", "stopped"), state
    return [e for e in events if e.kind == "diagnosis" and e.severity != "info"]


def epoch_medians(run_dir) -> dict[int, float]:
    ep: dict[int, list[float]] = {}
    for m in rundir.read_metrics(run_dir):
        if m["split"] == "train":
            ep.setdefault(m["epoch"], []).append(raw_loss(m))
    return {e: statistics.median(v) for e, v in sorted(ep.items())}


@pytest.mark.parametrize("lr, seed", [(0.3, 0), (1.0, 1)])
def test_too_large_lr_fires_flat_loss(tmp_path, lr, seed):
    found = train(small(seed, **{"train.base_lr": lr}), tmp_path / "hot", max_steps=4 * SPE)
    hit = [f for f in found if f.rule in LR_RULES]
    assert hit, [f.rule for f in found]
    assert hit[0].step <= 4 * SPE  # by the eval that ends the 4th epoch (evidence: from the 2nd epoch on)
    flat = next(f for f in found if f.rule == "flat-loss-after-epoch-2")
    assert flat.remedy["set"] == {"train.base_lr": lower_lr(lr)}  # one step down the grid: 0.3 → 0.1, 1 → 0.3
    # the start loss it compares against is the first step's, and the loss has not come down from it
    assert flat.evidence["progress"] < C.Diagnose().flat_min_progress
    assert not {f.rule for f in found} & {"train-val-gap", "shape-loss-stuck"}


@pytest.mark.parametrize("seed", [0, 1])
def test_shifted_val_fires_train_val_gap(tmp_path, seed):
    cfg = small(seed, **{"train.base_lr": 0.01, "data.synthetic_val_style": "shifted"})
    found = train(cfg, tmp_path / "shift", max_steps=7 * SPE)
    gap = [f for f in found if f.rule == "train-val-gap"]
    assert gap, [f.rule for f in found]
    assert gap[0].evidence["train_drop"] > 0.1 and gap[0].evidence["val_drop"] < 0  # train falls, val rises
    assert gap[0].remedy["resume_from_step"] in gap[0].evidence["evals"]
    assert not {f.rule for f in found} - {"train-val-gap"}  # nothing else: the train side is healthy


@pytest.mark.parametrize("lr", [0.003, 0.01])
def test_healthy_run_has_no_warning(tmp_path, lr):
    run = tmp_path / "ok"
    found = train(small(0, **{"train.base_lr": lr}), run)
    assert [f.rule for f in found] == []
    assert [f.rule for f in diagnose_run(run) if f.severity != "info"] == []  # offline replay agrees
    meds = epoch_medians(run)
    assert meds[9] < 0.6 * meds[0]  # and it did learn


def test_flat_loss_remedy_child_learns_again(tmp_path):
    parent = tmp_path / "hot"
    found = train(small(0, **{"train.base_lr": 0.3}), parent, max_steps=4 * SPE)
    flat = next(f for f in found if f.rule == "flat-loss-after-epoch-2")
    flat_level = statistics.median(list(epoch_medians(parent).values())[1:])  # from the 2nd epoch on
    assert flat.evidence["kind"] == "no-progress" and flat.remedy["resume_from_step"] == 0  # blew up in epoch 1

    child = remedy.apply(parent, flat.to_json(), trial_steps=SPE)  # the lr proven by the seven stars downward
    first = json.loads((child / rundir.EVENTS).read_text().splitlines()[0])
    assert first["parent"] == str(parent) and first["reason"] == "flat-loss-after-epoch-2"
    assert first["finding"]["rule"] == "flat-loss-after-epoch-2" and first["finding"]["remedy"] == flat.remedy
    trial = first["trial"]
    assert [t["value"] for t in trial["trials"]][:2] == [0.1, 0.03] and trial["from_step"] == 0
    assert C.load(child / rundir.CONFIG).train.base_lr == pytest.approx(trial["applied"]) and trial["applied"] < 0.3
    assert first["from_step"] == 0 and first["start_step"] == SPE  # from step 0, then its applied trial's steps

    t = Trainer.resume(child, max_steps=5 * SPE)
    assert t.run() == "stopped"
    meds = epoch_medians(child)
    assert len(meds) == 5
    # it learns: its last epochs are clearly below the parent's flat level and its own first epoch
    assert min(list(meds.values())[-2:]) < 0.88 * flat_level, (flat_level, meds)
    assert min(list(meds.values())[-2:]) < 0.9 * meds[0], meds
    lrs = [m["lr"] for m in rundir.read_metrics(child) if m["split"] == "train"]
    assert lrs and all(x == pytest.approx(C.load(child / rundir.CONFIG).lr) for x in lrs)
