"""Run control latency: from a client's command to the trainer's acknowledgement, in ms and in steps.

A demo run trains (a) in a thread of this process and (b) as a detached `nanxi-tune train` process; a
client sends ``--commands`` harmless live edits (budget.max_days toggled) through the run folder's
control channel (engine.run.runctl) and waits for each ack. It prints p50 / p95 of the wall latency and of
the steps between the send and the step at which the trainer applied it (1 = at the next step boundary:
the step in flight when the command came finished first), and the detached / in-process ratio of the p50s, measured side by side in one run.

    python bench/control_latency.py [--commands 20] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.run.runctl import Op

QUICK = {"preprocess.input_size": 64, "data.synthetic_train": 64, "data.synthetic_val": 8, "data.batch_size": 8,
         "backbone.width": 8, "head.channels": 16}


def measure(run: Path, n: int) -> tuple[list[float], list[int]]:
    tail, done = rundir.JsonlTail(run / rundir.METRICS), [0]

    def completed() -> int:  # steps logged so far (one more may be in flight)
        done[0] = max([done[0]] + [m["step"] for m in tail.poll() if m.get("split") == "train"])
        return done[0]

    end = time.monotonic() + 300
    while completed() < 2:  # training, past the first slow steps
        if time.monotonic() > end:
            raise SystemExit(f"{run}: the run did not start training within 300 s")
        time.sleep(0.05)
    ms, steps = [], []
    for i in range(n):
        before = completed()
        t0 = time.perf_counter()
        ack = runctl.request(run, Op.SET, {"budget.max_days": 4.0 + (i % 2) * 0.5}, "bench", timeout=120)
        ms.append((time.perf_counter() - t0) * 1000)
        if ack is None or not ack["applied"]:
            raise SystemExit(f"{run}: command {i} not applied: {ack}")
        steps.append(ack["step"] - before)
        time.sleep(0.1)
    return ms, steps


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def in_process(cfg: C.Config, run: Path, n: int) -> tuple[list[float], list[int]]:
    from nanxi_tune.engine.train.trainer import Trainer

    t = Trainer(cfg, run)
    th = threading.Thread(target=t.run, daemon=True)
    th.start()
    try:
        return measure(run, n)
    finally:
        t.request_stop()
        th.join(120)


def detached(cfg: C.Config, run: Path, n: int) -> tuple[list[float], list[int]]:
    run.mkdir(parents=True)
    start = C.save(cfg, run / "start.toml")
    proc = subprocess.Popen([sys.executable, "-m", "nanxi_tune.cli", "train", "--preset", str(start),
                             "--run-dir", str(run), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        return measure(run, n)
    finally:
        runctl.request(run, Op.STOP, timeout=120)
        proc.wait(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="a tiny model (the smoke size); default: the demo preset")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    cfg = C.load_preset("demo")
    if args.quick:
        cfg = C.with_updates(cfg, QUICK)
    cfg = C.with_updates(cfg, {"train.epochs": 10000, "eval.interval": 10000})
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"in-process": in_process(cfg, Path(tmp) / "a", args.commands),
                "detached": detached(cfg, Path(tmp) / "b", args.commands)}
        sps = [m for m in rundir.read_metrics(Path(tmp) / "a") if m.get("split") == "train"]
        step_s = (sps[-1]["time"] - sps[1]["time"]) / max(1, len(sps) - 2) if len(sps) > 2 else float("nan")
    print(f"control latency over {args.commands} live edits ({'quick' if args.quick else 'demo'} model, "
          f"~{step_s * 1000:.0f} ms/step in-process)")
    print(f"{'run':<12}{'p50 ms':>9}{'p95 ms':>9}{'p50 steps':>11}{'p95 steps':>11}")
    for name, (ms, steps) in rows.items():
        print(f"{name:<12}{pct(ms, .5):>9.0f}{pct(ms, .95):>9.0f}{pct(steps, .5):>11.0f}{pct(steps, .95):>11.0f}")
    a, b = (statistics.median(rows[k][0]) for k in ("in-process", "detached"))
    print(f"detached / in-process p50 latency ratio: {b / a:.2f}")


if __name__ == "__main__":
    main()
