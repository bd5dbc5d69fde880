"""Study scaling and crash-resume: trials per hour of a seven-stars study with 1 vs 2 CPU workers (and 1 vs N
GPUs where there are several), and a 2-worker study whose owner is killed with SIGKILL mid-way, then resumed,
against the uninterrupted one.

The study: a 7-trial seven-stars sweep of train.base_lr from --start on the demo preset shrunk like
bench/sweep.py (64 px, 64 synthetic train images, width 8) with --steps steps a trial (the default, 300, makes a
trial roughly 10–20 s on a 2-core CPU, a trial process's start included).

  (a) 1 worker:  ``Sweep.run(workers=1)`` — one trial process at a time, torch threads = every core.
  (b) 2 workers: ``Sweep.run(workers=2)`` — two trial processes at once, the cores shared out between them.
      Printed: wall time, trials per hour of each, and the ratio (b)/(a) — what a second worker buys on this CPU
      (process starts and evaluations overlap; the training steps share the cores).
  (GPU) where CUDA has several GPUs: the same study with train.device=auto on cuda:0 alone vs one trial per GPU
      (``devices=[...]``), trials per hour and the ratio.
  (c) the (b) study again from the shell, ``python -m nanxi_tune.cli --runs DIR sweep … --workers 2``; its owner
      is killed with SIGKILL once ≥ 2 trials finished and another trains; the trial processes stop with a
      checkpoint (they die with their owner: SIGTERM); then ``python -m nanxi_tune.cli resume FOLDER --workers 2``.
      Printed: the resumed study's table next to the uninterrupted (b)'s — the same values and statuses, and each
      trial's mAP in both with whether they are equal. A bit-exact resume gives equal mAPs, the interrupted
      trials (marked "resumed") included. (b) and (c) run their trials with the same torch threads.

Not a test: the timings depend on the machine and on whatever else runs on it — run it alone.

    python bench/study_scaling.py [--steps 300] [--start 0.0001] [--size 64] [--no-kill] [--no-gpu] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import runctl, rundir
from nanxi_tune.engine.workflows import sweep as S
from nanxi_tune.engine.workflows.study import FOREVER, list_studies
from nanxi_tune.engine.workflows.study_owner import plan_slots

KEY = "train.base_lr"


def sets(size: int, device: str) -> list[str]:
    """The demo preset shrunk like bench/sweep.py, as the CLI's --set arguments."""
    return [f"preprocess.input_size={size}", "data.synthetic_train=64", "data.synthetic_val=16", "data.batch_size=8",
            "backbone.width=8", "head.channels=16", "eval.online=false", f"train.device={device}"]


def say(*parts) -> None:
    print(*parts, flush=True)


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.6f}"


def timed(folder: Path, cfg: C.Config, values: list[float], steps: int, label: str, **where) -> tuple[S.Sweep, float]:
    """A fresh study in ``folder``, its owner here; wall seconds from creating it to its end."""
    t0 = time.perf_counter()
    sw = S.Sweep(folder, cfg, KEY, values, trial_steps=steps)
    slots = plan_slots(sw.spec, where.get("workers"), where.get("devices"))
    state = sw.run(**where)
    dt = time.perf_counter() - t0
    rows = sw.results
    per = sum(r.seconds for r in rows) / max(1, len(rows))
    done = sum(r.status in ("finished", "failed") for r in rows)
    where_text = ", ".join(f"{s.device}" + (f" ×{s.threads} threads" if s.threads else "") for s in slots)
    say(f"  {label:<22} {dt:7.1f} s  {done / dt * 3600:7.1f} trials/h  ({state}; {len(slots)} at once: "
        f"{where_text}; a trial {per:.1f} s of training+eval inside its process; best {KEY} = "
        f"{S.value_name(sw.best_value()) if sw.best_value() else '—'})")
    if state != "finished" or done != len(values):
        raise SystemExit(f"{label}: the study ended {state} with {done}/{len(values)} trials; see {folder}")
    return sw, dt


def resumed(run_dir: str) -> bool:
    return any(str(e.get("message", "")).startswith("resumed from") for e in rundir.read_events(run_dir))


def wait(cond, timeout: float, what: str, step: float = 0.2):
    end = time.monotonic() + timeout
    while not (got := cond()):
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)
    return got


