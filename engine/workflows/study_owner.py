"""A study's owner: the one process that holds a study folder (a run's lock and heartbeat, engine.run.runctl),
answers its control channel, and hands trials out to trial processes — one per GPU, or ``workers`` sharing the
CPU's cores — until every trial has a result.

Each trial process (``nanxi-tune study trial FOLDER N``) dies with its owner (Linux: PR_SET_PDEATHSIG → SIGTERM,
so it stops with a checkpoint), and a trial left RUNNING with no live process is handed out again by the next
owner (``nanxi-tune resume STUDY``), resuming from its checkpoint. Pause and stop go to the trials through the
study's control state in the storage (engine.workflows.study_worker follows it), so trials on other machines obey too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import code_version
from ..run import rundir, runctl
from ..run import control
from ..run.job import OwnerRecord
from ..run.events import Callback, CommandAck, Error, Event, RunState, null_callback
from ..run.runctl import Command, Op
from .study import STUDY_KEYS, Study, StudyError, StudySpec, value_name
from .study_results import best_row, next_window_of, rows
from .sweep_report import write_journal

TICK_S = 0.2
MAX_CRASHES = 2  # a trial whose process crashes this often is failed, not handed out again
PAUSE_WAIT_S = 20.0  # a pause is acknowledged once every trial here holds (or after this long)


@dataclass(frozen=True)
class StudyProgress(Event):
    """A study's own progress: a trial handed out or done, a window slid."""
    kind = "study"
    what: str  # trial_started, trial_done, slid
    number: int
    value: float
    message: str
    result: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


@dataclass
class Slot:
    device: str | None  # None: the config's own device
    threads: int | None  # torch threads of a CPU worker
    trial: int | None = None  # the trial number it runs
    process: subprocess.Popen | None = None


