"""Ultralytics peers from scratch in the same wall-clock budget, scored by nanxi-tune's own pycocotools code.

Used by ``bench/bccd.py`` and ``bench/large_objects.py`` (``--yolo PY --yolo-model yolov8n.yaml yolo11n.yaml
yolo26n.yaml``). The peer runs in its own Python (``PY``, a venv with ultralytics: never this project's
dependency), on the same train/val images (symlinked into ultralytics' layout), at the same input size, batch 16,
``workers=0`` like the bccd preset, for the same minutes (ultralytics' ``time=``, which plans its lr schedule on
that budget as ``train.time_budget_min`` does here). Per-epoch validation is off (it would eat the peer's budget);
the EMA weights are copied at the first epoch end past each mark (4 and 10 minutes by default) and at the end.
Each copy then predicts the val images (conf 0.001, max 300 boxes, as ultralytics' own val) and the boxes are
scored by ``engine.evaluation.evaluate.coco_map`` — the same COCOeval call that scores nanxi-tune.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nanxi_tune.engine.evaluation.evaluate import coco_map

MODELS = ("yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml")

PEER_SCRIPT = r"""
import json, shutil, sys, time
from ultralytics import YOLO
model, data, size, minutes, marks, out, val_list = sys.argv[1:8]
size, minutes, marks = int(size), float(minutes), [float(m) for m in marks.split(",") if m]
snaps = []

def on_fit_epoch_end(tr):
    elapsed = (time.time() - tr.train_time_start) / 60
    while marks and elapsed >= marks[0] and tr.last.exists():
        mark = marks.pop(0)
        dst = f"{out}/mark-{mark:g}.pt"
        shutil.copy(tr.last, dst)
        snaps.append((elapsed, dst, mark))

m = YOLO(model)
m.add_callback("on_fit_epoch_end", on_fit_epoch_end)
m.train(data=data, imgsz=size, epochs=10000, time=minutes / 60, batch=16, workers=0, device="cpu", project=out,
        name="y", pretrained=False, amp=False, plots=False, verbose=False, exist_ok=True, val=False)
end = (time.time() - m.trainer.train_time_start) / 60
snaps.append((end, str(m.trainer.last), minutes))
images = [line for line in open(val_list).read().splitlines() if line]
for elapsed, ckpt, mark in snaps:
    dets = []
    for r in YOLO(ckpt).predict(images, imgsz=size, conf=0.001, iou=0.7, max_det=300, device="cpu",
                                verbose=False, stream=True, batch=16):
        b = r.boxes
        for (x1, y1, x2, y2), s, c in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist()):
            dets.append([r.path, int(c), x1, y1, x2 - x1, y2 - y1, s])
    print("PEER " + json.dumps({"minutes": elapsed, "mark": mark, "dets": dets}), flush=True)
own = YOLO(snaps[-1][1]).val(data=data, imgsz=size, batch=16, device="cpu", plots=False, verbose=False)
print(f"OWNVAL {own.box.map:.4f} {own.box.map50:.4f}", flush=True)
"""


@dataclass
class PeerPoint:
    minutes: float  # when the weights were copied: the first epoch end past the mark
    metrics: dict[str, float]
    mark: float  # the minute it stands for (the budget for the last)
    own_val: str = ""  # ultralytics' own val of the last weights: a check on the scoring, not the figure used


def to_yolo(images: Path, ann: Path, root: Path, split: str, cat_ids: list[int]) -> list[Path]:
    """COCO → ultralytics' layout: images/<split>/* (symlinks) beside labels/<split>/*.txt (class cx cy w h, 0-1).
    Class k is ``cat_ids[k]``; returns the linked images."""
    d = json.loads(ann.read_text())
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    index = {c: k for k, c in enumerate(cat_ids)}
    boxes: dict[int, list[str]] = {}
    size = {im["id"]: (im["width"], im["height"]) for im in d["images"]}
    for a in d["annotations"]:
        w, h = size[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        boxes.setdefault(a["image_id"], []).append(
            f"{index[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
    linked = []
    for im in d["images"]:
        link = root / "images" / split / Path(im["file_name"]).name
        if not link.exists():
            link.symlink_to((images / im["file_name"]).resolve())
        (root / "labels" / split / link.with_suffix(".txt").name).write_text("\n".join(boxes.get(im["id"], [])) + "\n")
        linked.append(link)
    return linked


def layout(train: tuple[Path, Path], val: tuple[Path, Path], root: Path) -> tuple[Path, Path]:
    """Write the set in ultralytics' layout under ``root``; returns (data.yaml, the val image list file)."""
    cats = sorted(json.loads(val[1].read_text())["categories"], key=lambda c: c["id"])
    cat_ids = [c["id"] for c in cats]
    to_yolo(*train, root, "train", cat_ids)
    val_images = to_yolo(*val, root, "val", cat_ids)
    names = {k: c["name"] for k, c in enumerate(cats)}
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {json.dumps(names)}\n")
    listing = root / "val.txt"
    listing.write_text("\n".join(str(p) for p in val_images) + "\n")
    return data, listing