def killed_and_resumed(tmp: Path, size: int, start: float, steps: int, reference: S.Sweep) -> None:
    runs = tmp / "runs-kill"
    env = {**os.environ}
    cli = [sys.executable, "-m", "nanxi_tune.cli"]
    argv = cli + ["--runs", str(runs), "sweep", "--preset", "demo", "--param", KEY, "--start", repr(start),
                  "--trial-steps", str(steps), "--workers", "2", "--set", *sets(size, "cpu")]
    t0 = time.perf_counter()
    with open(tmp / "kill-owner.log", "wb") as log:  # the child keeps its own copy of the descriptor
        owner = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    wait(lambda: list_studies(runs) and runctl.status(list_studies(runs)[0]).alive or owner.poll() is not None, 120,
         "the study's owner")
    if owner.poll() is not None:
        raise SystemExit(f"(c): the owner exited at once ({owner.returncode}); see {tmp / 'kill-owner.log'}")
    (folder,) = list_studies(runs)
    enough = max(2, steps // 5)

    def moment():
        if owner.poll() is not None:
            return "ended"
        rows = S.load(folder).results
        fin = [r for r in rows if r.status == "finished"]
        run = [r for r in rows if r.status == "running" and r.steps >= enough]
        return rows if len(fin) >= 2 and run else None

    rows = wait(moment, 3600, "two finished trials and one training")
    if rows == "ended":
        raise SystemExit(f"(c): the study ended before it could be killed ({owner.returncode}); more --steps")
    info = runctl.read_owner(folder)
    assert info is not None and info.pid == owner.pid, (info, owner.pid)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    killed_at = time.perf_counter() - t0
    live = [r for r in rows if r.status == "running"]
    say(f"  SIGKILL to the owner (pid {owner.pid}) at {killed_at:.1f} s: "
        + ", ".join(f"{S.value_name(r.value)} {r.status}" + (f" at step {r.steps}" if r.status == "running" else "")
                    for r in rows))
    for r in live:  # the trial processes die with their owner, each with a checkpoint
        wait(lambda r=r: not runctl.status(r.run_dir).alive, 300, f"trial {S.value_name(r.value)} to stop")
    after = S.load(folder).results
    say("  after the kill, trial processes ended: "
        + ", ".join(f"{S.value_name(r.value)} {r.status}" + (f" at step {r.steps}" if r.status == "stopped" else "")
                    for r in after) + f"; study {runctl.status(folder).state.value}")
    t1 = time.perf_counter()
    res = subprocess.run(cli + ["resume", str(folder), "--workers", "2"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, env=env, check=False)
    say(f"  resume --workers 2: exit {res.returncode} after {time.perf_counter() - t1:.1f} s "
        f"(kill + resume wall {killed_at + time.perf_counter() - t1:.1f} s)")
    if res.returncode != 0:
        say(res.stdout[-2000:], res.stderr[-2000:])

    mine = {r.value: r for r in S.load(folder).results}
    ref = {r.value: r for r in reference.results}
    say(f"\n  {'value':>8} | {'uninterrupted (b)':<27} | {'killed + resumed (c)':<36} | mAP equal")
    same_values = sorted(mine) == sorted(ref)
    all_equal = same_values
    for v in sorted(set(mine) | set(ref)):
        a, b = ref.get(v), mine.get(v)
        eq = a is not None and b is not None and a.status == b.status and a.mAP == b.mAP
        all_equal &= eq
        note = " resumed" if b is not None and b.run_dir and resumed(b.run_dir) else ""
        left = f"{a.status} mAP {fmt(a.mAP)}" if a else "(absent)"
        right = f"{b.status} mAP {fmt(b.mAP)}{note}" if b else "(absent)"
        say(f"  {S.value_name(v):>8} | {left:<27} | {right:<36} | {'yes' if eq else 'NO'}")
    statuses = [r.status for _, r in sorted(mine.items())] == [r.status for _, r in sorted(ref.items())]
    say(f"  same values: {'yes' if same_values else 'NO'}; same statuses: {'yes' if statuses else 'NO'}; "
        f"every mAP equal (bit-exact resume): {'yes' if all_equal else 'NO'}; "
        f"resumed trials: {sum(resumed(r.run_dir) for r in mine.values())}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="steps a trial (default 300: ~10–20 s a trial)")
    ap.add_argument("--start", type=float, default=0.0001)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--no-kill", action="store_true", help="skip (c), the SIGKILL + resume study")
    ap.add_argument("--no-gpu", action="store_true", help="skip 1 vs N GPUs")
    ap.add_argument("--keep", action="store_true", help="keep the study folders (default: removed)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-study-"))
    os.environ.setdefault("NANXI_TUNE_CACHE", str(tmp / "cache"))  # the trial processes inherit it
    values = S.window(a.start)
    cfg = C.with_updates(C.load_preset("demo"), C.parse_sets(sets(a.size, "cpu")))
    from nanxi_tune.engine.train.trainer import Trainer

    Trainer(C.with_updates(cfg, {"train.max_steps": 1, "eval.interval": FOREVER}), tmp / "warmup").run()  # data cache
    say(f"7-trial seven-stars study of {KEY} ({', '.join(S.value_name(v) for v in values)}), {a.steps} steps a "
        f"trial at {a.size} px, {os.cpu_count()} CPU cores")
    try:
        _, one = timed(tmp / "workers-1", cfg, values, a.steps, "(a) 1 worker", workers=1)
        two_sw, two = timed(tmp / "workers-2", cfg, values, a.steps, "(b) 2 workers", workers=2)
        say(f"  trials/h ratio 2 workers / 1 worker = {one / two:.3f}")
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > 1 and not a.no_gpu:
            gcfg = C.with_updates(cfg, {"train.device": "auto"})
            _, g1 = timed(tmp / "gpu-1", gcfg, values, a.steps, "(GPU) cuda:0 alone", devices=["cuda:0"])
            _, gn = timed(tmp / f"gpu-{gpus}", gcfg, values, a.steps, f"(GPU) {gpus} GPUs",
                          devices=[f"cuda:{i}" for i in range(gpus)])
            say(f"  trials/h ratio {gpus} GPUs / 1 GPU = {g1 / gn:.3f}")
        elif not a.no_gpu:
            say(f"  (1 vs N GPUs skipped: {gpus} CUDA device(s))")
        if not a.no_kill:
            say("\n(c) the 2-worker study from the shell, its owner killed with SIGKILL, then resumed")
            killed_and_resumed(tmp, a.size, a.start, a.steps, two_sw)
    finally:
        if a.keep:
            say(f"\nfolders kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
