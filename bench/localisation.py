"""The localisation remedy on a few large objects: does continuing a run with GIoU raise AP75?

A run with the L1 shape loss (the demo preset's) trains on the embedded set of few large objects
(``data.synthetic_objects = large``) to ``--base-steps``; from that checkpoint, with the same data order, it goes on
for ``--arm-steps`` twice: unchanged, and with ``loss.shape_loss = giou`` (a live key: what the localisation-bound
remedy does, ``engine/diagnosis/error_rules.py``). Both ends are scored on val (EMA weights, pycocotools); the
figures printed are AP50, AP75, AP75/AP50 and the ratio of the two arms' AP75. Run it alone on a quiet machine.

    python bench/localisation.py [--base-steps 600] [--arm-steps 400] [--size 192] [--train 512] [--val 128]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from nanxi_tune.engine import config as C
from nanxi_tune.engine.evaluation.evaluate_run import evaluate_run
from nanxi_tune.engine.train.trainer import Trainer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-steps", type=int, default=600)
    ap.add_argument("--arm-steps", type=int, default=400)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--val", type=int, default=128)
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-localisation-"))
    total = a.base_steps + a.arm_steps
    cfg = C.with_updates(C.load_preset("demo"), {
        "data.synthetic_objects": "large", "data.synthetic_train": a.train, "data.synthetic_val": a.val,
        "preprocess.input_size": a.size, "loss.shape_loss": "l1", "train.max_steps": total, "train.epochs": 10000,
        "eval.interval": 10000, "diagnose.enabled": False} | C.parse_sets(a.sets))
    print(f"large objects: {a.train} train / {a.val} val synthetic images at {a.size} px; L1 shape loss to step "
          f"{a.base_steps}, then {a.arm_steps} steps each arm (the lr plan is the whole {total} steps')", flush=True)
    t0 = time.time()
    base = tmp / "base"
    assert Trainer(cfg, base, max_steps=a.base_steps).run() == "stopped"
    m = evaluate_run(base, "last")
    print(f"base at step {a.base_steps} ({(time.time() - t0) / 60:.1f} min): AP50 {m['AP50']:.4f} AP75 "
          f"{m['AP75']:.4f} (AP75/AP50 {m['AP75'] / max(m['AP50'], 1e-9):.2f})", flush=True)
    out = {}
    for arm, updates in (("unchanged (l1)", {}), ("giou", {"loss.shape_loss": "giou"})):
        run = tmp / arm.split()[0]
        shutil.copytree(base, run)
        t1 = time.time()
        trainer = Trainer.resume(run, updates=updates)
        state = trainer.run()
        m = evaluate_run(run, "last")
        out[arm] = m
        print(f"{arm:>15}: {state} at step {trainer.step} ({(time.time() - t1) / 60:.1f} min): mAP {m['mAP']:.4f} "
              f"AP50 {m['AP50']:.4f} AP75 {m['AP75']:.4f} (AP75/AP50 {m['AP75'] / max(m['AP50'], 1e-9):.2f})",
              flush=True)
    l1, giou = out["unchanged (l1)"], out["giou"]
    print(f"ratio giou / unchanged: AP75 {giou['AP75'] / max(l1['AP75'], 1e-9):.2f}, mAP "
          f"{giou['mAP'] / max(l1['mAP'], 1e-9):.2f}, AP50 {giou['AP50'] / max(l1['AP50'], 1e-9):.2f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
