"""One lever at a time, at the full wall-clock budget, scored on a held-out slice of train (never val).

The bccd preset trains for ``--minutes`` (planned on the budget, as ``bench/bccd.py`` does) once unchanged and
once per lever (``--lever "NAME:key=value;key=value"``; default: the levers of the detector issue — TTFNet's
Gaussian-area shape samples, zoom-out scale jitter, a clean last stretch without augmentation, the lr decay placed
later for a run still improving). The train split
is cut once, seeded, into a fit part and a held-out part (``engine.data.split``); every run fits
on the first and is scored with pycocotools on the second, so a lever can be kept without looking at val.

``--set-name large``: the embedded few-large-objects set (``data.synthetic_objects = large``, its train split
written as COCO and cut the same way); ``--set-name bccd``: BCCD's train split. Runs go one after the other, each
with the whole CPU: run it alone on a quiet machine. It prints one table: held-out mAP50-95, AP50, AP75,
AP75/AP50, steps, and each lever's ratio to the unchanged run. With ``--seeds N`` every lever trains N times
(train.seed S..S+N-1, S from ``--set train.seed`` or 0: init, data order, augmentation) and the table gives the
mean and the spread: on the large set the bccd preset's 20-minute run reads 0.942 held-out mAP with train.seed 0
and 0.919 with seed 1, more than most levers move it.

    python bench/ablation.py [--set-name large|bccd] [--minutes 15] [--holdout 0.2] [--seeds 1]
                             [--lever "NAME:k=v;k=v" ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from nanxi_tune.engine.data.split import split_train

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.dataset import resolve
from nanxi_tune.engine.evaluation.evaluate_run import evaluate_run
from nanxi_tune.engine.train.trainer import Trainer

LEVERS = ["gaussian samples:loss.shape_samples=gaussian", "zoom-out 2:augment.zoom_out=2.0",
          "clean last 15%:augment.clean_last=0.15", "late decay:train.milestones=[0.85, 0.95]"]


def parse_lever(text: str) -> tuple[str, dict]:
    name, _, sets = text.partition(":")
    return name, C.parse_sets([s for s in sets.split(";") if s]) if sets else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set-name", choices=["large", "bccd"], default="large")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/bccd"))
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--lever", dest="levers", action="append", help=f"NAME:key=value;... (default: {LEVERS})")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unchanged run")
    ap.add_argument("--seeds", type=int, default=1, help="runs per lever (train.seed S..S+N-1); mean and spread")
    ap.add_argument("--set", dest="sets", nargs="*", default=[], help="applies to every run")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-ablation-{a.set_name}-"))
    base = C.with_updates(C.load_preset("bccd"), {"preprocess.input_size": a.size, "eval.val_data_mode": "full",
                                                  "train.time_budget_min": a.minutes * 0.97, "train.epochs": 10000})
    if a.set_name == "large":
        base = C.with_updates(base, {"data.train": "synthetic", "data.synthetic_objects": "large",
                                     "data.synthetic_train": 512})
        images, train_json = resolve("synthetic", "train", base)
    else:
        images, train_json = Path(a.data) / "images", Path(a.data) / "annotations/instances_train.json"
        if not train_json.exists():
            print(f"BCCD not found at {a.data}; pass --data PATH", file=sys.stderr)
            return 1
    (tmp / "split").mkdir()
    fit, held = split_train(train_json, tmp / "split", a.holdout, images=images)
    base = C.with_updates(base, {"data.train": str(fit), "data.val": str(held)} | C.parse_sets(a.sets))
    levers = ([] if a.no_baseline else [("unchanged", {})]) + [parse_lever(x) for x in (a.levers or LEVERS)]
    print(f"ablation on {a.set_name}: fit {fit} / held-out {held} ({a.holdout:.0%} of train), {a.minutes:g} min a "
          f"run, {len(levers)} runs", flush=True)
    rows = []
    for name, updates in levers:
        runs = []
        for seed in range(base.train.seed, base.train.seed + max(1, a.seeds)):  # from --set train.seed (0)
            t0 = time.time()
            run = tmp / (name.replace(" ", "-").replace("%", "") + (f"-seed{seed}" if a.seeds > 1 else ""))
            trainer = Trainer(C.with_updates(base, updates | {"train.seed": seed}), run)
            state = trainer.run()
            m = evaluate_run(run, "last", {"eval.val_data_mode": "full"})
            runs.append((m, trainer.step))
            print(f"  {name} (seed {seed}): {state}, {trainer.step} steps, {(time.time() - t0) / 60:.1f} min: "
                  f"held-out mAP {m['mAP']:.4f} AP50 {m['AP50']:.4f} AP75 {m['AP75']:.4f}", flush=True)
        mean = {k: sum(m[k] for m, _ in runs) / len(runs) for k in ("mAP", "AP50", "AP75")}
        maps = [m["mAP"] for m, _ in runs]
        spread = f" ({min(maps):.3f}–{max(maps):.3f})" if len(runs) > 1 else ""
        rows.append((name, updates, mean, spread, round(sum(s for _, s in runs) / len(runs))))
    ref = rows[0][2]["mAP"] if not a.no_baseline else None
    print(f"\n| lever | set | held-out mAP50-95{' mean (spread)' if a.seeds > 1 else ''} | AP50 | AP75 | AP75/AP50 "
          f"| steps | ratio to unchanged |")
    print("|---|---|---|---|---|---|---|---|")
    for name, updates, m, spread, steps in rows:
        keys = ", ".join(f"{k} = {v}" for k, v in updates.items()) or "—"
        ratio = f"{m['mAP'] / max(ref, 1e-9):.2f}" if ref is not None else "—"
        print(f"| {name} | {keys} | {m['mAP']:.3f}{spread} | {m['AP50']:.3f} | {m['AP75']:.3f} | "
              f"{m['AP75'] / max(m['AP50'], 1e-9):.2f} | {steps} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
