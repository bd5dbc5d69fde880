"""bench/gpu_check.py runs its whole path (coco-640 model, on-device synthetic batch, build_targets, step, EMA,
figures) on the CPU with --cpu-smoke, so the one-command GPU check is known to work before a GPU is at hand;
and bench/run_all.py reads the figures its benchmarks print."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import REPO


def test_gpu_check_cpu_smoke():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu-smoke"], capture_output=True,
                       text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    for key in ("images/s:", "step time:", "peak memory:", "GPU busy:", "coco-640", "128 px, batch 2"):
        assert key in r.stdout, r.stdout


def test_run_all_parses_every_benchmark_line():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "bench" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = """train efficiency trainer/bare: 0.985 (target >= 0.97)
targets vectorised vs loop: 25.3x (target >= 20x)
targets share of a training step: 7.20 % (target < 5 %)
throughput headless 100.0 img/s, attached 98.0 img/s, ratio 0.980 (target >= 0.97)
key-to-paint latency while training: n=40 p50 20.1 ms, p95 30.5 ms, max 200.0 ms (target p95 <= 100 ms)
  overhead per trial = 3.61 s (target ≤ 6 s: a trial process's start, the study's bookkeeping)
crash safety: 9/10 kills resumed exactly (target 10/10)
help time: 0.194 s (target <= 0.5 s)
targets (precision ≥ 0.95, recall ≥ 0.9, delay ≤ 1 eval interval): NOT MET
a line without a target: 3.0"""
    rows = {r["figure"]: r for r in mod.parse("x.py", out)}
    assert len(rows) == 9
    assert rows["x targets"]["value"] == "NOT MET" and rows["x targets"]["pass"] is False
    assert rows["train efficiency trainer/bare"]["pass"] and rows["train efficiency trainer/bare"]["value"] == 0.985
    assert rows["targets vectorised vs loop"]["value"] == 25.3 and rows["targets vectorised vs loop"]["pass"]
    assert not rows["targets share of a training step"]["pass"]
    assert rows["TUI attached / headless throughput"]["value"] == 0.98
    assert rows["TUI key-to-paint latency p95 (ms)"]["value"] == 30.5  # the p95, not the max
    assert rows["sweep cost per trial process (s)"]["pass"]
    assert rows["crash safety"]["value"] == "9/10" and not rows["crash safety"]["pass"]
    assert rows["help time"]["target"] == "<= 0.5 s"


def test_targets_bench_small_run_checks_and_reports():
    """bench/targets.py at a toy size: it checks vectorised == loop itself, then prints every figure."""
    r = subprocess.run([sys.executable, str(REPO / "bench" / "targets.py"), "--device", "cpu", "--size", "128",
                        "--batch", "2", "--classes", "4", "--repeats", "1", "--step-size", "64", "--step-batch", "2"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    for key in ("targets vectorised vs loop:", "focal loss forward + backward:", "targets share of a training step:"):
        assert key in r.stdout, r.stdout
