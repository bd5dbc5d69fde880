"""What data-parallel training costs: images/s of a one-process DDP run (torchrun, world size 1: the DDP wrapper,
the per-step loss all-reduce and control broadcast) against the plain trainer on the same device, side by side
in one run (target ≥ 0.97); with several devices (CUDA) also the scaling efficiency, measured global images/s
÷ (N × one device's images/s).

Each run is `nanxi-tune train` (and `--nproc-per-node N`) on the same config for --steps steps with no
evaluation; images/s comes from the step lines' wall times after --warmup steps (the global batch per step).

    python bench/ddp_overhead.py [--preset demo] [--steps 60] [--warmup 10] [--nproc N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CLI = [sys.executable, "-m", "nanxi_tune.cli"]


def images_per_s(run_dir: Path, batch: int, world: int, warmup: int) -> float:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    steps = [m for m in lines if m.get("split") == "train" and m["step"] > warmup]
    if len(steps) < 2:
        raise SystemExit(f"{run_dir}: too few step lines to measure ({len(steps)}); raise --steps")
    return (steps[-1]["step"] - steps[0]["step"]) * batch * world / (steps[-1]["time"] - steps[0]["time"])


def run(root: Path, name: str, args, nproc: int | None) -> float:
    sets = ["train.epochs=1000", "eval.interval=1000", "diagnose.enabled=false", "train.log_every=1", *args.sets]
    cmd = [*CLI, "train", "--preset", args.preset, "--run-dir", str(root / name), "--quiet",
           "--max-steps", str(args.steps), "--set", *sets]
    if nproc:
        cmd += ["--nproc-per-node", str(nproc)]
    env = os.environ | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode not in (0, 3):
        raise SystemExit(f"{name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    import tomllib

    batch = tomllib.loads((root / name / "config.toml").read_text())["data"]["batch_size"]
    return images_per_s(root / name, batch, nproc or 1, args.warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1, help="alternate plain / DDP this many times; best of each")
    ap.add_argument("--nproc", type=int, default=0, help="also measure N processes (default: every CUDA device "
                    "when there are several)")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every run (CPU; default: unset)")
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    args = ap.parse_args()
    import torch

    devices = torch.cuda.device_count()
    where = f"{devices} × {torch.cuda.get_device_name(0)}" if devices else "CPU (Gloo)"
    nproc = args.nproc or (devices if devices > 1 else 0)
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        root = Path(tmp)
        plain, ddp = [], []
        for i in range(args.repeat):
            plain.append(run(root, f"plain-{i}", args, None))
            ddp.append(run(root, f"ddp1-{i}", args, 1))
        p, d = max(plain), max(ddp)
        result = {"device": where, "preset": args.preset, "steps": args.steps, "plain_img_s": round(p, 2),
                  "ddp1_img_s": round(d, 2), "ddp1_ratio": round(d / p, 4)}
        print(f"{where}, preset {args.preset}, {args.steps} steps ({args.warmup} warm-up)")
        print(f"  plain trainer        {p:9.1f} img/s")
        print(f"  DDP, world size 1    {d:9.1f} img/s   ratio {d / p:.3f} (target ≥ 0.97)")
        if nproc > 1:
            n = run(root, f"ddp{nproc}", args, nproc)
            eff = n / (nproc * p)
            result |= {"nproc": nproc, "ddpN_img_s": round(n, 2), "scaling_efficiency": round(eff, 4)}
            print(f"  DDP, {nproc} processes     {n:9.1f} img/s   scaling efficiency {eff:.3f} "
                  f"(global img/s ÷ {nproc} × plain)")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
