"""A job that trains trials one after another in a folder of its own (a remedy's trial descent): it owns the folder
as a trainer owns a run (engine.run.runctl's lock and heartbeat), so ``nanxi-tune ctl FOLDER status|pause|continue|
stop`` and the TUI drive it from any process. Pause, continue and stop go to the trial training now; a stop also
ends the job (``stopped`` is set: the job checks it between trials)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from . import recorder, runctl
from . import control
from .events import CommandAck, Event, RunState, StateChanged
from .runctl import Command, Op

POLL_S = 0.1


class OwnerRecord:
    """The record side of a job's owner (a study's, an autopilot's): its state in owner.json and events.jsonl, and
    every event to its listener too. Needs ``state``, ``owner`` (runctl.RunOwner), ``recorder``, ``callback`` and
    ``_done()`` (the progress count owner.json shows as its step)."""

    def _set_state(self, state: RunState, message: str = "") -> None:
        self.state = state
        self.owner.update(state=state.value, step=self._done())
        self._emit(StateChanged(state, self._done(), message))

    def _emit(self, event: Event) -> None:
        self.recorder.record(event)
        try:
            self.callback(event)
        except Exception:  # noqa: BLE001 - a listener must never break the job
            pass


class Job:
    def __init__(self, folder: Path | str, what: str):
        self.folder, self.what = Path(folder), what
        self.owner = runctl.RunOwner.acquire(self.folder)
        self.inbox = control.Inbox(self.folder)
        self.stopped = threading.Event()
        self.acked_stop = False
        self._trainer: Any = None
        self._paused = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._state(RunState.RUNNING, f"{what} started")
        self._thread = threading.Thread(target=self._serve, name="nanxi-job", daemon=True)
        self._thread.start()

    def attach(self, trainer: Any) -> None:
        """The trial now training: it gets the job's pause and stop."""
        with self._lock:
            self._trainer = trainer
            if self.stopped.is_set():
                trainer.request_stop()
            elif self._paused:
                trainer.request_pause()

    def set_step(self, step: int) -> None:
        self.owner.update(step=step)

    def close(self, state: RunState, message: str = "") -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self._state(state, message)
        self.owner.release()

    def _serve(self) -> None:
        while not self._done.wait(POLL_S):
            for cmd in self.inbox.take():
                if isinstance(cmd, control.Rejected):
                    recorder.append(self.folder, cmd.event(self.owner.info.step))
                    continue
                applied, message = self._apply(cmd)
                self._ack(cmd.id, cmd.op.value, applied, message, cmd.sender)

    def _apply(self, cmd: Command) -> tuple[bool, str]:
        with self._lock:
            trainer = self._trainer
            if cmd.op == Op.STOP:
                self.stopped.set()
                self.acked_stop = True
                if trainer is not None:
                    trainer.request_stop()
                return True, f"stopping the {self.what}: the trial in progress ends, nothing is applied"
            if cmd.op in (Op.PAUSE, Op.CONTINUE):
                pause = cmd.op == Op.PAUSE
                if pause == self._paused:  # nothing to change: said, not recorded as a state change
                    return True, f"{self.what} already paused" if pause else f"{self.what} not paused (running)"
                self._paused = pause
                if trainer is not None:
                    (trainer.request_pause if pause else trainer.request_continue)()
                self._state(RunState.PAUSED if pause else RunState.RUNNING,
                            "paused by request" if pause else "continued")
                return True, f"{self.what} {'paused' if pause else 'continued'}"
        return False, f"a {self.what} takes pause, continue and stop (status: nanxi-tune ctl {self.folder} status)"

    def _ack(self, id_: str, op: str, applied: bool, message: str, sender: str = "") -> None:
        recorder.append(self.folder, CommandAck(id_, op, applied, self.owner.info.step, message, sender))

    def _state(self, state: RunState, message: str) -> None:
        self.owner.update(state=state.value)
        recorder.append(self.folder, StateChanged(state, self.owner.info.step, message))
