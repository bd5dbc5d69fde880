"""Diagnosis on real runs: a labelled suite of short training runs, precision/recall per rule, delay to firing.

Every run trains the same small model on the embedded synthetic set (64 px, backbone width 8, head 16 channels,
96 train images at batch 8 = 12 steps per epoch, 16 val images, an evaluation after every epoch) with one fault
switched on, or none. The live watcher's findings are read back from each run's events.jsonl; the scores come from
replaying each run through ``diagnose_run`` with the *current* rules and ``diagnose.*`` defaults (identical to the
live findings when the code has not changed; ``--reuse DIR`` re-scores saved runs after a threshold change
without training again).

Labels (what was switched on; the rules that count as detecting it):

* ``healthy`` — demo hyper-parameters (AdamW, base_lr 0.003 or 0.01; --full adds 0.001), same-distribution
  val. Expected: no warning- or error-level finding; any warning/error here is a false positive of that rule.
* ``lr-too-large`` — base_lr 0.3 / 1 / 3 (--full adds 10; 100× to 3000× the demo's): the first steps blow the
  loss up, the learnable log weights run away and the raw loss then stays above where it started (or bounces
  flat) from the 2nd epoch on. Detected by ``flat-loss-after-epoch-2`` (notes 13.1) or, when it diverges,
  ``non-finite-loss`` / ``loss-spikes``. Other rules firing here are false positives (but see "consistent").
* ``loose-boxes`` — healthy hyper-parameters with the shape branch's loss weight held at e^-3 (``loss.s_shape =
  3``, ``loss.learn_log_weights = false``): the heatmap finds the objects, the boxes stay loose. Detected by
  ``localisation-bound``; evidence: the first eval with AP50 > 0.1 and AP75 < half of it.
* ``shifted-val`` — healthy training (base_lr 0.003 / 0.01; --full adds 0.001), val drawn from a different
  distribution (``data.synthetic_val_style = "shifted"``). Detected by ``train-val-gap`` (notes 13.2). The train
  side is bit-identical to the healthy run of the same seed and lr.

Precision of a rule = its firings on runs whose label lists it / its firings on runs whose label lists it or
another cause (warning or error level). ``ema-drift`` and ``exploding-gradient`` on ``lr-too-large`` runs name the
same cause and remedy (the weights keep moving: lower the lr / clip) and are reported apart as "consistent",
neither true nor false positives. Recall
of a rule = runs of its label it fired on / runs of that label (flat-loss: lr-too-large runs; train-val-gap:
shifted-val runs). A label's recall counts a run as detected when any of its rules fired.

Delay. The faults are on from step 0, so "evidence" is where the symptom first becomes visible in the metrics by a
fixed, rule-independent definition (the notes' wording), not where a rule's own window happens to end:

* lr-too-large: the end of the 3rd epoch — "from the 2nd epoch on the loss stays flat" needs the 2nd epoch and
  one more to compare — or the first non-finite value if earlier.
* shifted-val: the first eval from the 3rd on where the median val raw loss of the last two evals is ≥ 5% above
  that of the first two evals while the train loss (epoch median) has fallen ≥ 10% from the 1st epoch: train falls,
  val does not (13.2).

Delay = first firing of a detecting rule − evidence, in steps and in eval intervals (negative: fired before that
point). Target: precision ≥ 0.95, recall ≥ 0.9, delay ≤ 1 eval interval.

    python bench/diagnosis.py            # quick: 3 seeds, 27 runs × 10 epochs, ~10 min on a shared 2-core CPU
    python bench/diagnosis.py --full     # 6 seeds, 78 runs × 16 epochs (+ lr 0.001 healthy/shifted/loose, lr 10), ~45 min
    python bench/diagnosis.py --keep DIR # keep the runs in DIR; --reuse DIR re-scores them without training
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.diagnosis.rulebook import raw_loss
from nanxi_tune.engine.diagnosis.watcher import diagnose_run
from nanxi_tune.engine.train.trainer import Trainer

STEPS_PER_EPOCH = 12
SMALL = {"preprocess.input_size": 64, "data.synthetic_train": 96, "data.synthetic_val": 16, "data.batch_size": 8,
         "backbone.width": 8, "head.channels": 16, "eval.interval": 1, "eval.online": False,
         "train.device": "cpu"}

LABELS: dict[str, frozenset[str]] = {
    "healthy": frozenset(),
    "lr-too-large": frozenset({"flat-loss-after-epoch-2", "non-finite-loss", "loss-spikes"}),
    "shifted-val": frozenset({"train-val-gap"}),
    "loose-boxes": frozenset({"localisation-bound"}),
}
# Rules that name the same cause and the same remedy as the label (lower the lr / clip) without being its
# headline detector: their firings on that label are reported apart, neither true nor false positives.
CONSISTENT: dict[str, frozenset[str]] = {
    "healthy": frozenset(),
    "lr-too-large": frozenset({"ema-drift", "exploding-gradient"}),
    "shifted-val": frozenset(),
    "loose-boxes": frozenset(),
}
PRIMARY = {"flat-loss-after-epoch-2": "lr-too-large", "non-finite-loss": "lr-too-large",
           "loss-spikes": "lr-too-large", "train-val-gap": "shifted-val", "localisation-bound": "loose-boxes"}
# loose boxes: the shape branch's weight held at e^-LOOSE_S_SHAPE, so the heatmap finds objects and the boxes lag
LOOSE = {"loss.learn_log_weights": False, "loss.s_shape": 3.0}


@dataclass(frozen=True)
class Spec:
    label: str
    name: str
    seed: int
    updates: dict

    def config(self, epochs: int) -> C.Config:
        return C.with_updates(C.load_preset("demo"), SMALL | {"train.epochs": epochs, "train.seed": self.seed,
                                                              "data.synthetic_seed": self.seed} | self.updates)


def suite(full: bool) -> tuple[list[Spec], int]:
    seeds = range(6) if full else range(3)
    healthy = (0.003, 0.01, 0.001) if full else (0.003, 0.01)
    large = (0.3, 1, 3, 10) if full else (0.3, 1, 3)
    shifted = (0.003, 0.01, 0.001) if full else (0.003, 0.01)
    specs = []
    for s in seeds:
        specs += [Spec("healthy", f"healthy-lr{lr:g}-s{s}", s, {"train.base_lr": lr}) for lr in healthy]
        specs += [Spec("lr-too-large", f"lr{lr:g}-s{s}", s, {"train.base_lr": lr}) for lr in large]
        specs += [Spec("shifted-val", f"shifted-lr{lr:g}-s{s}", s,
                       {"train.base_lr": lr, "data.synthetic_val_style": "shifted"}) for lr in shifted]
        specs += [Spec("loose-boxes", f"loose-lr{lr:g}-s{s}", s, {"train.base_lr": lr} | LOOSE) for lr in healthy]
    return specs, (16 if full else 10)


# --- evidence (rule-independent) ---------------------------------------------------------------------------------

def evidence_step(label: str, metrics: list[dict]) -> int | None:
    train = [m for m in metrics if m.get("split") == "train"]
    val = [m for m in metrics if m.get("split") == "val"]
    if label == "lr-too-large":
        bad = [m["step"] for m in train if not all(isinstance(v, float) and v == v and abs(v) != float("inf")
                                                   for v in (raw_loss(m),))]
        return min([3 * STEPS_PER_EPOCH] + bad)
    if label == "shifted-val":
        ep: dict[int, list[float]] = {}
        for m in train:
            ep.setdefault(m["epoch"], []).append(raw_loss(m))
        t0 = statistics.median(ep[0]) if ep.get(0) else None
        vs = [raw_loss(v) for v in val]
        first = statistics.median(vs[:2]) if len(vs) >= 2 else None
        for i in range(2, len(val)):
            t = ep.get(val[i]["epoch"])
            if (first and t0 and t and statistics.median(vs[i - 1:i + 1]) >= 1.05 * first
                    and statistics.median(t) <= 0.9 * t0):
                return int(val[i]["step"])
        return None
    if label == "loose-boxes":  # found but loosely fitted: AP50 above chance, AP75 under half of it
        for v in val:
            ap50, ap75 = v.get("AP50"), v.get("AP75")
            if isinstance(ap50, float) and isinstance(ap75, float) and ap50 > 0.1 and ap75 < 0.5 * ap50:
                return int(v["step"])
        return None
    return None


# --- running and scoring ----------------------------------------------------------------------------------------

def train(specs: list[Spec], root: Path, epochs: int) -> dict[str, float]:
    times = {}
    for i, sp in enumerate(specs):
        d = root / sp.name
        if (d / "done").exists():
            continue
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        state = Trainer(sp.config(epochs), d).run()
        times[sp.name] = time.perf_counter() - t0
        (d / "done").write_text(json.dumps({"label": sp.label, "state": state, "seconds": times[sp.name]}))
        print(f"  [{i + 1}/{len(specs)}] {sp.name}: {state} in {times[sp.name]:.1f}s", flush=True)
    return times


def findings(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(replayed with the current rules and defaults, live Diagnosis events) — warning/error level only."""
    cfg = C.load(run_dir / rundir.CONFIG)
    cfg = cfg.model_copy(update={"diagnose": C.Diagnose()})
    replay = [f.to_json() for f in diagnose_run(run_dir, cfg) if f.severity != "info"]
    live = [e for e in rundir.read_events(run_dir) if e.get("kind") == "diagnosis" and e.get("severity") != "info"]
    return replay, live