def score(dets: list[list], val_ann: Path, cat_ids: list[int]) -> dict[str, float]:
    """Peer boxes (image path, class, x, y, w, h, score) → the same COCOeval figures as nanxi-tune's."""
    from pycocotools.coco import COCO
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_ann))
    by_name = {Path(im["file_name"]).name: im["id"] for im in gt.dataset["images"]}
    results = [{"image_id": by_name[Path(p).name], "category_id": cat_ids[c], "bbox": [x, y, w, h], "score": s}
               for p, c, x, y, w, h, s in dets]
    return coco_map(gt, results, list(by_name.values()))


def run_peer(python: str, model: str, data: Path, val_list: Path, val_ann: Path, size: int, minutes: float,
             out: Path, marks: tuple[float, ...] = (4, 10)) -> list[PeerPoint]:
    """Train ``model`` from scratch for ``minutes`` in ``python``; the val figures at each mark and at the end."""
    out.mkdir(parents=True, exist_ok=True)
    cat_ids = sorted(c["id"] for c in json.loads(val_ann.read_text())["categories"])
    marks_arg = ",".join(f"{m:g}" for m in marks if m < minutes)
    p = subprocess.run([python, "-c", PEER_SCRIPT, model, str(data), str(size), str(minutes), marks_arg, str(out),
                        str(val_list)], capture_output=True, text=True, cwd=out)
    points = [json.loads(line[5:]) for line in p.stdout.splitlines() if line.startswith("PEER ")]
    if p.returncode or not points:
        raise RuntimeError(f"{model} in {python} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    own = next((line.split()[1:] for line in p.stdout.splitlines() if line.startswith("OWNVAL ")), ["?", "?"])
    found = [PeerPoint(pt["minutes"], score(pt["dets"], val_ann, cat_ids), pt["mark"]) for pt in points]
    found[-1].own_val = f"ultralytics' own val of the last weights: mAP50-95 {own[0]} AP50 {own[1]}"
    return found


def at(curve: list[tuple[float, float]], minute: float) -> float:
    """nanxi-tune's best figure reached by ``minute`` (a quarter-minute of grace for an evaluation ending late)."""
    return max((v for m, v in curve if m <= minute + 0.25), default=0.0)


def peer_at(points: list[PeerPoint], mark: float) -> float:
    """A peer's figure at ``mark``: its copy for that mark (taken at the first epoch end past it)."""
    return max((p.metrics["mAP"] for p in points if p.mark <= mark + 1e-9), default=0.0)


def report(ours: list[tuple[float, dict]], peers: dict[str, list[PeerPoint]], marks: tuple[float, ...]) -> None:
    """Both curves, then nanxi-tune's ratio to each peer and to the best of them at every mark."""
    for name, pts in peers.items():
        print(f"\n{name} (from scratch, same minutes, scored by the same pycocotools code):")
        print(f"{'minutes':>8} {'mAP50-95':>9} {'AP50':>6} {'AP75':>6}")
        for pt in pts:
            print(f"{pt.minutes:8.1f} {pt.metrics['mAP']:9.3f} {pt.metrics['AP50']:6.3f} {pt.metrics['AP75']:6.3f}")
        print(f"  ({pts[-1].own_val})")
    mine = [(m, x["mAP"]) for m, x in ours]
    print()
    for mark in sorted({m for m in marks if m <= marks[-1]}):
        got = at(mine, mark)
        theirs = {name: peer_at(pts, mark) for name, pts in peers.items()}
        best_name = max(theirs, key=theirs.get)
        parts = "  ".join(f"{n.removesuffix('.yaml')} {v:.3f}" for n, v in theirs.items())
        print(f"at {mark:4g} min: nanxi-tune {got:.3f}  {parts}  ratio to the best ({best_name.removesuffix('.yaml')}) "
              f"{got / max(theirs[best_name], 1e-9):.2f}")
