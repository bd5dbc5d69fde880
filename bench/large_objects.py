"""A few large objects instead of BCCD's many small ones: the bccd preset against today's YOLO in the same budget.

The set is the embedded synthetic one with ``data.synthetic_objects = large`` (1–3 shapes an image, sides 35–90 %
of the image: one object filling half the frame), written as COCO. nanxi-tune trains the bccd preset on it for
``--minutes`` (planned on the budget) and is scored with pycocotools (its curve from the run's evaluations, its
end on the last weights: mAP50-95, AP50, AP75 and AP75/AP50, the loose-box figure); with ``--yolo PYTHON`` (an
interpreter with ultralytics installed) the peers of ``--yolo-model`` (default YOLOv8n, YOLO11n, YOLO26n) train
from scratch on the same images for the same minutes and are scored by the same pycocotools code
(``bench/peers.py``). 15 minutes by default: 5 was too short for YOLO to start. Run it alone on a quiet
machine; the runs go one after the other, each with the whole CPU.

    python bench/large_objects.py [--minutes 15] [--size 320] [--train 512] [--val 128] [--set key=value ...]
                                  [--yolo /path/to/python [--yolo-model yolov8n.yaml ...]]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import peers
from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.dataset import resolve
from nanxi_tune.engine.evaluation.evaluate_run import evaluate_run
from nanxi_tune.engine.train.trainer import Trainer

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--val", type=int, default=128)
    ap.add_argument("--yolo", help="a Python with ultralytics: also train the peers from scratch, same minutes")
    ap.add_argument("--yolo-model", nargs="+", default=list(peers.MODELS), help="the peers (ultralytics yaml)")
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-large-"))
    cfg = C.with_updates(C.load_preset("bccd"), {
        "data.train": "synthetic", "data.val": "synthetic", "data.synthetic_objects": "large",
        "data.synthetic_train": a.train, "data.synthetic_val": a.val, "preprocess.input_size": a.size,
        "train.time_budget_min": a.minutes * 0.97, "train.epochs": 10000, "eval.val_data_mode": "full"}
        | C.parse_sets(a.sets))
    print(f"large objects: {a.train} train / {a.val} val synthetic images at {a.size} px, {a.minutes:g} min each")

    t0 = time.time()
    curve: list[tuple[float, dict]] = []

    def on_event(e) -> None:
        if e.kind == "eval":
            curve.append(((time.time() - t0) / 60, {"mAP": e.mAP}))
            print(f"  {curve[-1][0]:5.1f} min  step {e.step:5d}  mAP {e.mAP:.3f}  AP50 {e.AP50:.3f}", flush=True)

    run = tmp / "nanxi"
    trainer = Trainer(cfg, run, on_event)
    state = trainer.run()
    m = evaluate_run(run, "last", {"eval.val_data_mode": "full"})
    curve.append(((time.time() - t0) / 60, m))
    print(f"nanxi-tune (bccd preset, {state}, {trainer.step} steps, {curve[-1][0]:.1f} min): mAP50-95 {m['mAP']:.4f} "
          f"AP50 {m['AP50']:.4f} AP75 {m['AP75']:.4f} (AP75/AP50 {m['AP75'] / max(m['AP50'], 1e-9):.2f}) "
          f"APl {m['APl']:.4f}", flush=True)
    if not a.yolo:
        return 0
    train, val = resolve("synthetic", "train", cfg), resolve("synthetic", "val", cfg)
    data_yaml, val_list = peers.layout(train, val, tmp / "yolo-data")
    found = {y: peers.run_peer(a.yolo, y, data_yaml, val_list, val[1], a.size, a.minutes, tmp / y.removesuffix(".yaml"))
             for y in a.yolo_model}
    for y, pts in found.items():
        e = pts[-1].metrics
        print(f"{y} end: AP75/AP50 {e['AP75'] / max(e['AP50'], 1e-9):.2f}")
    peers.report(curve, found, (4, 10, a.minutes))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
