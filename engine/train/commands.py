"""A run's commands: stop / pause / continue requested from signals or threads, and the control channel's
commands (engine.run.runctl), applied at step boundaries and between evaluation batches, the same on every rank.

``Commands(trainer)`` needs of its Trainer: ``step``, ``run_dir``, ``dist``, ``owner``, ``emit``, ``set_state``,
``save``, ``evaluate_now``, ``restart_clock`` (paused time is not training time); a live edit replaces its
``cfg``, tells its ``watcher`` and ``plan`` (``plan_changed``) and drops its ``eval_set`` when the eval images
change; the model and its EMA take the new config (``reconfigure``: the loss reads it)."""

from __future__ import annotations

import threading
from typing import Any, Callable

from .. import config as C
from ..files import RecordError
from ..run import rundir, runctl
from ..run import control
from ..run.events import CommandAck, RunState
from ..run.runctl import Command, Op


class EditNotSaved(RuntimeError):
    """On the other ranks: rank 0 could not save a live edit, so no rank makes it."""


class Commands:
    def __init__(self, trainer: Any):  # the Trainer (engine.train.trainer)
        self.t = trainer
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.wake = threading.Event()  # cuts a paused wait short
        self.inbox = control.Inbox(trainer.run_dir)
        self.deferred: list[Command] = []  # commands met during an evaluation, applied after it

    # --- in-process requests (signals, the TUI's thread): thread-safe --------------------------------------------
    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    def request_pause(self) -> None:
        self.paused.set()

    def request_continue(self) -> None:
        self.paused.clear()
        self.wake.set()

    # --- at a step boundary -----------------------------------------------------------------------------------------
    def at_step(self) -> bool:
        """Apply the channel's commands; stop (checkpoint first) or wait while paused, still applying commands.
        True means the loop must end."""
        t = self.t
        t.owner.update(step=t.step)
        self.apply_pending()
        self.hold_while_paused(self.apply_pending)
        if self.stop.is_set():
            t.set_state(RunState.STOPPING)
            t.save()
            t.set_state(RunState.STOPPED, "stopped by request; resume to continue")
            return True
        return False

    def take(self) -> list:
        """The channel's new commands, on every rank: rank 0 reads them and every rank gets them (with rank 0's
        pause flag and any rank's stop request) at the same step boundary or evaluation batch."""
        dist = self.t.dist
        taken = self.inbox.take() if dist.is_main else []
        taken, stop, paused, _ = dist.control(taken, self.stop.is_set(), self.paused.is_set())
        if stop:
            self.stop.set()
        if dist.active:
            (self.paused.set if paused else self.paused.clear)()
        return taken

    def apply_pending(self) -> None:
        t = self.t
        pending, self.deferred = self.deferred + self.take(), []
        for cmd in pending:
            if isinstance(cmd, control.Rejected):  # never guessed at
                t.emit(cmd.event(t.step))
                continue
            try:
                message, changes = self.apply(cmd)
            except C.ConfigError as err:
                t.emit(CommandAck(cmd.id, cmd.op.value, False, t.step, str(err), cmd.sender))
                continue
            except (RecordError, EditNotSaved) as err:  # config.toml not saved: the edit is not made, the run goes on
                t.emit(CommandAck(cmd.id, cmd.op.value, False, t.step,
                                  f"{err}; free disk space, then send the edit again", cmd.sender))
                continue
            t.emit(CommandAck(cmd.id, cmd.op.value, True, t.step, message, cmd.sender, changes))

    def apply(self, cmd: Command) -> tuple[str, list]:
        """One command at a step boundary: (what was done, live edits as [key, old, new])."""
        t = self.t
        if cmd.op == Op.PAUSE:
            self.paused.set()
            return f"paused at step {t.step}", []
        if cmd.op == Op.CONTINUE:
            self.paused.clear()
            return f"continued at step {t.step}", []
        if cmd.op == Op.STOP:
            self.stop.set()
            return f"stopping at step {t.step} with a checkpoint", []
        if cmd.op == Op.CHECKPOINT:
            t.save()
            return f"checkpoint written at step {t.step}", []
        if cmd.op == Op.EVAL:
            t.evaluate_now()
            return f"evaluated at step {t.step}", []
        changes = self.live_edit(cmd.updates)
        said = ", ".join(f"{k} {old} → {new}" for k, old, new in changes) or "no change"
        return f"{said} from step {t.step + 1}", changes

    def live_edit(self, updates: dict[str, Any]) -> list[list]:
        """Change live keys mid-run (C.with_live_updates names any refused key); saved to config.toml, so a
        resume continues with them. Returns [key, old, new] per changed key."""
        t = self.t
        new = C.with_live_updates(t.cfg, updates, "live edit")
        changes = [[k, a, b] for k, (a, b) in C.diff(t.cfg, new).items()]
        if not changes:
            return []
        refused = None
        if t.dist.is_main:  # saved first: an edit the disk refuses is not made
            try:
                C.save(new, t.run_dir / rundir.CONFIG)
            except RecordError as err:
                refused = err
        if t.dist.from_main(str(refused) if refused else None):  # every rank makes rank 0's choice
            raise refused or EditNotSaved("rank 0 could not save config.toml")
        t.cfg = new
        for model in (t.model, t.ema.module if t.ema is not None else None):  # the loss of train and val steps
            if model is not None:
                model.reconfigure(new)
        t.watcher.set_config(new)
        if t.plan is not None and t.plan.reconfigure(new):
            t.plan_changed()
        if any(k.startswith("eval.") and k not in ("eval.interval", "eval.online") for k, _, _ in changes):
            t.eval_set = None  # val_data_mode / qmv / rsr: the eval images change
        return changes

    def hold_while_paused(self, poll: Callable[[], Any], note: str = "") -> None:
        """Paused: wait here, ``poll`` applying the commands that come, until continue or stop."""
        if not self.paused.is_set() or self.stop.is_set():
            return
        self.t.set_state(RunState.PAUSED, note)
        while self.paused.is_set() and not self.stop.is_set():
            self.wake.wait(runctl.POLL_S * 4)
            self.wake.clear()
            poll()
        if not self.stop.is_set():
            self.t.set_state(RunState.RUNNING, "continued")
        self.t.restart_clock()

    # --- between evaluation batches ---------------------------------------------------------------------------------
    def during_eval(self) -> None:
        """Pause, continue and stop act now; other commands wait for the next step."""
        t = self.t
        for cmd in self.take():
            if isinstance(cmd, Command) and cmd.op in (Op.PAUSE, Op.STOP, Op.CONTINUE):
                t.emit(CommandAck(cmd.id, cmd.op.value, True, t.step, self.apply(cmd)[0] + " (during an evaluation)",
                                  cmd.sender))
            else:
                self.deferred.append(cmd)

    def eval_interrupt(self) -> bool:
        """True ends the evaluation (stop). A pause holds it here until continue or stop."""
        self.during_eval()
        self.hold_while_paused(self.during_eval, "during an evaluation")
        return self.stop.is_set()