def score(specs: list[Spec], root: Path, verbose: bool) -> dict:
    per_rule: dict[str, dict[str, int]] = {}
    label_hits: dict[str, list[int]] = {lb: [0, 0] for lb in LABELS}
    delays: dict[str, list[tuple[int, int]]] = {}
    mismatches = []
    for sp in specs:
        d = root / sp.name
        replay, live = findings(d)
        fired = {}
        for f in replay:
            fired.setdefault(f["rule"], f["step"])
        if {e["rule"] for e in live} != set(fired):
            mismatches.append((sp.name, sorted({e["rule"] for e in live}), sorted(fired)))
        expected = LABELS[sp.label]
        for rule_id, step in fired.items():
            row = per_rule.setdefault(rule_id, {"tp": 0, "fp": 0, "consistent": 0})
            row["tp" if rule_id in expected else "consistent" if rule_id in CONSISTENT[sp.label] else "fp"] += 1
            row.setdefault("fired_on:" + sp.label, 0)
            row["fired_on:" + sp.label] += 1
        hit = [fired[r] for r in expected if r in fired]
        label_hits[sp.label][1] += 1
        if not expected:
            label_hits[sp.label][0] += not fired
        elif hit:
            label_hits[sp.label][0] += 1
            ev = evidence_step(sp.label, rundir.read_metrics(d))
            if ev is not None:
                delays.setdefault(sp.label, []).append((min(hit), ev))
        if verbose:
            print(f"  {sp.label:13s} {sp.name:22s} " + (", ".join(f"{r}@{s}" for r, s in fired.items()) or "-"))
    return {"per_rule": per_rule, "labels": label_hits, "delays": delays, "mismatches": mismatches}


