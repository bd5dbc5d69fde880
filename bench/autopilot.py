"""The autopilot against the bccd preset and today's YOLO, each given the same total wall time.

For each ``--minutes M``: the autopilot (``nanxi-tune autopilot --budget M``: its search on a held-out slice of
train, then its final run on the whole train split, val scored only by the final run) against the bccd preset
trained for the same M minutes (planned on the budget), and with ``--yolo PY`` against the ultralytics peers of
``--yolo-model`` from scratch for M minutes (``bench/peers.py``), all scored on val by the same pycocotools code.
Prints each figure, the autopilot's ratio to the preset and to the best peer, and where its minutes went.

    python bench/autopilot.py [--set-name bccd|large] [--minutes 30 60] [--size 320] [--skip-preset]
                              [--yolo PY [--yolo-model yolov8n.yaml ...]] [--workers 1]
                              [--rounds [lr shape capacity]] [--set key=value ...]

Run it alone on a quiet machine: everything goes one after the other, each with the whole CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import peers
from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.dataset import resolve
from nanxi_tune.engine.evaluation.evaluate_run import evaluate_run
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.train.trainer import Trainer
from nanxi_tune.engine.workflows import autopilot_plan as P
from nanxi_tune.engine.workflows.autopilot import AutopilotOwner, create


def base_config(name: str, data: Path, size: int) -> C.Config:
    if name == "bccd":
        sets = {"data.train": str(data / "annotations/instances_train.json"),
                "data.val": str(data / "annotations/instances_val.json")}
    else:
        sets = {"data.train": "synthetic", "data.val": "synthetic", "data.synthetic_objects": "large",
                "data.synthetic_train": 512, "data.synthetic_val": 128}
    return C.with_updates(C.load_preset("bccd"), sets | {"preprocess.input_size": size, "eval.val_data_mode": "full"})


def pace(run: Path) -> str:
    """A run's steps and median step time: the host's speed drifts between runs (a probe read 0.48 s a step in one
    window and 0.38 in the next), so each figure is printed with the pace it trained at."""
    times = [m["time"] for m in rundir.read_metrics(run) if m.get("kind") == "step"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return f"{len(times)} steps, median {statistics.median(gaps):.3f} s a step" if gaps else "no steps"


def run_autopilot(cfg: C.Config, minutes: float, folder: Path, workers: int,
                  rounds: list[str]) -> tuple[dict, P.Autopilot]:
    create(folder, "bccd", cfg, minutes, workers=workers, rounds=rounds)

    def say(e) -> None:
        if e.kind == "autopilot":
            print(f"  [{e.what}] {e.round}: {e.message}"[:400], flush=True)

    t0 = time.time()
    state = AutopilotOwner(folder, say).run()
    ap = P.load(folder)
    print(f"autopilot ({state}) {(time.time() - t0) / 60:.1f} min wall, {ap.used_s / 60:.1f} min counted; final run "
          f"{pace(folder / 'final')}", flush=True)
    return ap.final, ap


def run_preset(cfg: C.Config, minutes: float, folder: Path) -> dict:
    cfg = C.with_updates(cfg, {"train.time_budget_min": minutes * 0.97, "train.epochs": 10000})
    t0 = time.time()
    Trainer(cfg, folder).run()
    m = evaluate_run(folder, "last", {"eval.val_data_mode": "full"})
    print(f"bccd preset: {(time.time() - t0) / 60:.1f} min, val mAP {m['mAP']:.4f} AP50 {m['AP50']:.4f}; "
          f"{pace(folder)}", flush=True)
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set-name", choices=["bccd", "large"], default="bccd")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/bccd"))
    ap.add_argument("--minutes", type=float, nargs="+", default=[30.0, 60.0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-preset", action="store_true", help="no preset run (its figure measured before)")
    ap.add_argument("--yolo", help="a Python with ultralytics: also train the peers from scratch, same minutes")
    ap.add_argument("--yolo-model", nargs="+", default=list(peers.MODELS))
    ap.add_argument("--rounds", nargs="*", default=list(P.SEARCH), choices=P.SEARCH,
                    help="the autopilot's search rounds (none: the whole budget but post-processing to the final run)")
    ap.add_argument("--set", dest="sets", nargs="*", default=[], help="key=value over the base config (both arms)")
    a = ap.parse_args()
    data = Path(a.data)
    if a.set_name == "bccd" and not (data / "annotations/instances_train.json").exists():
        print(f"BCCD not found at {data}; pass --data PATH", file=sys.stderr)
        return 1
    cfg = C.with_updates(base_config(a.set_name, data, a.size), C.parse_sets(a.sets), "--set")
    tmp = Path(tempfile.mkdtemp(prefix="bench-autopilot-"))
    rows = []
    for minutes in a.minutes:
        print(f"\n== {a.set_name}, {minutes:g} minutes each ==", flush=True)
        final, record = run_autopilot(cfg, minutes, tmp / f"autopilot-{minutes:g}", a.workers, a.rounds)
        preset = None if a.skip_preset else run_preset(cfg, minutes, tmp / f"preset-{minutes:g}")
        best_peer = None
        if a.yolo:
            train, val = resolve(cfg.data.train, "train", cfg), resolve(cfg.data.val, "val", cfg)
            data_yaml, val_list = peers.layout(train, val, tmp / f"yolo-data-{minutes:g}")
            for y in a.yolo_model:
                pts = peers.run_peer(a.yolo, y, data_yaml, val_list, val[1], a.size, minutes,
                                     tmp / f"{y.removesuffix('.yaml')}-{minutes:g}", marks=())
                m = pts[-1].metrics["mAP"]
                print(f"{y}: val mAP {m:.4f}", flush=True)
                best_peer = max(best_peer or (0.0, ""), (m, y))
        rows.append((minutes, final, preset, best_peer, record))
    print(f"\n{a.set_name}: val mAP50-95, same total minutes each")
    print(f"{'minutes':>7} {'autopilot':>9} {'preset':>7} {'ratio':>6} {'best YOLO':>20} {'ratio':>6}  recipe")
    for minutes, final, preset, peer, record in rows:
        f = final.get("mAP", float("nan"))
        p = preset["mAP"] if preset else float("nan")
        y = f"{peer[0]:.4f} {peer[1].removesuffix('.yaml')}" if peer else "-"
        print(f"{minutes:7g} {f:9.4f} {p:7.4f} {f / p if preset else float('nan'):6.2f} {y:>20} "
              f"{f / peer[0] if peer else float('nan'):6.2f}  {record.recipe}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
