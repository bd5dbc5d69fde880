"""kill -9 harness: SIGKILL a headless demo run at random moments, resume, repeat; the result must equal a
run that was never interrupted.

One run of ``nanxi-tune train --preset demo`` (a tiny config, a checkpoint every 2 steps) is killed
``--kills`` times with SIGKILL at seeded random moments:

* ``startup``   at a random time while Python imports torch and builds the data set,
* ``step``      after a random number of new steps, at a random moment inside the next one
                (mid forward/backward, mid metrics line, mid evaluation),
* ``checkpoint`` the instant a checkpoint temp file (``checkpoints/.last.pt.tmp-PID`` or the ring's)
                appears: the kill lands while a checkpoint is being written or linked.

After every kill the harness checks that each checkpoint file in ``checkpoints/`` loads with
``weights_only=True`` (writes are atomic, so no partial file may exist under a real name), notes the
step of ``last.pt``, then runs ``nanxi-tune resume RUN`` and checks that the resume started from
exactly that step. A run killed before its first checkpoint is resumed too: ``resume`` starts it again
from step 0 with its config.toml. Only a run killed before it wrote config.toml has nothing to resume:
``resume`` must refuse it with "saved no checkpoint yet", and the harness deletes the folder and starts
the run again (that is what a user would do; nothing was lost).

At the end (the last resume runs to completion) it checks:

* ``metrics.jsonl`` holds every train step exactly once and every evaluation exactly once, with the
  same losses / lr / grad norm as an uninterrupted run of the same config (resume trims lines logged
  after its checkpoint);
* ``checkpoints/last.pt`` model, EMA and optimizer state and every RNG state (python, numpy, torch, cuda)
  are bit-equal to the uninterrupted run's.

    .venv/bin/python bench/crash_harness.py --kills 50        # the issue's figure (~15 min on 2 CPU cores)
    .venv/bin/python bench/crash_harness.py --kills 10        # quick
    .venv/bin/python bench/crash_harness.py --mode hostile-control   # hostile files in control/ (crash_modes.py)
    .venv/bin/python bench/crash_harness.py --mode full-disk         # a full disk under every writer

Prints ``crash safety: N/N kills resumed exactly (target N/N)``; exit status 0 only when all held.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["preprocess.input_size=64", "data.synthetic_train=32", "data.synthetic_val=8", "data.batch_size=8",
        "backbone.width=8", "head.channels=16", "train.checkpoint_every=2", "eval.interval=2"]
COMPARE = ("step", "epoch", "loss", "loss_map", "loss_offset", "loss_shape", "lr", "grad_norm", "ema_l2",
           "s_map", "s_offset", "s_shape", "mAP", "AP50")
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


def cli() -> list[str]:
    script = Path(sys.executable).with_name("nanxi-tune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nanxi_tune.cli"]


def env(cache: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("NANXI_TUNE_CACHE", str(cache))
    e["OMP_NUM_THREADS"] = "1"  # a shared machine; the same in every process, so results stay comparable
    e["PYTHONUNBUFFERED"] = "1"
    return e


class Harness:
    def __init__(self, root: Path, total_steps: int, seed: int, log=print):
        self.root = Path(root)
        self.total = total_steps
        self.rng = random.Random(seed)
        self.log = log
        self.env = env(self.root / "cache")
        self.sets = TINY + [f"train.max_steps={total_steps}", f"train.seed={seed % 1000}"]
        self.n = 0  # processes launched (for log file names)

    # --- processes ---------------------------------------------------------------------------------
    def launch(self, args: list[str]) -> subprocess.Popen:
        self.n += 1
        out = open(self.root / f"proc-{self.n:03d}.log", "wb")
        return subprocess.Popen(cli() + args, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.root, start_new_session=True)

    def train_args(self, run: Path) -> list[str]:
        return ["train", "--preset", "demo", "--quiet", "--run-dir", str(run), "--set", *self.sets]

    def reference(self) -> tuple[Path, subprocess.Popen]:
        """The uninterrupted run, started alongside the killed one (one thread each)."""
        run = self.root / "reference"
        return run, self.launch(self.train_args(run))

    # --- observing a run ---------------------------------------------------------------------------
    @staticmethod
    def max_train_step(run: Path) -> int:
        from nanxi_tune.engine.run import rundir

        return max((m["step"] for m in rundir.read_metrics(run) if m.get("split") == "train"), default=0)

    @staticmethod
    def tmp_files(run: Path) -> list[str]:
        try:
            return [n for n in os.listdir(run / "checkpoints") if ".tmp-" in n]
        except FileNotFoundError:
            return []

    def wait_and_kill(self, p: subprocess.Popen, run: Path, start_step: int, ready) -> tuple[str, str]:
        """Kill ``p`` at a seeded random moment. Returns (mode, outcome) with outcome 'killed' or 'exited'.
        ``ready()`` says the process has loaded its checkpoint (and trimmed metrics.jsonl)."""
        mode = self.rng.choices(["startup", "step", "checkpoint"], weights=[1, 3, 2])[0]
        deadline = time.monotonic() + 300
        if mode == "startup":
            t_kill = time.monotonic() + self.rng.uniform(0.0, 4.0)
            while time.monotonic() < t_kill and p.poll() is None:
                time.sleep(0.005)
        elif mode == "step":
            while p.poll() is None and time.monotonic() < deadline and not ready():
                time.sleep(0.01)
            target = start_step + self.rng.randint(0, 2)
            seen_at = []
            while p.poll() is None and time.monotonic() < deadline:
                s = self.max_train_step(run)
                if not seen_at or s != seen_at[-1][0]:
                    seen_at.append((s, time.monotonic()))
                if s >= target:
                    break
                time.sleep(0.01)
            gaps = [b[1] - a[1] for a, b in zip(seen_at, seen_at[1:])] or [0.3]
            time.sleep(self.rng.uniform(0.0, min(gaps[-1], 3.0)))
        else:  # checkpoint: the instant a temp file shows up, at the 1st to 3rd checkpoint write of this process
            want, seen, present = self.rng.randint(1, 2), 0, bool(self.tmp_files(run))
            while p.poll() is None and time.monotonic() < deadline:
                now = bool(self.tmp_files(run))
                if now and not present:
                    seen += 1
                    if seen >= want:
                        break
                present = now
                time.sleep(0.0005)
        if p.poll() is not None:
            return mode, "exited"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return mode, "killed"

    @staticmethod
    def check_checkpoints(run: Path) -> tuple[int | None, int | None]:
        """Every checkpoint under a real name must load (weights_only). Returns (last.pt's step, the newest step of
        any complete checkpoint); None where there is none."""
        from nanxi_tune.engine.run import checkpoint as ck
        from nanxi_tune.engine.run import rundir

        folder = run / rundir.CHECKPOINTS
        steps = {}
        for path in sorted(folder.glob("*.pt")) if folder.exists() else []:
            steps[path.name] = int(ck.load(path)["step"])  # raises CheckpointError on a partial or unsafe file
        return steps.get("last.pt"), max(steps.values(), default=None)

    @staticmethod
    def resume_logs(run: Path) -> list[tuple[str, int]]:
        from nanxi_tune.engine.run import rundir

        out = []
        for e in rundir.read_events(run):
            m = RESUMED.search(e.get("message", "")) if e.get("kind") == "log" else None
            if m:
                out.append((m.group(1), int(m.group(2))))
        return out

    # --- the run ---------------------------------------------------------------------------------
    def run(self, kills: int) -> dict:
        t0 = time.monotonic()
        ref, ref_proc = self.reference()
        run = self.root / "killed"
        p = self.launch(self.train_args(run))
        expect: tuple[int, int] | None = None  # for a resume process: (resume logs before it, last.pt step)
        start_step, done, restarts, resumes_checked, modes = 0, 0, 0, 0, {}
        problems: list[str] = []
        bad_kills: set[int] = set()

        def check_resume() -> None:
            """A resume process that got as far as loading must have loaded last.pt at the expected step."""
            nonlocal resumes_checked
            if expect is None:
                return
            logs = self.resume_logs(run)
            if len(logs) > expect[0]:
                resumes_checked += 1
                path, step = logs[expect[0]]
                if step != expect[1] or not path.endswith("last.pt"):
                    bad_kills.add(done)
                    problems.append(f"kill {done}: resumed from {path} at step {step}, expected last.pt at "
                                    f"{expect[1]}")

        while True:
            ready = (lambda n=expect[0]: len(self.resume_logs(run)) > n) if expect else (lambda: True)
            mode, outcome = self.wait_and_kill(p, run, start_step, ready) if done < kills else ("", "final")
            if outcome == "final":
                p.wait()
            check_resume()
            if outcome != "killed":
                if p.returncode != 0:
                    bad_kills.add(done)
                    problems.append(f"process {self.n} exited with {p.returncode}; see proc-{self.n:03d}.log")
                elif done < kills:  # finished before all kills were spent: the run was too short
                    self.log(f"run finished after {done} kills (raise --steps for more)")
                break
            done += 1
            modes[mode] = modes.get(mode, 0) + 1
            try:
                last_step, newest = self.check_checkpoints(run)
            except Exception as err:  # noqa: BLE001 - a partial checkpoint under a real name
                bad_kills.add(done)
                problems.append(f"kill {done}: {err}")
                break
            if newest != last_step:
                bad_kills.add(done)
                problems.append(f"kill {done} ({mode}): a complete checkpoint at step {newest} is newer than last.pt "
                                f"(step {last_step}); resume would not start from the newest one")
            if last_step is None and (run / "config.toml").exists():  # before the first checkpoint
                restarts += 1
                start_step, expect = 0, None
                self.log(f"kill {done:3d} ({mode:10s}): no checkpoint yet -> resume starts it again from step 0")
                p = self.launch(["resume", str(run), "--quiet"])
                continue
            if last_step is None:  # killed before config.toml: nothing to resume
                r = subprocess.run(cli() + ["resume", str(run), "--quiet"], env=self.env, capture_output=True,
                                   text=True, cwd=self.root)
                said = " ".join((r.stdout + r.stderr).split())  # Rich wraps long lines
                if r.returncode == 0 or not ("saved no checkpoint yet" in said or "no such file" in said):
                    bad_kills.add(done)
                    problems.append(f"kill {done}: resume without a checkpoint did not refuse clearly: "
                                    f"rc {r.returncode} {said[-300:]}")
                shutil.rmtree(run, ignore_errors=True)
                restarts += 1
                start_step, expect = 0, None
                self.log(f"kill {done:3d} ({mode:10s}): no checkpoint yet -> started again")
                p = self.launch(self.train_args(run))
                continue
            self.log(f"kill {done:3d} ({mode:10s}): last.pt at step {last_step:4d} "
                     f"(metrics reached {self.max_train_step(run)}), resuming")
            start_step, expect = last_step, (len(self.resume_logs(run)), last_step)
            p = self.launch(["resume", str(run), "--quiet"])
        if p.poll() is None:
            p.wait()
        if ref_proc.wait() != 0:
            raise SystemExit(f"the uninterrupted reference run failed (rc {ref_proc.returncode}); see {self.root}")
        result = self.compare(ref, run, problems)
        final_ok = result["steps_once"] and result["metrics_equal"] and result["weights_equal"]
        result.update(kills=done, exact=done - len(bad_kills) if final_ok else 0, restarts=restarts,
                      resumes_checked=resumes_checked, modes=modes, problems=problems,
                      seconds=time.monotonic() - t0, leftover_tmp=len(self.tmp_files(run)))
        return result

    def compare(self, ref: Path, run: Path, problems: list[str]) -> dict:
        import torch

        from nanxi_tune.engine.run import checkpoint as ck
        from nanxi_tune.engine.run import rundir

        def rows(r: Path, split: str) -> list[tuple]:
            return [tuple(m.get(k) for k in COMPARE) for m in rundir.read_metrics(r) if m.get("split") == split]

        train_steps = [m["step"] for m in rundir.read_metrics(run) if m.get("split") == "train"]
        steps_once = train_steps == list(range(1, self.total + 1))
        if not steps_once:
            dup = sorted({s for s in train_steps if train_steps.count(s) > 1})
            missing = sorted(set(range(1, self.total + 1)) - set(train_steps))
            problems.append(f"metrics.jsonl train steps: duplicates {dup[:10]}, missing {missing[:10]}")
        metrics_equal = rows(ref, "train") == rows(run, "train") and rows(ref, "val") == rows(run, "val")
        if steps_once and not metrics_equal:
            problems.append("metrics.jsonl values differ from the uninterrupted run")

        def equal(a, b) -> bool:
            if isinstance(a, torch.Tensor):
                return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
            if isinstance(a, dict):
                return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
            if isinstance(a, (list, tuple)):
                return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
            return a == b

        a, b = ck.load(rundir.last_checkpoint(ref)), ck.load(rundir.last_checkpoint(run))
        weights_equal = {k: equal(a[k], b[k]) for k in ("model", "ema", "optimizer", "rng")}
        if not all(weights_equal.values()) or a["step"] != b["step"]:
            problems.append(f"final checkpoint differs from the uninterrupted run: {weights_equal}, "
                            f"steps {a['step']} vs {b['step']}")
        return {"steps_once": steps_once, "metrics_equal": metrics_equal, "weights_equal": all(weights_equal.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--steps", type=int, default=None, help="total steps of the run (default: 3 × kills + 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep the runs in this folder (default: a temp folder, removed)")
    ap.add_argument("--mode", choices=("kill", "hostile-control", "full-disk"), default="kill")
    a = ap.parse_args(argv)
    steps = a.steps or {"kill": 3 * a.kills + 8, "hostile-control": 400, "full-disk": 40}[a.mode]
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="nanxi-crash-"))
    root.mkdir(parents=True, exist_ok=True)
    if a.mode != "kill":
        return _attack(a.mode, root, steps, a)
    try:
        r = Harness(root, steps, a.seed).run(a.kills)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    ok = not r["problems"] and r["steps_once"] and r["metrics_equal"] and r["weights_equal"]
    print(f"kills by moment: {r['modes']}; {r['restarts']} before the first checkpoint (started again); "
          f"{r['resumes_checked']} resumes checked to load last.pt at its step; {r['seconds']:.0f} s; "
          f"checkpoint temp files left behind: {r['leftover_tmp']}")
    print(f"metrics.jsonl every step exactly once: {r['steps_once']}; values equal uninterrupted: {r['metrics_equal']}; "
          f"final model/EMA/optimizer/RNG states bit-equal: {r['weights_equal']}")
    for p in r["problems"]:
        print(f"PROBLEM: {p}")
    print(f"crash safety: {r['exact']}/{r['kills']} kills resumed exactly (target {a.kills}/{a.kills})")
    return 0 if ok and r["kills"] == a.kills else 1


def _attack(mode: str, root: Path, steps: int, a) -> int:
    import crash_modes

    try:
        h = Harness(root, steps, a.seed)
        r = (crash_modes.hostile_control if mode == "hostile-control" else crash_modes.full_disk)(h)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    for p in r["problems"]:
        print(f"PROBLEM: {p}")
    print(f"{mode}: {r['held']}/{r['cases']} cases ended resumable with nothing recorded lost "
          f"(target {r['cases']}/{r['cases']})")
    return 0 if r["held"] == r["cases"] and not r["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
