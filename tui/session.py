"""One run's lifecycle for the TUI: start it in this process or detached, attach to any run, send it typed
commands, and turn its folder's record into typed events for the app.

Whoever started the run, the session follows it through its folder (metrics.jsonl, events.jsonl and the
owner's liveness, engine.run.runctl): one path serves a trainer in this process, a detached one, and a headless
one started from another shell. Events go through a RunBridge (back-pressure) and reach the app as
RunUpdate messages; the history already written arrives once as RunHistory; the end as RunEnded.
"""

from __future__ import annotations

import enum
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from textual.message import Message

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import events as E
from nanxi_tune.engine.run import recorder, rundir, runctl
from nanxi_tune.engine.run.events import RunState
from nanxi_tune.engine.run.runctl import Op
from nanxi_tune.tui.bridge import RunBridge

FOLLOW_S = 0.2  # how often the folder is read
STATUS_S = 0.5  # how often the owner's liveness is checked


class RunHistory(Message):
    """What the run had written before the session started following it (or after a resume trimmed it)."""

    def __init__(self, session: "RunSession", rows: list[dict], events: list[E.Event], reset: bool) -> None:
        super().__init__()
        self.session, self.rows, self.events, self.reset = session, rows, events, reset


class RunEnded(Message):
    """The run has no live trainer any more (finished, stopped, failed or dead), or never had one."""

    def __init__(self, session: "RunSession", state: str) -> None:
        super().__init__()
        self.session, self.state = session, state


class Kind(str, enum.Enum):
    IN_PROCESS = "in-process"  # a trainer thread of this app: quitting stops it with a checkpoint
    DETACHED = "detached"  # started by this app as its own process in a new session: it outlives the TUI
    ATTACHED = "attached"  # any run another process trains, or a finished one shown