def report(specs: list[Spec], res: dict) -> bool:
    n = {lb: sum(sp.label == lb for sp in specs) for lb in LABELS}
    print("\nper rule (warning/error findings; TP = fired on a run whose label lists the rule):")
    print(f"  {'rule':26s} {'fired on (healthy/lr/shifted)':30s} {'TP':>3s} {'FP':>3s} {'cons.':>5s} "
          f"{'precision':>9s} {'recall':>7s}")
    ok = True
    for rule_id in sorted(set(res["per_rule"]) | {"flat-loss-after-epoch-2", "train-val-gap"}):
        row = res["per_rule"].get(rule_id, {"tp": 0, "fp": 0, "consistent": 0})
        on = "/".join(str(row.get("fired_on:" + lb, 0)) for lb in LABELS)
        prec = row["tp"] / (row["tp"] + row["fp"]) if row["tp"] + row["fp"] else float("nan")
        lb = PRIMARY.get(rule_id)
        rec = row.get("fired_on:" + lb, 0) / n[lb] if lb and n[lb] else float("nan")
        print(f"  {rule_id:26s} {on:30s} {row['tp']:3d} {row['fp']:3d} {row['consistent']:5d} {prec:9.2f} "
              f"{rec:7.2f}")
        if row["tp"] + row["fp"] and prec < 0.95:
            ok = False
    print("  (cons. = fired on a run whose label it is consistent with: " + "; ".join(
        f"{lb}: {', '.join(sorted(r))}" for lb, r in CONSISTENT.items() if r) + "; not counted in precision)")
    print("\nper label (healthy: runs without any warning/error finding; faults: runs detected by their rules):")
    for lb, (hit, tot) in res["labels"].items():
        print(f"  {lb:13s} {hit}/{tot} = {hit / tot if tot else float('nan'):.2f}   rules: "
              f"{', '.join(sorted(LABELS[lb])) or '(none may fire)'}")
        if lb != "healthy" and tot and hit / tot < 0.9:
            ok = False
    print(f"\ndelay from evidence to first firing (eval interval = 1 epoch = {STEPS_PER_EPOCH} steps):")
    for lb, pairs in res["delays"].items():
        ds = [f - e for f, e in pairs]
        evals = [x / STEPS_PER_EPOCH for x in ds]
        fired_ep = [f / STEPS_PER_EPOCH for f, _ in pairs]
        print(f"  {lb:13s} n={len(ds)}  delay steps median {statistics.median(ds):+.0f} max {max(ds):+d}  "
              f"(eval intervals median {statistics.median(evals):+.2f}, max {max(evals):+.2f}); fired at epoch "
              f"{min(fired_ep):.1f}–{max(fired_ep):.1f} of the run")
        if max(evals) > 1:
            ok = False
    if res["mismatches"]:
        print(f"\nlive findings differ from the replay on {len(res['mismatches'])} run(s) (expected only after a "
              "rule or default changed since the runs were trained):")
        for name, live, rep in res["mismatches"][:10]:
            print(f"  {name}: live {live} vs replay {rep}")
    print(f"\ntargets (precision ≥ 0.95, recall ≥ 0.9, delay ≤ 1 eval interval): {'MET' if ok else 'NOT MET'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="6 seeds, more lrs, 16 epochs")
    ap.add_argument("--keep", metavar="DIR", help="train into DIR and keep it (resumes an interrupted suite)")
    ap.add_argument("--reuse", metavar="DIR", help="score the runs already in DIR (no training)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run's findings")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    specs, epochs = suite(a.full)
    root = Path(a.reuse or a.keep or tempfile.mkdtemp(prefix="bench-diagnosis-"))
    os.environ.setdefault("NANXI_TUNE_CACHE", str(Path(tempfile.gettempdir()) / "nanxi-tune-bench-cache"))
    t0 = time.perf_counter()
    if a.reuse:
        specs = [sp for sp in specs if (root / sp.name / "done").exists()]
        print(f"re-scoring {len(specs)} runs in {root}")
    else:
        print(f"{len(specs)} runs × {epochs} epochs × {STEPS_PER_EPOCH} steps in {root} ({a.threads} thread(s))")
        train(specs, root, epochs)
    res = score(specs, root, a.verbose)
    ok = report(specs, res)
    print(f"wall time {time.perf_counter() - t0:.0f}s")
    if not (a.keep or a.reuse):
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
