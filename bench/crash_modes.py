"""The crash harness's attacks other than kill -9 (``crash_harness.py --mode …``); each case must end with the run
resumable and its record and weights equal to a run that was never attacked.

* ``hostile-control``: while the run trains, one hostile thing lands in its ``control/`` folder (a command nested
  100 000 deep, a directory, a FIFO, a symlink to /dev/zero, a stray ``evil.json``, a 100 MB command, binary
  garbage, a command with a 100 kB sender); the run must keep training, answer ``ctl stop`` (exit 3, checkpoint
  first) and resume. One run takes every case in turn, then finishes.
* ``full-disk``: for every writer of the run folder (metrics.jsonl, events.jsonl, the checkpoint, config.toml under
  a live edit, owner.json, journal.md, and all of them at once) the disk fills at a seeded step and stays full; the
  run must end with a message naming the file and what to do (or, for what is not the record, go on), leave no
  temp file, then — the disk freed — resume to the end.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import random
import subprocess
import time
from pathlib import Path

HOSTILE = ("deep", "directory", "fifo", "dev-zero", "stray", "huge", "garbage", "long-sender")
WRITERS = ("metrics.jsonl", "events.jsonl", "checkpoint", "config.toml", "owner.json", "journal.md", "everything")


def _plant(kind: str, control: Path) -> None:
    name = control / f"{time.time_ns()}-{'cd' * 6}.json"
    if kind == "deep":
        name.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "directory":
        name.mkdir()
    elif kind == "fifo":
        os.mkfifo(name)
    elif kind == "dev-zero":
        name.symlink_to("/dev/zero")
    elif kind == "stray":
        (control / "evil.json").write_text(json.dumps({"op": "stop", "id": "evil"}))
    elif kind == "huge":
        with open(name, "wb") as f:  # sparse: 100 MB to a reader, nothing on the disk
            f.truncate(100 * 2**20)
    elif kind == "garbage":
        name.write_bytes(os.urandom(4096))
    elif kind == "long-sender":
        name.write_text(json.dumps({"op": "pause", "id": "cd" * 6, "sender": "x" * 100_000, "updates": {}}))


def hostile_control(h, log=print) -> dict:
    """Each hostile item in a live run's control/ folder, then `ctl stop`, then resume; the last resume finishes."""
    from crash_harness import cli

    ref, ref_proc = h.reference()
    run = h.root / "hostile"
    p = h.launch(h.train_args(run))
    problems, held = [], 0
    for kind in HOSTILE:
        seen = h.max_train_step(run)
        deadline = time.monotonic() + 120
        while h.max_train_step(run) < seen + 2 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if p.poll() is not None:
            problems.append(f"{kind}: the run ended (rc {p.returncode}) before the hostile item; see proc-{h.n:03d}.log")
            break
        _plant(kind, run / "control")
        time.sleep(1.0)  # a few step boundaries with the item in the folder
        alive = p.poll() is None
        r = subprocess.run(cli() + ["ctl", str(run), "stop"], env=h.env, capture_output=True, text=True,
                           cwd=h.root, timeout=120)
        try:
            rc = p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "hung"
        ok = alive and r.returncode == 0 and rc == 3
        held += ok
        if not ok:
            problems.append(f"{kind}: alive {alive}, ctl stop rc {r.returncode} ({(r.stdout + r.stderr)[-200:]}), "
                            f"run rc {rc}")
        log(f"{kind:12s}: trained on {'yes' if alive else 'NO'}, ctl stop -> exit {rc}, "
            f"rejected/ holds {len(os.listdir(run / 'control' / 'rejected')) if (run / 'control' / 'rejected').exists() else 0}")
        p = h.launch(["resume", str(run), "--quiet"])
    if p.wait() != 0:
        problems.append(f"the last resume exited {p.returncode}; see proc-{h.n:03d}.log")
    if ref_proc.wait() != 0:
        raise SystemExit(f"the reference run failed (rc {ref_proc.returncode}); see {h.root}")
    result = h.compare(ref, run, problems)
    result.update(cases=len(HOSTILE), held=held, problems=problems)
    return result