class RunSession:
    """How the TUI holds one run; ``kind`` says who trains it."""

    def __init__(self, app: Any, run_dir: Path, kind: Kind) -> None:
        self.app, self.run_dir, self.kind = app, Path(run_dir), kind
        self.bridge = RunBridge(app)
        self.trainer: Any = None  # in-process only
        self.process: subprocess.Popen | None = None  # detached only
        self.status = runctl.RunStatus(RunState.STARTING if kind != Kind.ATTACHED else RunState.NEW, False, None, 0)
        self.ended = False
        self.result = ""
        self._pending: list[tuple[Op, dict]] = []
        self._lock = threading.Lock()
        self._quit = threading.Event()
        self._trainer_done = threading.Event()

    # --- starting ------------------------------------------------------------------------------
    @classmethod
    def in_process(cls, app: Any, run_dir: Path, make_trainer: Callable[[], Any]) -> "RunSession":
        """A trainer in a thread of this process; ``make_trainer()`` builds it (Trainer or Trainer.resume)."""
        s = cls(app, run_dir, Kind.IN_PROCESS)
        app.run_worker(lambda: s._train(make_trainer), thread=True, group="train", exit_on_error=False)
        s._follow_in_worker()
        return s

    @classmethod
    def detached(cls, app: Any, run_dir: Path, argv: list[str]) -> "RunSession":
        """``nanxi-tune ARGV`` as its own process in a new session (no terminal: SIGHUP never reaches it), its
        output in the run folder's stdout.log."""
        s = cls(app, run_dir, Kind.DETACHED)
        run_dir.mkdir(parents=True, exist_ok=True)
        s.process = runctl.start_detached(argv, run_dir / rundir.STDOUT)
        s._follow_in_worker()
        return s

    @classmethod
    def attach(cls, app: Any, run_dir: Path) -> "RunSession":
        s = cls(app, run_dir, Kind.ATTACHED)
        s._follow_in_worker()
        return s

    @staticmethod
    def detached_argv(cfg: C.Config, run_dir: Path) -> list[str]:
        """The command line of a detached start of ``cfg``: the config goes as a file beside the run folder."""
        run_dir.mkdir(parents=True, exist_ok=True)
        start = C.save(cfg, run_dir / "start.toml")
        # plain progress lines (stdout.log is not a terminal): a log to `tail -f` after reconnecting
        return ["train", "--preset", str(start), "--run-dir", str(run_dir)]

    # --- what the app asks ---------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.status.alive

    @property
    def state(self) -> str:
        return self.status.state.value

    @property
    def owns_run(self) -> bool:
        """Quitting the app ends this run (in-process only): it must be stopped with a checkpoint first."""
        return self.kind == Kind.IN_PROCESS and not self.ended

    def send(self, op: Op, updates: dict | None = None) -> str:
        """Queue a command for the live trainer (sent once it is up, when the run is still starting). Returns
        what the user is told; the trainer's answer comes back as an ack event."""
        with self._lock:
            if self.ended:
                return f"{self.run_dir.name} is {self.result or self.state}: no live trainer to {op.value} it"
            if not self.status.alive:
                self._pending.append((op, dict(updates or {})))
                return f"{op.value}: queued until the run is up"
        try:
            runctl.send(self.run_dir, op, updates, runctl.sender_name("tui"))
        except runctl.NotAlive as err:
            return str(err)
        return f"{op.value}: sent"

    def request_stop_now(self) -> None:
        """Quit / hang-up of an in-process run: stop with a checkpoint even before the trainer reads its channel."""
        if self.trainer is not None:
            self.trainer.request_stop()
        else:
            with self._lock:
                self._pending.append((Op.STOP, {}))

    def stop_for_hangup(self, signal_name: str, limit_s: float = 900.0) -> None:
        """The terminal went away (an in-process run): wait for the checkpoint, then record why the run stopped."""
        self._trainer_done.wait(limit_s)
        self.request_stop_now()  # in case the loop froze before passing the request on
        try:
            recorder.append(self.run_dir, E.HangUp(f"{signal_name}: the terminal went away; the TUI stopped the run "
                                                   f"with a checkpoint. Resume with: nanxi-tune resume {self.run_dir}",
                                                   signal=signal_name))
        except OSError:
            pass

    def close(self) -> None:
        """Stop following (the run itself goes on unless it is in-process)."""
        self._quit.set()

    # --- threads ------------------------------------------------------------------------------
    def _train(self, make_trainer: Callable[[], Any]) -> None:
        result = "failed"
        try:
            self.trainer = make_trainer()
            with self._lock:
                if any(op == Op.STOP for op, _ in self._pending):
                    self.trainer.request_stop()
            result = self.trainer.run()
        except Exception as err:  # noqa: BLE001 - shown to the user, never crash the UI
            self.bridge(E.Error(error=f"{type(err).__name__}: {err}", step=getattr(self.trainer, "step", 0) or 0,
                                hint=getattr(err, "hint", "") or "see the run's events.jsonl and journal.md"))
        finally:
            self._trainer_done.set()
            self.result = result

    def _follow_in_worker(self) -> None:
        self.app.run_worker(self._follow, thread=True, group=f"follow-{self.run_dir}", exit_on_error=False)

    def _follow(self) -> None:
        metrics = rundir.JsonlTail(self.run_dir / rundir.METRICS)
        events = rundir.JsonlTail(self.run_dir / rundir.EVENTS)
        self._history(metrics.poll(), events.poll(), reset=False)
        next_status = 0.0
        while not self._quit.is_set():
            self._pass(metrics, events)
            now = time.monotonic()
            if now >= next_status:
                next_status = now + STATUS_S
                if self._check_status():
                    self._pass(metrics, events)  # the last lines, then the end
                    self._end()
                    return
            self._quit.wait(FOLLOW_S)

    def _pass(self, metrics: rundir.JsonlTail, events: rundir.JsonlTail) -> None:
        rows = metrics.poll()
        if metrics.restarted:  # a resume trimmed the metrics: redraw from the file as it is now
            metrics.restarted = False
            self._history(rows, rundir.read_events(self.run_dir), reset=True)
            rows = []
        for d in rows + events.poll():
            ev = E.from_json(d)
            if ev is not None:
                self.bridge(ev)

    def _history(self, rows: list[dict], events: list[dict], reset: bool) -> None:
        evs = [e for e in (E.from_json(d) for d in events if d.get("kind") != "ack") if e is not None]
        self.app.post_message(RunHistory(self, rows, evs, reset))

    def _check_status(self) -> bool:
        """Refresh liveness, send what was queued once the trainer is up; True when the run has ended."""
        self.status = runctl.status(self.run_dir)
        if self.status.alive:
            with self._lock:
                pending, self._pending = self._pending, []
            for op, updates in pending:
                try:
                    runctl.send(self.run_dir, op, updates, runctl.sender_name("tui"))
                except runctl.NotAlive:
                    pass
            return False
        if self.kind == Kind.IN_PROCESS:
            return self._trainer_done.is_set()
        if self.kind == Kind.DETACHED and self.process is not None and self.process.poll() is None:
            return False  # still starting (loading torch, building the data) or writing its last lines
        return True

    def _end(self) -> None:
        st = self.status.state
        self.result = self.result if self.kind == Kind.IN_PROCESS and self.result else st.value
        if self.kind == Kind.DETACHED and st == RunState.NEW:  # the process ended before it trained
            self.result = "failed"
            self.bridge(E.Error(error=self._last_words(), step=0, hint=f"see {self.run_dir / rundir.STDOUT}"))
        self.ended = True
        self.app.post_message(RunEnded(self, self.result))

    def _last_words(self) -> str:
        try:
            lines = (self.run_dir / rundir.STDOUT).read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1] if lines else "the detached run exited before training"
