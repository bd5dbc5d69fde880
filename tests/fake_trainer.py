"""A fast fake trainer for TUI tests: no torch, no data, the same run-folder protocol as engine.train.trainer.Trainer.

It owns the folder (engine.run.runctl's lock), writes typed step / eval / state / checkpoint events to
metrics.jsonl and events.jsonl, and applies the control channel's commands at step boundaries with the real
trainer's answers, so the app is driven through exactly the seam it uses with a real run — in milliseconds.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.run import control
from nanxi_tune.engine.run.events import CheckpointSaved, CommandAck, EvalMetrics, StateChanged, StepMetrics
from nanxi_tune.engine.run.recorder import Recorder
from nanxi_tune.engine.run.runctl import Command, Op


class FakeTrainer:
    STEP_S = 0.01  # seconds a step "takes"
    RANK_MEMORY_MIB = (3174.4, 3072.0)  # two ranks on 80 GiB GPUs, as the system strip shows them

    def __init__(self, cfg: C.Config, run_dir: Path | str, callback: Any = None, max_steps: int | None = None,
                 resume: bool = False):
        self.cfg, self.run_dir, self.stop_at = cfg, Path(run_dir), max_steps
        self.step, self.state, self.best_map = 0, "starting", -1.0
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * 10
        self._stop, self._paused = threading.Event(), threading.Event()
        if resume:
            self.step = max((m["step"] for m in rundir.read_metrics(self.run_dir) if m.get("split") == "train"),
                            default=0)

    @classmethod
    def resume(cls, run_dir: Path | str, callback: Any = None, updates: dict | None = None,
               max_steps: int | None = None) -> "FakeTrainer":
        cfg = C.with_live_updates(C.load(Path(run_dir) / rundir.CONFIG), updates or {}, "resume")
        C.save(cfg, Path(run_dir) / rundir.CONFIG)
        return cls(cfg, run_dir, max_steps=max_steps, resume=True)

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> str:
        owner = runctl.RunOwner.acquire(self.run_dir)
        C.save(self.cfg, self.run_dir / rundir.CONFIG)
        self._rec = Recorder(self.run_dir)
        self._owner, self._inbox = owner, control.Inbox(self.run_dir)
        try:
            self._state("running")
            while self.step < self.total_steps:
                self._commands()
                while self._paused.is_set() and not self._stop.is_set():
                    if self.state != "paused":
                        self._state("paused")
                    time.sleep(0.02)
                    self._commands()
                if self.state == "paused":
                    self._state("running")
                if self._stop.is_set() or (self.stop_at is not None and self.step >= self.stop_at):
                    self._checkpoint()
                    self._state("stopped")
                    return self.state
                time.sleep(self.STEP_S)
                self.step += 1
                self._step()
                if self.step % 10 == 0:
                    self._eval()
            self._state("finished")
            return self.state
        finally:
            self._rec.close()
            owner.release()

    # --- the protocol --------------------------------------------------------------------------------
    def _commands(self) -> None:
        self._owner.update(step=self.step)
        for cmd in self._inbox.take():
            assert isinstance(cmd, Command)
            changes: list = []
            try:
                if cmd.op == Op.SET:
                    new = C.with_live_updates(self.cfg, cmd.updates)
                    changes = [[k, a, b] for k, (a, b) in C.diff(self.cfg, new).items()]
                    self.cfg = new
                    C.save(new, self.run_dir / rundir.CONFIG)
                    self.total_steps = self.cfg.train.max_steps or self.cfg.train.epochs * 10
                elif cmd.op == Op.PAUSE:
                    self._paused.set()
                elif cmd.op == Op.CONTINUE:
                    self._paused.clear()
                elif cmd.op == Op.STOP:
                    self._stop.set()
                elif cmd.op == Op.CHECKPOINT:
                    self._checkpoint()
                elif cmd.op == Op.EVAL:
                    self._eval()
            except C.ConfigError as err:
                self._rec.record(CommandAck(cmd.id, cmd.op.value, False, self.step, str(err), cmd.sender))
                continue
            self._rec.record(CommandAck(cmd.id, cmd.op.value, True, self.step, f"{cmd.op.value} at step {self.step}",
                                          cmd.sender, changes))

    def _state(self, state: str) -> None:
        self.state = state
        self._owner.update(state=state, step=self.step)
        self._rec.record(StateChanged(state, self.step))

    def _step(self) -> None:
        loss = 3.0 * math.exp(-self.step / 50) + 0.5
        self._rec.record(StepMetrics(
            step=self.step, epoch=self.step // 10, time=time.time(), loss=loss, loss_map=loss * 0.4,
            loss_offset=loss * 0.1, loss_shape=loss * 0.5, lr=self.cfg.lr, grad_norm=1.0, s_map=0.0, s_offset=0.0,
            s_shape=0.0, images_per_s=100.0, ema_l2=0.0, total_steps=self.total_steps,
            memory_mib=self.RANK_MEMORY_MIB, memory_total_mib=81559.0, memory_of="cuda"))

    def _eval(self) -> None:
        m = min(0.9, self.step / 100)
        self.best_map = max(self.best_map, m)
        self._rec.record(EvalMetrics(
            step=self.step, epoch=self.step // 10, time=time.time(), mAP=m, AP50=m, AP75=m, APs=m, APm=m, APl=m,
            loss=1.0, loss_map=0.4, loss_offset=0.1, loss_shape=0.5, mode="full", images=8))

    def _checkpoint(self) -> None:
        path = rundir.last_checkpoint(self.run_dir)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"fake checkpoint")
        self._rec.record(CheckpointSaved(str(path), self.step, self.step // 10))
