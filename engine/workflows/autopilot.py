"""The autopilot: the notes' whole schedule, unattended, fitted to the user's data within a budget.

One owner process walks the rounds of ``autopilot_plan.ROUNDS`` in order — cut the train split into fit /
held-out, read the data and propose starting values, measure the step time and share the budget, then the
search rounds as studies (seven-stars lr, the shape branch, capacity at equal time; trials scored on the
held-out part, never on val), mean/std after augmentation, the final run on the whole train split, and
post-processing tuned on the held-out part — and records every step in ``autopilot.json`` (atomic), so a
``nanxi-tune resume`` after a stop or a kill -9 goes on at the round it was in (a study's trials resume from their
checkpoints). Pause, continue, stop and ``set autopilot.budget_min`` come through the folder's control channel
like a run's; they reach the round's study or the final run, and a budget change re-plans what is left.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from ..run import control, rundir, runctl
from ..run.job import OwnerRecord
from ..run.events import Callback, CommandAck, Error, RunState, null_callback
from ..run.runctl import Command, Op
from . import autopilot_plan as P
from .autopilot_journal import write_journal
from .autopilot_rounds import AutopilotProgress, Rounds, Stopped

TICK_S = 0.2
SAVE_S = 10.0


def create(folder: Path | str, preset: str, base: C.Config, budget_min: float, **options: Any) -> P.Autopilot:
    """A new autopilot folder (refused when it already holds one)."""
    folder = Path(folder)
    if P.is_autopilot(folder):
        raise P.AutopilotError(f"{folder} already holds an autopilot; resume it: nanxi-tune resume {folder}")
    unknown = [r for r in options.get("rounds", P.SEARCH) if r not in P.SEARCH]
    if unknown:
        raise P.AutopilotError(f"rounds {unknown}: the search rounds are {', '.join(P.SEARCH)}")
    if base.data.val == "synthetic" and base.data.train != "synthetic":
        raise P.AutopilotError("data.val = synthetic with a real data.train: give the val split of your data")
    folder.mkdir(parents=True, exist_ok=True)
    ap = P.Autopilot(P.AutopilotSpec(preset, base.model_dump(mode="json"), float(budget_min), **options))
    P.save(folder, ap)
    write_journal(folder, ap)
    return ap


class AutopilotOwner(Rounds, OwnerRecord):
    def __init__(self, folder: Path | str, callback: Callback = null_callback):
        self.folder = Path(folder)
        self.ap = P.load(self.folder)
        self.callback = callback
        self.state = RunState.STARTING
        self._stop = threading.Event()
        self._paused = False
        self._mark = time.monotonic()
        self._current: dict[str, Any] = {}  # the running round's handle: study folder or final trainer
        self.owner: runctl.RunOwner | None = None

    @property
    def base(self) -> C.Config:
        return C.validate(self.ap.spec.config, f"{self.folder}: base config")

    def request_stop(self) -> None:
        self._stop.set()

    # --- the walk -------------------------------------------------------------------------------------------------
    def run(self) -> str:
        from ..run.recorder import Recorder

        self.owner = runctl.RunOwner.acquire(self.folder)
        self.recorder = Recorder(self.folder)
        self.inbox = control.Inbox(self.folder)
        try:
            self._set_state(RunState.RUNNING, "started" if not self.ap.used_s else "resumed")
            for r in self.ap.rounds:
                if r.status in ("done", "skipped"):
                    continue
                self._round(r)
            self._set_state(RunState.FINISHED, self._final_text())
        except Stopped as stop:
            why = f"{stop.args[0]}: " if stop.args else ""
            self._set_state(RunState.STOPPED, f"{why}stopped; resume with: nanxi-tune resume {self.folder}")
        except Exception as err:  # noqa: BLE001 - the walk ends with a recorded reason, whatever broke
            self._emit(Error(f"{type(err).__name__}: {err}", "the finished rounds are kept; resume: nanxi-tune "
                             f"resume {self.folder}", self._done()))
            self._set_state(RunState.FAILED, str(err))
        finally:
            self._save()
            self.recorder.close()
            self.owner.release()
        return self.state.value

    def _round(self, r: P.RoundState) -> None:
        if r.name in P.SEARCH and r.name not in self.ap.spec.rounds:
            r.status, r.why = "skipped", "not asked for (--rounds)"
        elif r.name in P.SEARCH and self.ap.plan and r.name not in self.ap.plan.get("rounds", []):
            r.status, r.why = "skipped", "the budget leaves no room for it: " + self.ap.plan.get("why", "")
        if r.status == "skipped":
            self._emit(AutopilotProgress("round_skipped", r.name, r.why))
            self._save()
            return
        self._check()
        r.status = "running"
        self._save()
        self._emit(AutopilotProgress("round_started", r.name, P.TITLES[r.name]))
        t0 = time.monotonic()
        getattr(self, "_" + r.name)(r)
        self.ap.recipe.update(r.choice)
        r.seconds += time.monotonic() - t0
        r.status = "done"
        self._save()
        self._emit(AutopilotProgress("round_done", r.name, r.why))

    def _wait(self, work: Callable[[], Any]) -> None:
        """Run ``work`` in a thread, answering commands and counting active time until it ends."""
        err: list[BaseException] = []

        def target() -> None:
            try:
                work()
            except BaseException as e:  # noqa: BLE001 - re-raised in the owner's thread
                err.append(e)

        th = threading.Thread(target=target, name="autopilot-round", daemon=True)
        th.start()
        saved = time.monotonic()
        while th.is_alive():
            if self._stop.is_set():  # every tick: the trainer or the study may not exist yet at the first
                self._forward(Op.STOP)
            self._commands()
            self._tick()
            if time.monotonic() - saved > SAVE_S:  # the time used, for `ctl status` and the TUI
                self._save()
                saved = time.monotonic()
            th.join(TICK_S)
        self._current = {}
        if err:
            raise err[0]
        if self._stop.is_set():
            raise Stopped()

    def _check(self) -> None:
        self._commands()
        while self._paused and not self._stop.is_set():
            time.sleep(TICK_S)
            self._commands()
            self._tick()
        if self._stop.is_set():
            raise Stopped()

    def _forward(self, op: Op, updates: dict[str, Any] | None = None) -> None:
        """A command to what runs now: the round's study (its own channel) or the final run's trainer."""
        cur = self._current
        if "study" in cur:
            if op == Op.STOP:
                cur["owner"].request_stop()
            else:
                runctl.send(cur["study"], op, updates, "autopilot")
        elif "box" in cur:
            t = cur["box"].get("trainer")
            if op == Op.STOP:
                if t is not None:
                    t.request_stop()
            elif op == Op.SET:
                runctl.send(cur["run"], op, updates, "autopilot")
            elif t is not None:
                (t.request_pause if op == Op.PAUSE else t.request_continue)()

    def _commands(self) -> None:
        for cmd in self.inbox.take():
            if isinstance(cmd, control.Rejected):
                self._emit(cmd.event(self._done()))
                continue
            try:
                ok, message = True, self._apply(cmd)
            except (P.AutopilotError, ValueError) as err:
                ok, message = False, str(err)
            self._emit(CommandAck(cmd.id, cmd.op.value, ok, self._done(), message, cmd.sender))

    def _apply(self, cmd: Command) -> str:
        if cmd.op == Op.PAUSE and self._paused:
            return "already paused"
        if cmd.op == Op.CONTINUE and not self._paused:  # nothing to continue; the budget's clock runs on
            return "not paused (running)"
        if cmd.op == Op.PAUSE:
            self._tick()
            self._paused = True
            self._forward(Op.PAUSE)
            self._set_state(RunState.PAUSED, "paused by request")
            return "paused: the round's trials hold; the budget's clock stops"
        if cmd.op == Op.CONTINUE:
            self._tick()  # the paused time is not counted
            self._paused = False
            self._forward(Op.CONTINUE)
            self._set_state(RunState.RUNNING, "continued")
            return "continued"
        if cmd.op == Op.STOP:
            self._stop.set()
            return f"stopping with a checkpoint; resume with: nanxi-tune resume {self.folder}"
        if cmd.op == Op.SET:
            return self._set_budget(cmd.updates)
        raise P.AutopilotError(f"an autopilot has no weights of its own to {cmd.op.value}; send it to its final run: "
                               f"nanxi-tune ctl {self.folder}/final {cmd.op.value}")

    def _set_budget(self, updates: dict[str, Any]) -> str:
        if set(updates) != {P.BUDGET_KEY}:
            raise P.AutopilotError(f"{', '.join(updates)}: an autopilot takes {P.BUDGET_KEY} (minutes)")
        v = updates[P.BUDGET_KEY]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= P.MAX_BUDGET_MIN:
            raise P.AutopilotError(f"{P.BUDGET_KEY} = {v!r}: give a positive number of minutes (at most 365 days)")
        self._tick()
        old = self.ap.spec.budget_min
        self.ap.spec.budget_min = float(v)
        said = f"{P.BUDGET_KEY} {old:g} → {float(v):g}"
        if float(v) * 60 <= self.ap.used_s:
            said += (f" (less than the {self.ap.used_s / 60:.1f} min used already: the search ends, the final run "
                     "is short)")
        if self.ap.round("final").status == "running":
            t = self._current.get("box", {}).get("trainer")
            minutes = (t.cfg.train.time_budget_min if t is not None else 0) + float(v) - old
            if minutes > 0 and not self.ap.spec.final_steps:
                self._forward(Op.SET, {"train.time_budget_min": round(minutes, 3)})
                said += f"; the final run re-plans to {minutes:.1f} min"
        elif self.ap.plan:
            self._replan()
            if "study" in self._current and not self.ap.spec.trial_steps and self.ap.plan["trial_s"] > 0:
                self._forward(Op.SET, {"study.trial_minutes": round(self.ap.plan["trial_s"] / 60, 4)})
            said += f"; re-planned: {self.ap.plan['why']}"
        self._save()
        return said

    # --- the record -------------------------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        if not self._paused:
            self.ap.used_s += now - self._mark
        self._mark = now

    def _done(self) -> int:
        return sum(r.status in ("done", "skipped") for r in self.ap.rounds)

    def _save(self) -> None:
        self._tick()
        P.save(self.folder, self.ap)
        try:
            write_journal(self.folder, self.ap)
        except Exception:  # noqa: BLE001 - the journal is a courtesy
            pass
        if self.owner is not None:
            self.owner.update(step=self._done())

    def _final_text(self) -> str:
        f = self.ap.final
        return f"finished: val mAP {f['mAP']:.4f} AP50 {f['AP50']:.4f}" if f else "finished"


def spawn_detached(folder: Path | str) -> Any:
    """The autopilot's owner as its own process (``nanxi-tune resume FOLDER``), output in stdout.log."""
    return runctl.start_detached(["resume", str(folder)], Path(folder) / rundir.STDOUT)

