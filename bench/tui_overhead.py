"""What the TUI costs a training run, measured in one go.

1. Throughput: the same preset trained headless (Trainer alone) and with the app attached
   (NanxiTuneApp driven by Textual's Pilot, headless driver: every frame is still laid out,
   rendered and composited, only the bytes are not written to a terminal). Images/s comes
   from metrics.jsonl wall times over steps after a warm-up, runs interleaved
   headless/attached so a busy neighbour on the machine hits both alike. Target ratio ≥ 0.97.
2. Key-to-paint latency while training saturates the CPU: keys (scrolling the monitor,
   switching tabs) are sent during the attached run; latency is the time from the key to
   the next frame the app hands to its driver. Target p95 ≤ 100 ms.
   Keys are Ctrl+T (next tab), so every key must repaint; sent every 0.25 s.

    .venv/bin/python bench/tui_overhead.py [--preset demo] [--steps 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path


def images_per_s(run_dir: Path, batch_size: int, skip: int) -> float:
    from nanxi_tune.engine import rundir

    rows = [r for r in rundir.read_metrics(run_dir) if r.get("split", "train") == "train"]
    rows = rows[skip:]
    if len(rows) < 2:
        raise SystemExit(f"{run_dir}: too few steps to measure")
    dt = rows[-1]["time"] - rows[0]["time"]
    return (rows[-1]["step"] - rows[0]["step"]) * batch_size / dt


def headless(cfg, root: Path, steps: int) -> Path:
    from nanxi_tune.engine import rundir
    from nanxi_tune.engine.trainer import Trainer

    run_dir = rundir.new_run_dir(root)
    result = Trainer(cfg, run_dir, max_steps=steps).run()
    assert result in ("stopped", "finished"), result
    return run_dir


def attached(preset: str, root: Path, steps: int, keys_on: bool = True) -> tuple[Path, list[float]]:
    from nanxi_tune.tui.app import NanxiTuneApp

    latencies: list[float] = []

    class Timed(NanxiTuneApp):
        last_paint = 0.0

        def _display(self, screen, renderable) -> None:  # noqa: ANN001 - Textual's hook
            if renderable is not None:
                Timed.last_paint = time.perf_counter()
            super()._display(screen, renderable)

    async def go() -> Path:
        app = Timed(preset=preset, runs_root=root, max_steps=steps)
        async with app.run_test(size=(120, 40)) as pilot:
            while not (app.form.all_mounted and app.query("#mon")):
                await pilot.pause(0.05)
            await pilot.press("f5")
            while app.monitor.step < 3 and app.running:  # torch imported, model built, training under way
                await pilot.pause(0.05)
            keys = ["ctrl+t"]  # Config → Monitor → Runs: every press repaints (Config is the heaviest screen)
            i = 0
            while app.running:
                if not keys_on:
                    await asyncio.sleep(0.2)
                    continue
                key = keys[i % len(keys)]
                i += 1
                t0 = time.perf_counter()
                await pilot.press(key)
                while Timed.last_paint < t0 and time.perf_counter() - t0 < 2.0:
                    await asyncio.sleep(0.002)
                latencies.append(Timed.last_paint - t0 if Timed.last_paint >= t0 else 2.0)
                await asyncio.sleep(0.25)
            return app.run_dir

    return asyncio.run(go()), latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=40, help="steps per run (max_steps)")
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the rate")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads for both arms (0 = torch's default); 1 tames OpenMP spin "
                         "contention when neighbours share the CPU")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from nanxi_tune.engine import config as C

    cfg = C.load_preset(args.preset)
    bs = cfg.data.batch_size
    root = Path(tempfile.mkdtemp(prefix="tui-overhead-"))
    headless(cfg, root / "warm", min(args.steps, args.skip + 2))  # dataset cache, torch import
    rates_h, rates_a, lat = [], [], []
    for r in range(args.repeats):
        rates_h.append(images_per_s(headless(cfg, root / "headless", args.steps), bs, args.skip))
        run_dir, l = attached(args.preset, root / "attached", args.steps)
        rates_a.append(images_per_s(run_dir, bs, args.skip))
        lat += l
        print(f"repeat {r + 1}: headless {rates_h[-1]:.1f} img/s, attached {rates_a[-1]:.1f} img/s, "
              f"{len(l)} keys", flush=True)
    h, a = statistics.median(rates_h), statistics.median(rates_a)
    lat_ms = sorted(x * 1000 for x in lat)
    p95 = lat_ms[min(len(lat_ms) - 1, int(round(0.95 * (len(lat_ms) - 1))))] if lat_ms else float("nan")
    print(f"preset {args.preset}, {args.steps} steps/run, {args.repeats} repeats, batch {bs}")
    print(f"throughput headless {h:.1f} img/s, attached {a:.1f} img/s, ratio {a / h:.3f} (target >= 0.97)")
    if lat_ms:
        print(f"key-to-paint latency while training: n={len(lat_ms)} p50 {statistics.median(lat_ms):.1f} ms, "
              f"p95 {p95:.1f} ms, max {lat_ms[-1]:.1f} ms (target p95 <= 100 ms)")


if __name__ == "__main__":
    main()
