"""Seven-stars sweep overhead: the wall time of a 7-trial sweep against 7 × one trial run alone.

Each "alone" trial is a plain in-process ``Trainer(cfg, run_dir).run()`` with exactly the config the sweep gives
that trial (engine.workflows.study.trial_config: the swept value, train.max_steps, a final-only evaluation). The sweep is a
study (engine.workflows.study): this process is its owner (``Sweep.run``), one trial at a time on one device, each trial its
own process (``nanxi-tune study trial``) — so beside the Optuna journal storage, the owner's bookkeeping, the
parent event, the per-trial summary and the journal, the sweep pays one interpreter + torch import + dataset load
per trial, which the alone runs (one warm process) do not. The trial processes get the same torch threads as the
alone runs (OMP_NUM_THREADS). The alone runs are timed before and after the sweep and averaged (the machine may
be shared). Target: the cost of a trial of its own process ≤ 6 s a trial (the ratio is printed as information: it
tends to 1 as trials grow to the minutes real sweeps take).

    python bench/sweep.py [--steps 20] [--start 0.0003] [--threads 1] [--size 64] [--device auto] [--keep]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.workflows import sweep as S
from nanxi_tune.engine.workflows.study import trial_config
from nanxi_tune.engine.train.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--start", type=float, default=0.0003)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--keep", action="store_true", help="keep the run folders (default: removed)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the trial processes: the alone runs' threads
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    os.environ.setdefault("NANXI_TUNE_CACHE", str(tmp / "cache"))
    cfg = C.with_updates(C.load_preset("demo"), {
        "preprocess.input_size": a.size, "data.synthetic_train": 64, "data.synthetic_val": 16, "data.batch_size": 8,
        "backbone.width": 8, "head.channels": 16, "eval.online": False, "train.device": a.device})
    values = S.window(a.start)
    cuda = torch.cuda.is_available() and a.device in ("auto", "cuda") or a.device.startswith("cuda:")
    device = (a.device if a.device.startswith("cuda:") else "cuda:0") if cuda else "cpu"
    probe = S.Sweep(tmp / "probe", cfg, "train.base_lr", values, trial_steps=a.steps)  # a study, never run
    trial_cfgs = [trial_config(probe.spec, v, device) for v in values]
    Trainer(trial_cfgs[0], tmp / "warmup").run()  # synthetic cache, imports, allocator

    def alone(tag: str) -> float:
        t0 = time.perf_counter()
        for i, c in enumerate(trial_cfgs):
            Trainer(c, tmp / f"alone-{tag}-{i}").run()
        return time.perf_counter() - t0

    before = alone("a")
    t0 = time.perf_counter()
    sw = S.Sweep(tmp / "sweep", cfg, "train.base_lr", values, trial_steps=a.steps)
    assert sw.run(devices=[device]) == "finished"  # one trial at a time, on the alone runs' device
    sweep_s = time.perf_counter() - t0
    after = alone("b")
    base = (before + after) / 2
    print(f"7 trials × {a.steps} steps at {a.size} px, {a.threads} thread(s), device {device}")
    print(f"  7 × one trial alone: {before:.2f}s before, {after:.2f}s after (mean {base:.2f}s)")
    print(f"  7-trial sweep:       {sweep_s:.2f}s")
    print(f"  ratio sweep / alone = {sweep_s / base:.3f} (each trial its own process: small beside real trials)")
    print(f"  overhead per trial = {(sweep_s - base) / len(values):.2f} s (target ≤ 6 s: a trial process's start, "
          f"the study's bookkeeping)")
    print(f"  best train.base_lr = {S.value_name(sw.best_value())}" + (f"; folder {tmp}" if a.keep else ""))
    if not a.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
