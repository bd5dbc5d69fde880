"""What the TUI costs a training run, and how fast it answers keys while training, measured in one go.

0. First frame: a fresh ``python`` process imports the app and shows its first frame (Pilot, headless
   driver); the time is from process start (imports included) to the first frame handed to the driver.
1. Throughput: the same preset, same torch thread count, trained headless (Trainer alone) and with the
   app attached and watching (NanxiTuneApp driven by Textual's Pilot on the Monitor tab, headless
   driver: every frame is still laid out, rendered and composited, only the bytes are not written to
   a terminal). Images/s from metrics.jsonl wall times over the steps after a warm-up; arms
   interleaved (headless, attached, headless, attached, …) so a busy neighbour hits both alike.
   Target ratio ≥ 0.97. A third arm — attached while the latency keys below are being pressed — is
   printed too, for honesty (someone hammering keys costs the run some speed).
2. Key-to-paint latency while training saturates the CPU: during that third arm, keys are sent every
   0.25 s from a representative set — tab switches (Alt+1/2/3: Config, Monitor, Runs), cursor
   movement in the runs table, typing into a config Input (a character, then backspace). Latency is
   the time from the key event entering the app's queue (as the terminal driver posts it) to the next
   frame the app hands to its driver. Target p95 ≤ 100 ms. The
   main thread's CPU time per key is printed beside it: wall − CPU is time spent waiting for a core
   (or the GIL) on a shared machine.

    .venv/bin/python bench/tui_overhead.py [--preset demo] [--steps 40] [--repeats 2] [--threads 1]

Prints the load average before and after: on a shared 2-core box the numbers move with the neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def images_per_s(run_dir: Path, batch_size: int, skip: int) -> float:
    from nanxi_tune.engine.run import rundir

    rows = [r for r in rundir.read_metrics(run_dir) if r.get("split", "train") == "train"]
    rows = rows[skip:]
    if len(rows) < 2:
        raise SystemExit(f"{run_dir}: too few steps to measure")
    dt = rows[-1]["time"] - rows[0]["time"]
    return (rows[-1]["step"] - rows[0]["step"]) * batch_size / dt


def headless(cfg, root: Path, steps: int) -> Path:
    from nanxi_tune.engine.run import rundir
    from nanxi_tune.engine.train.trainer import Trainer

    run_dir = rundir.new_run_dir(root)
    result = Trainer(cfg, run_dir, max_steps=steps).run()
    assert result in ("stopped", "finished"), result
    return run_dir


KEYS = [  # (group, tab to be on, key)
    ("tab", None, "alt+1"), ("type", "config", "9"), ("type", "config", "backspace"),
    ("tab", None, "alt+3"), ("cursor", "runs", "down"), ("cursor", "runs", "up"),
    ("tab", None, "alt+2"), ("cursor", "runs", None),
]


def attached(preset: str, root: Path, steps: int, keys_on: bool) -> tuple[Path, list[tuple[str, float, float]]]:
    from textual import events

    from nanxi_tune.tui.app import NanxiTuneApp

    samples: list[tuple[str, float, float]] = []  # (group, wall s, main-thread CPU s)

    class Timed(NanxiTuneApp):
        since = float("inf")  # the key's time; the first frame after it is the one we time
        first_paint: float | None = None

        def _display(self, screen, renderable) -> None:  # noqa: ANN001 - Textual's hook
            if renderable is not None and Timed.first_paint is None:
                now = time.perf_counter()
                if now >= Timed.since:
                    Timed.first_paint = now
            super()._display(screen, renderable)

    async def go() -> Path:
        app = Timed(preset=preset, runs_root=root, max_steps=steps)
        async with app.run_test(size=(120, 40)) as pilot:
            while not (app.form.all_mounted and app.query("#mon") and app.query("#runs-table")):
                await pilot.pause(0.05)
            await pilot.press("f5")
            while app.monitor.step < 3 and app.running:  # torch imported, model built, training under way
                await pilot.pause(0.05)
            i = 0
            tabs = app.query_one("#tabs")
            w0, cpu0 = time.perf_counter(), time.thread_time()
            while app.running:
                if not keys_on:
                    await asyncio.sleep(0.2)
                    continue
                group, where, key = KEYS[i % len(KEYS)]
                i += 1
                if key is None:
                    continue
                if where == "config" and tabs.active == "config":
                    app.form.row("train.epochs").editor.focus()
                elif where == "runs" and tabs.active == "runs":
                    app.query_one("#runs-table").focus()
                await asyncio.sleep(0.05)
                t0, c0 = time.perf_counter(), time.thread_time()
                Timed.since, Timed.first_paint = t0, None
                # as the terminal driver does: a Key event into the app's queue (Pilot.press would first
                # wait for the app to go idle, which a streaming run rarely lets it do)
                app.post_message(events.Key(key, key if len(key) == 1 else None))
                while Timed.first_paint is None and time.perf_counter() - t0 < 3.0:
                    await asyncio.sleep(0.002)
                wall = Timed.first_paint - t0 if Timed.first_paint is not None else 3.0
                name = {"alt+1": "tab→config", "alt+2": "tab→monitor", "alt+3": "tab→runs"}.get(key, group)
                samples.append((name, wall, time.thread_time() - c0))
                await asyncio.sleep(0.25)
            if not keys_on:  # the UI's own cost while watching: main-thread CPU per wall second
                samples.append(("ui-cpu", time.thread_time() - cpu0, time.perf_counter() - w0))
            return app.run_dir

    return asyncio.run(go()), samples


def first_frame(preset: str) -> float:
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import asyncio, tempfile\n"
        "from pathlib import Path\n"
        "from nanxi_tune.tui.app import NanxiTuneApp\n"
        "class A(NanxiTuneApp):\n"
        "    t = None\n"
        "    def _display(self, screen, renderable):\n"
        "        if renderable is not None and A.t is None: A.t = time.perf_counter() - t0\n"
        "        super()._display(screen, renderable)\n"
        "async def go():\n"
        f"    app = A(preset={preset!r}, runs_root=Path(tempfile.mkdtemp()))\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        while A.t is None: await pilot.pause(0.01)\n"
        "asyncio.run(go()); print(A.t)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=40, help="steps per run (max_steps)")
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the rate")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--key-steps", type=int, default=0, help="steps of the run the keys are sent during "
                    "(default 3 × --steps: enough keys for a p95)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads for every arm (default 1: OpenMP spin contention makes more "
                         "threads slower on a shared 2-core box; 0 = torch's default)")
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs",
          flush=True)
    ff = [first_frame(args.preset) for _ in range(2)]
    print(f"first frame (process start → first frame, imports included): {min(ff):.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in ff)}; target 1.5 s)", flush=True)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from nanxi_tune.engine import config as C

    cfg = C.load_preset(args.preset)
    bs = cfg.data.batch_size
    root = Path(tempfile.mkdtemp(prefix="tui-overhead-"))
    headless(cfg, root / "warm", min(args.steps, args.skip + 2))  # dataset cache, torch import
    rates_h, rates_a, rates_k, lat, ui = [], [], [], [], []
    for r in range(args.repeats):
        rates_h.append(images_per_s(headless(cfg, root / "runs", args.steps), bs, args.skip))
        run_dir, u = attached(args.preset, root / "runs", args.steps, keys_on=False)
        rates_a.append(images_per_s(run_dir, bs, args.skip))
        ui += [c / w for _, c, w in u if w > 0]
        run_dir, s = attached(args.preset, root / "runs", args.key_steps or 3 * args.steps, keys_on=True)
        rates_k.append(images_per_s(run_dir, bs, args.skip))
        lat += s
        print(f"repeat {r + 1}: headless {rates_h[-1]:.1f} img/s, attached {rates_a[-1]:.1f} img/s, "
              f"attached + keys {rates_k[-1]:.1f} img/s ({len(s)} keys)", flush=True)
    h, a, k = statistics.median(rates_h), statistics.median(rates_a), statistics.median(rates_k)
    print(f"preset {args.preset}, {args.steps} steps/run, {args.repeats} repeats, batch {bs}, "
          f"torch threads {torch.get_num_threads()}")
    pairs = [x / y for x, y in zip(rates_a, rates_h)]
    print(f"throughput headless {h:.1f} img/s, attached (watching) {a:.1f} img/s, ratio {a / h:.3f} "
          f"(target >= 0.97); per-repeat ratios {', '.join(f'{p:.3f}' for p in pairs)} (median "
          f"{statistics.median(pairs):.3f}); attached while keys are pressed {k:.1f} img/s, ratio {k / h:.3f}")
    if ui:
        print(f"UI main thread while watching: {statistics.median(ui):.1%} of one core (median over repeats; "
              "the trainer runs in another thread, so this is the most the UI can take from it)")
    if lat:
        walls = [w * 1000 for _, w, _ in lat]
        cpus = [c * 1000 for _, _, c in lat]
        print(f"key-to-paint latency while training: n={len(walls)} p50 {statistics.median(walls):.1f} ms, "
              f"p95 {pct(walls, 0.95):.1f} ms, max {max(walls):.1f} ms (target p95 <= 100 ms); "
              f"main-thread CPU per key p50 {statistics.median(cpus):.1f} ms, p95 {pct(cpus, 0.95):.1f} ms")
        for group in dict.fromkeys(g for g, _, _ in lat):
            w = [x * 1000 for g, x, _ in lat if g == group]
            c = [y * 1000 for g, _, y in lat if g == group]
            print(f"  {group:12s} n={len(w):3d} p50 {statistics.median(w):7.1f} ms  p95 {pct(w, 0.95):7.1f} ms  "
                  f"(CPU p50 {statistics.median(c):.1f} ms)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
