"""A few large objects instead of BCCD's many small ones: the bccd preset against YOLOv8n in the same budget.

The set is the embedded synthetic one with ``data.synthetic_objects = large`` (1–3 shapes an image, sides 35–90 %
of the image: one object filling half the frame), written as COCO. nanxi-tune trains the bccd preset on it for
``--minutes`` (planned on the budget) and is scored with pycocotools; with ``--yolo PYTHON`` (an interpreter
with ultralytics installed) YOLOv8n trains from scratch on the same images for the same minutes (imgsz, batch
16, CPU) and is scored by ultralytics' own val. Run it alone on a quiet machine; the two runs go one after the
other, each with the whole CPU.

    python bench/large_objects.py [--minutes 5] [--size 320] [--train 512] [--val 128] [--yolo /path/to/python]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.dataset import resolve
from nanxi_tune.engine.evaluation.evaluate_run import evaluate_run
from nanxi_tune.engine.train.trainer import Trainer

YOLO_SCRIPT = """
import sys, time
from ultralytics import YOLO
data, size, minutes, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
m = YOLO("yolov8n.yaml")
m.train(data=data, imgsz=size, epochs=10000, time=minutes / 60, batch=16, workers=0, device="cpu", project=out,
        name="y", pretrained=False, amp=False, plots=False, verbose=False, exist_ok=True)
r = YOLO(out + "/y/weights/last.pt").val(data=data, imgsz=size, batch=16, device="cpu", plots=False, verbose=False)
print(f"YOLO mAP50-95 {r.box.map:.4f} AP50 {r.box.map50:.4f}")
"""


def to_yolo(images: Path, ann: Path, root: Path, split: str) -> None:
    """COCO → ultralytics' layout: images/<split>/*.png beside labels/<split>/*.txt (class cx cy w h, 0-1)."""
    d = json.loads(ann.read_text())
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    boxes: dict[int, list[str]] = {}
    size = {im["id"]: (im["width"], im["height"]) for im in d["images"]}
    for a in d["annotations"]:
        w, h = size[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        boxes.setdefault(a["image_id"], []).append(
            f"{a['category_id'] - 1} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
    for im in d["images"]:
        link = root / "images" / split / im["file_name"]
        if not link.exists():
            link.symlink_to(images / im["file_name"])
        (root / "labels" / split / Path(im["file_name"]).with_suffix(".txt").name).write_text(
            "\n".join(boxes.get(im["id"], [])) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--val", type=int, default=128)
    ap.add_argument("--yolo", help="a Python with ultralytics: also train YOLOv8n on the same set")
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
    run = tmp / "nanxi"
    trainer = Trainer(cfg, run)
    state = trainer.run()
    m = evaluate_run(run, "last", {"eval.val_data_mode": "full"})
    print(f"nanxi-tune (bccd preset, {state}, {trainer.step} steps, {(time.time() - t0) / 60:.1f} min): "
          f"mAP50-95 {m['mAP']:.4f} AP50 {m['AP50']:.4f} APl {m['APl']:.4f}", flush=True)
    if not a.yolo:
        return 0

    root = tmp / "yolo-data"
    for split in ("train", "val"):
        images, ann = resolve("synthetic", split, cfg)
        to_yolo(images, ann, root, split)
    names = {c["id"] - 1: c["name"] for c in json.loads(resolve("synthetic", "val", cfg)[1].read_text())["categories"]}
    data = tmp / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {json.dumps(names)}\n")
    p = subprocess.run([a.yolo, "-c", YOLO_SCRIPT, str(data), str(a.size), str(a.minutes), str(tmp / "yolo")],
                       capture_output=True, text=True, cwd=tmp)
    found = re.search(r"YOLO mAP50-95 ([\d.]+) AP50 ([\d.]+)", p.stdout)
    if not found:
        print(f"YOLOv8n run failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        return 1
    y_map, y_ap50 = float(found[1]), float(found[2])
    print(f"YOLOv8n (from scratch, same minutes): mAP50-95 {y_map:.4f} AP50 {y_ap50:.4f}")
    print(f"ratio nanxi / YOLOv8n: mAP50-95 {m['mAP'] / max(y_map, 1e-9):.2f}, AP50 {m['AP50'] / max(y_ap50, 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
