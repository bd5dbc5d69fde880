"""BCCD from scratch on the CPU for a fixed wall-clock budget; val mAP50-95 (pycocotools) over time.

Reference, same split, same 2-core CPU, 15 minutes: Ultralytics YOLOv8n (yolov8n.yaml from scratch,
batch 16, imgsz 320, time=0.25) reached val mAP50-95 0.559, AP50 0.853 (0.30 after 4 min, 0.50 after 10).

The run is planned to fit the budget (train.time_budget_min: the end and the piecewise lr decay placed on
the measured step time); ``--no-plan`` gives the old behaviour (decay placed on train.epochs, the wall clock
cutting the run before it decays), for the ablation. It prints the ratio to YOLOv8n at every point of its
curve (0.30 at 4 min, 0.50 at 10, 0.559 at 15, by ultralytics' own val).

With ``--yolo PY`` (a Python with ultralytics, in its own venv) the peers named by ``--yolo-model`` (default
yolov8n.yaml yolo11n.yaml yolo26n.yaml) then train from scratch on the same split for the same minutes, one
after the other, each with the whole CPU, and are scored by the same pycocotools code (``bench/peers.py``); the
ratio to the best of them is printed at 4, 10 and the last minute.

    python bench/bccd.py [--minutes 15] [--no-plan] [--data ../shared/datasets/bccd] [--set key=value ...]
                         [--yolo PY [--yolo-model yolov8n.yaml ...]]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import peers
from nanxi_tune.engine import config as C
from nanxi_tune.engine.evaluation.evaluate_run import evaluate_run
from nanxi_tune.engine.train.trainer import Trainer

YOLO = {4: 0.30, 10: 0.50, 15: 0.559}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/bccd"))
    ap.add_argument("--run-dir", help="keep the run here (default: a temp folder)")
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    ap.add_argument("--no-plan", action="store_true", help="no time budget plan: the wall clock cuts the run")
    ap.add_argument("--yolo", help="a Python with ultralytics: also train the peers from scratch, same minutes")
    ap.add_argument("--yolo-model", nargs="+", default=list(peers.MODELS), help="the peers (ultralytics yaml)")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "annotations/instances_train.json").exists():
        print(f"BCCD not found at {data}; pass --data PATH", file=sys.stderr)
        return 1
    cfg = C.with_updates(C.load_preset("bccd"), {
        "data.train": str(data / "annotations/instances_train.json"),
        "data.val": str(data / "annotations/instances_val.json"),
        "preprocess.input_size": 320, "eval.val_data_mode": "full",
        # the final evaluation below runs after the budget: keep the planned end a little inside it
        "train.time_budget_min": 0.0 if args.no_plan else args.minutes * 0.97,
        "train.epochs": 10000 if not args.no_plan else C.load_preset("bccd").train.epochs} | C.parse_sets(args.sets))
    curve: list[tuple[float, int, float, float]] = []
    t0 = time.time()

    def on_event(e) -> None:
        if e.kind == "eval":
            curve.append(((time.time() - t0) / 60, e.step, e.mAP, e.AP50))
            print(f"  {curve[-1][0]:5.1f} min  step {e.step:5d}  mAP {e.mAP:.3f}  AP50 {e.AP50:.3f}", flush=True)

    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp()) / "bccd"
    trainer = Trainer(cfg, run_dir, on_event)
    timer = threading.Timer(args.minutes * 60, trainer.request_stop)  # the hard stop, plan or not
    timer.start()
    state = trainer.run()
    timer.cancel()
    final = evaluate_run(run_dir, "last", {"eval.val_data_mode": "full"})
    minutes = (time.time() - t0) / 60
    curve.append((minutes, trainer.step, final["mAP"], final["AP50"]))
    print(f"\nnanxi-tune on BCCD ({state}, {trainer.step} steps, {minutes:.1f} min, input 320, "
          f"batch {cfg.data.batch_size}); run: {run_dir}")
    print(f"{'minutes':>8} {'mAP50-95':>9} {'AP50':>6}   YOLOv8n mAP50-95 at that time")
    for m, _step, mAP, ap50 in curve:
        ref = max((v for k, v in YOLO.items() if k <= m + 1e-9), default=None)
        print(f"{m:8.1f} {mAP:9.3f} {ap50:6.3f}   {ref if ref is not None else '-'}")
    for at, ref in YOLO.items():
        got = max((mAP for m, _s, mAP, _a in curve if m <= at + 0.25), default=0.0)
        print(f"ratio to YOLOv8n at {at:2d} min: {got / ref:.2f} (mAP {got:.3f} vs {ref})")
    print(f"final val mAP50-95 {final['mAP']:.3f} (AP50 {final['AP50']:.3f}, AP75 {final['AP75']:.3f}) vs YOLOv8n "
          f"0.559 (AP50 0.853) at 15 min: ratio {final['mAP'] / 0.559:.2f}", flush=True)
    if not args.yolo:
        return 0
    tmp = run_dir.parent / "yolo"
    data_yaml, val_list = peers.layout((data / "images", data / "annotations/instances_train.json"),
                                       (data / "images", data / "annotations/instances_val.json"), tmp / "data")
    found = {m: peers.run_peer(args.yolo, m, data_yaml, val_list, data / "annotations/instances_val.json", 320,
                               args.minutes, tmp / m.removesuffix(".yaml")) for m in args.yolo_model}
    peers.report([(m, {"mAP": mAP}) for m, _s, mAP, _a in curve], found, (4, 10, args.minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
