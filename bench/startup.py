"""Start-up and TUI memory figures, each measured in one run:

1. ``nanxi-tune --help`` wall time (a fresh process each time, median of ``--repeats``); target <= 0.5 s. Also
   checks that --help does not import torch.
2. First-frame time of the TUI: ``nanxi-tune`` launched in a real terminal (tmux, 80×24), timed from the
   process start until its first screen (the Config tab, showing ``input_size``) is on the terminal; median of
   ``--repeats``; target <= 1.5 s. Without tmux: Textual's headless driver in a fresh process, timed until the
   app's first screen is mounted.
3. RSS growth while the TUI's monitor receives ``--steps`` logged steps (default 1 000 000) through its real
   message path (an opened run's RunSession bridge → RunUpdate → Monitor.add_train, plots redrawn), fed
   synthetic StepMetrics from a thread without training; target <= 50 MB. Runs in a child process.

    .venv/bin/python bench/startup.py                  # all three
    .venv/bin/python bench/startup.py --steps 200000   # quicker memory figure
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cli() -> list[str]:
    script = Path(sys.executable).with_name("nanxi-tune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nanxi_tune.cli"]


def help_time(repeats: int) -> tuple[float, bool]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cli() + ["--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    probe = subprocess.run([sys.executable, "-c", "import sys\nfrom nanxi_tune.cli.main import main\ntry:\n main(['--help'])\n"
                            "except SystemExit: pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"],
                           capture_output=True, text=True)
    return statistics.median(times), "NO-TORCH" in probe.stdout


def first_frame_tmux(repeats: int) -> list[float]:
    times = []
    for r in range(repeats):
        session = f"nanxi-ff-{os.getpid()}-{r}"
        with tempfile.TemporaryDirectory() as d:
            cmd = " ".join(cli() + ["--runs", d])
            t0 = time.perf_counter()
            subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                            f"cd {d} && TERM=xterm-256color {cmd}"], check=True)
            try:
                while time.perf_counter() - t0 < 60:
                    screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                            text=True).stdout
                    if "input_size" in screen:
                        times.append(time.perf_counter() - t0)
                        break
                    time.sleep(0.01)
            finally:
                subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    return times


FIRST_FRAME_CHILD = r"""
import asyncio, sys, time
t0 = time.perf_counter()
from pathlib import Path
from nanxi_tune.tui.app import NanxiTuneApp
async def main():
    app = NanxiTuneApp(preset="demo", runs_root=Path(sys.argv[1]))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        print(f"FIRST {time.perf_counter() - t0:.4f}")
asyncio.run(main())
"""


def first_frame_headless(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", FIRST_FRAME_CHILD, d], capture_output=True, text=True)
            wall = time.perf_counter() - t
            if "FIRST" in out.stdout:
                interp = wall - float(out.stdout.split("FIRST")[1].split()[0])  # interpreter start-up share
                times.append(float(out.stdout.split("FIRST")[1].split()[0]) + max(0.0, min(interp, 0.1)))
    return times


RSS_CHILD = r"""
import asyncio, gc, sys, threading, time
from pathlib import Path
import psutil
from nanxi_tune.engine import config as C
from nanxi_tune.engine.run.events import StepMetrics
from nanxi_tune.tui.app import NanxiTuneApp

N = int(sys.argv[2])
proc = psutil.Process()

async def main():
    app = NanxiTuneApp(preset="demo", runs_root=Path(sys.argv[1]))
    async with app.run_test(size=(160, 48)) as pilot:
        run_dir = Path(sys.argv[1]) / "fed"
        run_dir.mkdir(parents=True)
        C.save(C.load_preset("demo"), run_dir / "config.toml")
        while not (app.query("#mon") and app.query("#runs-table")):  # panes mount lazily after the first frame
            await pilot.pause(0.05)
        # open the (empty, trainer-less) run: its session's bridge is the real path to the monitor
        app.open_run(run_dir)
        while not (app.session and app.session.ended):
            await pilot.pause(0.05)
        await pilot.pause(0.6)
        bridge = app.session.bridge
        gc.collect()
        rss0 = proc.memory_info().rss
        peak = [rss0]
        def produce():
            t = time.time()
            for i in range(1, N + 1):
                f = 1.0 / (1 + i * 1e-4)
                bridge(StepMetrics(step=i, epoch=i // 1000, time=t + i * 0.01, loss=3 * f, loss_map=2 * f,
                                   loss_offset=0.2 * f, loss_shape=0.8 * f, lr=1e-3, grad_norm=1.0 + f,
                                   s_map=0.0, s_offset=0.0, s_shape=0.0, images_per_s=500.0, ema_l2=0.1,
                                   total_steps=N))
                if i % 50000 == 0:
                    peak.append(proc.memory_info().rss)
        t = time.perf_counter()
        await asyncio.to_thread(produce)
        for _ in range(50):  # let the UI drain what is still buffered and repaint
            await pilot.pause(0.05)
            app._drain()
            if not bridge._train:
                break
        app.monitor.redraw_plots(force=True)
        await pilot.pause(0.6)
        elapsed = time.perf_counter() - t
        gc.collect()
        rss1 = proc.memory_info().rss
        peak.append(rss1)
        print(f"RSS {rss0} {rss1} {max(peak)} {elapsed:.2f} {app.monitor.step}")

asyncio.run(main())
"""


def rss_growth(steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, d, str(steps)], capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RSS ")), None)
    if line is None:
        raise RuntimeError(f"TUI memory probe failed:\n{(out.stdout + out.stderr)[-3000:]}")
    rss0, rss1, peak, elapsed, shown = line.split()[1:]
    return {"before": int(rss0), "after": int(rss1), "peak": int(peak), "seconds": float(elapsed), "shown": int(shown)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1_000_000, help="logged steps fed to the monitor (0 = skip)")
    ap.add_argument("--skip-frame", action="store_true")
    a = ap.parse_args(argv)

    t, no_torch = help_time(a.repeats)
    print(f"nanxi-tune --help: median {t:.3f} s over {a.repeats} runs; imports torch: {'no' if no_torch else 'YES'}")
    print(f"help time: {t:.3f} s (target <= 0.5 s)")

    if not a.skip_frame:
        how = "tmux 80x24" if shutil.which("tmux") else "textual headless driver"
        times = first_frame_tmux(min(a.repeats, 3)) if shutil.which("tmux") else first_frame_headless(min(a.repeats, 3))
        if times:
            print(f"first frame ({how}): runs {', '.join(f'{x:.2f}' for x in times)} s")
            print(f"first frame time: {statistics.median(times):.3f} s (target <= 1.5 s)")
        else:
            print("first frame time: n/a (the first screen never appeared)")

    if a.steps:
        r = rss_growth(a.steps)
        mb = (r["after"] - r["before"]) / 2**20
        print(f"TUI monitor fed {a.steps} logged steps in {r['seconds']:.1f} s (showing step {r['shown']}): RSS "
              f"{r['before'] / 2**20:.0f} → {r['after'] / 2**20:.0f} MB, peak {r['peak'] / 2**20:.0f} MB")
        print(f"TUI RSS growth for {a.steps} steps: {mb:.1f} MB (target <= 50 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