def plan_slots(spec: StudySpec, workers: int | None, devices: list[str] | None) -> list[Slot]:
    """Where trials run at once: the given devices; else every visible GPU; else ``workers`` CPU workers with the
    cores shared out (torch threads per worker)."""
    devices = list(devices if devices is not None else spec.devices)
    if devices:
        return [Slot(d, None) for d in devices]
    n = max(1, workers or spec.workers or 1)
    if spec.cfg.train.device != "cpu":
        import torch

        if torch.cuda.is_available() and spec.cfg.train.device in ("auto", "cuda"):
            return [Slot(f"cuda:{i}", None) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available():  # a fixed cuda:N: trials take turns on it
            return [Slot(None, None)]
    return [Slot("cpu", max(1, (os.cpu_count() or 1) // n)) for _ in range(n)]


def parse_devices(text: str) -> list[str]:
    """"0,1,2" → cuda:0, cuda:1, cuda:2; "cpu" / "cuda:3" pass as they are."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        out.append(f"cuda:{part}" if part.isdigit() else part)
    if not out:
        raise StudyError(f"--devices {text!r}: give device indices such as 0,1,2,3")
    return out


class StudyOwner(OwnerRecord):
    def __init__(self, folder: Path | str, workers: int | None = None, devices: list[str] | None = None,
                 callback: Callback = null_callback):
        self.folder = Path(folder)
        self.study = Study.open(self.folder)
        spec = self.study.spec
        if workers or devices is not None:  # remembered for a resume
            spec = replace(spec, workers=workers or spec.workers, devices=list(devices or []))
            self.study.set_spec(spec)
        self.slots = plan_slots(spec, workers, devices)
        self.callback = callback
        self.state = RunState.STARTING
        self._stop = threading.Event()
        self.owner: runctl.RunOwner | None = None
        self.recorder = None
        self.stop_reason = ""  # why the owner stopped itself (not a stop command or signal)

    def request_stop(self) -> None:
        """Any thread (a signal handler): stop every trial with a checkpoint, then end."""
        self._stop.set()

    # --- the run ------------------------------------------------------------------------------------------------
    def run(self) -> str:
        """Hand out trials until every one has a result (``finished``) or a stop (``stopped``). Raises
        runctl.RunBusy when another live owner holds the folder."""
        from ..run.recorder import Recorder

        self.owner = runctl.RunOwner.acquire(self.folder)
        self.recorder = Recorder(self.folder)
        self.inbox = control.Inbox(self.folder)
        try:
            self._set_state(RunState.RUNNING, "started")
            self.study.set_control("running")
            return self._loop().value
        except Exception as err:  # noqa: BLE001 - a study ends with a recorded reason, whatever broke
            self._emit(Error(f"{type(err).__name__}: {err}", "the finished trials are kept; resume the study: "
                             f"nanxi-tune resume {self.folder}", self._done()))
            self._halt_trials()
            self._set_state(RunState.FAILED, str(err))
            return self.state.value
        finally:
            try:
                write_journal(self.folder)
            except Exception:  # noqa: BLE001 - the journal is a courtesy
                pass
            self.recorder.close()
            self.owner.release()

    def _loop(self) -> RunState:
        while True:
            if self._stop.is_set() and self.state != RunState.STOPPING:
                self._begin_stop("stop signal")
            self._apply_commands()
            self._reap()
            busy = [s for s in self.slots if s.process is not None]
            if self.state == RunState.STOPPING:
                if not busy:
                    self.study.set_control("stopped")
                    self._set_state(RunState.STOPPED, (f"{self.stop_reason}: " if self.stop_reason else "")
                                    + "stopped; resume with: nanxi-tune resume " + str(self.folder))
                    return self.state
            elif self.state == RunState.RUNNING:
                self._launch()
                if not any(s.process for s in self.slots) and self._all_told():
                    if self._slide():
                        continue
                    self.study.set_control("finished")
                    self._set_state(RunState.FINISHED, self._best_text())
                    return self.state
            self.owner.update(step=self._done())
            time.sleep(TICK_S)

    # --- trials ---------------------------------------------------------------------------------------------------
    def _launch(self) -> None:
        free = [s for s in self.slots if s.process is None]
        if not free:
            return
        mine = {s.trial for s in self.slots if s.trial is not None}
        queue = self.study.orphans(mine)
        if (queue or self.study.has_waiting()) and (why := code_version.changed()):
            self.stop_reason = why
            self._begin_stop(why)  # resumed, the owner and its trials run the new code alike
            return
        for slot in free:
            trial = queue.pop(0) if queue else self.study.claim()
            if trial is None:
                return
            self._spawn(slot, trial)

    def _spawn(self, slot: Slot, trial) -> None:
        run_dir = self.folder / trial.user_attrs["run"]
        run_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "nanxi_tune.cli", "study", "trial", str(self.folder), str(trial.number)]
        if slot.device:
            argv += ["--device", slot.device]
        if slot.threads:
            argv += ["--threads", str(slot.threads)]
        with open(run_dir / rundir.STDOUT, "ab") as out:
            slot.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            preexec_fn=_die_with_parent)
        slot.trial = trial.number
        value = float(trial.user_attrs["value"])
        again = " (resumed)" if trial.user_attrs.get("status") in ("stopped", "running") else ""
        spec = self.study.spec
        self._emit(StudyProgress("trial_started", trial.number, value, f"{spec.key} = {spec.label(value)} on "
                                 f"{slot.device or 'its device'}{again}"))

    def _reap(self) -> None:
        for slot in self.slots:
            if slot.process is None or slot.process.poll() is None:
                continue
            t = self.study.trial(slot.trial)
            value = float(t.user_attrs["value"])
            status = t.user_attrs.get("status", "?")
            if slot.process.returncode not in (0, 3) and t.state.name == "RUNNING" and status == "running":
                status = self._crashed(t, slot.process.returncode)
            self._emit(StudyProgress("trial_done", t.number, value, f"{self.study.spec.key} = "
                                     f"{self.study.spec.label(value)}: "
                                     f"{status}", {k: v for k, v in t.user_attrs.items() if k != "run_dir"}))
            slot.process, slot.trial = None, None

    def _crashed(self, trial, code: int) -> str:
        """A trial process that died without a word (the OOM killer, a segfault): handed out again once — it
        resumes from its checkpoint —, failed the second time, so a trial that always crashes never loops."""
        log = self.folder / trial.user_attrs["run"] / rundir.STDOUT
        crashes = int(trial.user_attrs.get("crashes", 0)) + 1
        self.study.mark(trial, crashes=crashes)
        if crashes < MAX_CRASHES:
            return f"crashed (exit {code}; see {log}); handed out again"
        error = f"its process crashed {crashes} times (last exit {code}); see {log}"
        self.study.mark(trial, status="failed", error=error)
        self.study.tell(trial, "failed", None)
        return f"failed: {error}"

    def _all_told(self) -> bool:
        return all(t.state.is_finished() for t in self.study.trials())

    def _done(self) -> int:
        return sum(t.state.is_finished() for t in self.study.trials())

    def _slide(self) -> bool:
        """The notes: when the best sits at the window's edge, slide the window (while slides are left)."""
        spec = self.study.spec
        if spec.slides <= 0:
            return False
        nxt = next_window_of(rows(self.study))
        if not nxt:
            return False
        added = self.study.enqueue(nxt)
        self.study.set_spec(replace(spec, slides=spec.slides - 1, values=spec.values + added))
        if not added:
            return False
        self._emit(StudyProgress("slid", -1, added[0], f"best at the window's edge: slid to "
                                 f"{', '.join(value_name(v) for v in added)}"))
        return True

    def _best_text(self) -> str:
        best = best_row(rows(self.study))
        spec = self.study.spec
        return f"best {spec.key} = {spec.label(best.value)} mAP {best.mAP:.4f}" if best else \
            "no trial finished"

    # --- control ----------------------------------------------------------------------------------------------------
    def _apply_commands(self) -> None:
        for cmd in self.inbox.take():
            if isinstance(cmd, control.Rejected):
                self._emit(cmd.event(self._done()))
                continue
            try:
                message = self._apply(cmd)
            except (StudyError, ValueError) as err:
                self._emit(CommandAck(cmd.id, cmd.op.value, False, self._done(), str(err), cmd.sender))
                continue
            self._emit(CommandAck(cmd.id, cmd.op.value, True, self._done(), message, cmd.sender))

    def _apply(self, cmd: Command) -> str:
        live = [s.trial for s in self.slots if s.process is not None]
        if cmd.op == Op.PAUSE:
            if self.state != RunState.RUNNING:
                return f"already {self.state.value}"
            self.study.set_control("paused")
            self._set_state(RunState.PAUSED, "paused by request")
            held = self._wait_paused()
            return f"paused: no new trial starts; {held}"
        if cmd.op == Op.CONTINUE:
            if self.state != RunState.PAUSED:
                return f"not paused ({self.state.value})"
            self.study.set_control("running")
            self._set_state(RunState.RUNNING, "continued")
            return f"continued: {len(live)} trial(s) go on"
        if cmd.op == Op.STOP:
            self._begin_stop("stopped by request")
            return f"stopping: {len(live)} trial(s) write a checkpoint; resume with: nanxi-tune resume {self.folder}"
        if cmd.op == Op.SET:
            return self._set_keys(cmd.updates)
        raise StudyError(f"a study has no weights of its own to {cmd.op.value}; send it to a trial: "
                         f"nanxi-tune ctl {self.folder}/trial-<value> {cmd.op.value}")

    def _set_keys(self, updates: dict[str, Any]) -> str:
        spec = self.study.spec
        changes = {}
        for key, v in updates.items():
            if key not in STUDY_KEYS:
                raise StudyError(f"{key}: not a study key; a study takes {', '.join(STUDY_KEYS)} (a trial's "
                                 f"own keys: nanxi-tune ctl {self.folder}/trial-<value> set …)")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 and key != "study.slides" or v < 0:
                raise StudyError(f"{key} = {v!r}: give a positive number")
            changes[key.split(".", 1)[1]] = v
        if "trial_steps" in changes:
            changes["trial_steps"], changes["trial_minutes"] = int(changes["trial_steps"]), None
        elif "trial_minutes" in changes:
            changes["trial_minutes"], changes["trial_steps"] = float(changes["trial_minutes"]), None
        for k in ("slides", "workers"):
            if k in changes:
                changes[k] = int(changes[k])
        new = replace(spec, **changes)
        self.study.set_spec(new)
        if "workers" in changes and not new.devices and all(s.device == "cpu" for s in self.slots):
            self._resize(new.workers)
        said = ", ".join(f"study.{k} {getattr(spec, k)} → {v}" for k, v in changes.items())
        return f"{said} (trials that start from now on)"

    def _resize(self, n: int) -> None:
        threads = max(1, (os.cpu_count() or 1) // n)
        keep = [s for s in self.slots if s.process is not None]
        idle = [s for s in self.slots if s.process is None]
        self.slots = keep + idle[:max(0, n - len(keep))]
        self.slots += [Slot("cpu", threads) for _ in range(n - len(self.slots))]

    def _wait_paused(self) -> str:
        """Until every trial running here holds (its run folder says paused) — what "no trial advances" means."""
        end = time.monotonic() + PAUSE_WAIT_S
        while time.monotonic() < end:
            live = [(s.trial, self.folder / self.study.trial(s.trial).user_attrs["run"]) for s in self.slots
                    if s.process is not None and s.process.poll() is None]
            states = [(n, runctl.status(d)) for n, d in live]
            if all(st.state == runctl.RunState.PAUSED or not st.alive for _, st in states):
                return ", ".join(f"trial {n} holds at step {st.step}" for n, st in states) or "no trial was running"
            time.sleep(TICK_S)
        return "some trials had not reached a step boundary yet; they hold at their next one"

    def _begin_stop(self, why: str) -> None:
        self.study.set_control("stopping")
        self._set_state(RunState.STOPPING, why)

    def _halt_trials(self) -> None:
        try:
            self.study.set_control("stopping")
        except Exception:  # noqa: BLE001
            pass
        for s in self.slots:
            if s.process is not None:
                try:
                    s.process.send_signal(signal.SIGTERM)
                    s.process.wait(timeout=300)
                except (OSError, subprocess.TimeoutExpired):
                    pass


def spawn_detached(folder: Path | str, workers: int | None = None, devices: str | None = None) -> subprocess.Popen:
    """The study's owner as its own process in a new session (``nanxi-tune resume FOLDER``): no terminal, so a
    closed TUI or a dropped SSH session never stops it. Its output goes to the folder's stdout.log."""
    folder = Path(folder)
    argv = ["resume", str(folder)]  # its progress lines: stdout.log
    if workers:
        argv += ["--workers", str(workers)]
    if devices:
        argv += ["--devices", devices]
    return runctl.start_detached(argv, folder / rundir.STDOUT)


def _die_with_parent() -> None:
    """In the trial process, before exec: SIGTERM when the owner dies (kill -9 included), so it checkpoints."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the trial runs on and the next owner waits for it
        pass
    os.setpgrp()  # a Ctrl-C at the owner's terminal reaches the owner, which stops the trials itself