class FullDisk:
    """From ``arm()`` on, every write to a file of the run folder whose name ``hits`` ENOSPC, as a full disk would;
    ``free()`` ends it. Patches os.write (the record) and open / io.open (checkpoints, config.toml, owner.json)."""

    def __init__(self, run: Path, writer: str):
        self.run, self.writer, self.armed, self.refused = Path(run), writer, False, 0
        self._os_write, self._open, self._io_open = os.write, builtins.open, io.open

    def hits(self, path: str) -> bool:
        p = Path(path)
        if not self.armed or self.run not in p.parents:
            return False
        name = p.name
        if self.writer == "everything":
            return True
        if self.writer == "checkpoint":
            return name.endswith(".pt") or ".pt.tmp" in name
        return name == self.writer or name.startswith(f".{self.writer}") or name.startswith(f"{self.writer}.")

    def __enter__(self) -> "FullDisk":
        disk = self

        def write(fd, data):
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if disk.hits(path):
                disk.refused += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            return disk._os_write(fd, data)

        def opener(real):
            def open_(file, mode="r", *a, **kw):
                f = real(file, mode, *a, **kw)
                if isinstance(file, (str, Path)) and any(c in mode for c in "wax") and disk.hits(str(file)):
                    return _Full(f, disk)
                return f
            return open_

        os.write, builtins.open, io.open = write, opener(self._open), opener(self._io_open)
        return self

    def arm(self) -> None:
        self.armed = True

    def free(self) -> None:
        self.armed = False

    def __exit__(self, *exc) -> None:
        os.write, builtins.open, io.open = self._os_write, self._open, self._io_open


class _Full:
    """A file whose writes fail as on a full disk (the file itself was made: a real disk does that too)."""

    def __init__(self, f, disk: FullDisk):
        self._f, self._disk = f, disk

    def write(self, data):
        if self._disk.armed:
            self._disk.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def full_disk(h, log=print) -> dict:
    """Each writer in turn: fill the disk under it at a seeded step, check the run's answer, free it, resume."""
    import torch

    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.run import runctl
    from nanxi_tune.engine.train.trainer import Trainer

    torch.set_num_threads(1)  # the reference is a one-thread process: the same arithmetic
    ref, ref_proc = h.reference()
    if ref_proc.wait() != 0:
        raise SystemExit(f"the reference run failed (rc {ref_proc.returncode}); see {h.root}")
    cfg = C.with_updates(C.load_preset("demo"), C.parse_sets(h.sets))
    rng = random.Random(h.rng.random())
    problems, held, rows = [], 0, []
    for writer in WRITERS:
        run = h.root / f"full-{writer}"
        at = rng.randrange(3, h.total - 4)
        events = []
        with FullDisk(run, writer) as disk:
            def listen(ev):
                events.append(ev)
                if ev.kind == "step" and ev.step == at and not disk.armed:
                    if writer == "config.toml":  # the live edit is what writes config.toml mid-run
                        runctl.send(run, runctl.Op.SET, {"train.base_lr": cfg.train.base_lr / 2}, sender="harness")
                    disk.arm()

            state = Trainer(cfg, run, listen).run()
            disk.free()
        errors = [e for e in events if e.kind == "error"]
        said = (errors[-1].error + " " + errors[-1].hint) if errors else ""
        temps = [p.name for p in run.rglob("*") if ".tmp" in p.name]
        expect_fail = writer in ("metrics.jsonl", "events.jsonl", "checkpoint", "everything")
        if expect_fail:
            named = writer == "everything" or writer in said or (writer == "checkpoint" and ".pt" in said)
            answered = state == "failed" and "free disk space" in said.lower() and "Traceback" not in said and named
        else:
            refused = [e for e in events if e.kind == "ack" and not e.applied and "no space left" in e.message]
            answered = state == "finished" and (writer != "config.toml" or bool(refused))
        resumed = "finished" if state == "finished" else Trainer.resume(run, lambda e: None).run()
        result = h.compare(ref, run, [])
        ok = answered and not temps and resumed == "finished" and all(result.values())
        held += ok
        rows.append((writer, at, disk.refused, state, resumed, result, temps))
        if not ok:
            problems.append(f"{writer}: state {state}, said {said[:160]!r}, temps {temps}, resumed {resumed}, "
                            f"compare {result}")
        log(f"{writer:14s} full from step {at:3d}: {disk.refused:3d} writes refused, run {state}"
            f"{' (' + said[:70] + '…)' if said else ''}; resumed -> {resumed}; record and weights equal: "
            f"{all(result.values())}; temp files {len(temps)}")
    return {"cases": len(WRITERS), "held": held, "problems": problems}
