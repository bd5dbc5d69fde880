"""The training loop, readable top to bottom: data → model → loss → AdamW → EMA → eval → checkpoint.

A Trainer owns one run directory (engine.run.runctl's lock, for its whole life). It emits typed events to one
callback, and applies the commands of the run's control channel (engine.train.commands) at step boundaries;
pause and stop also interrupt an evaluation between batches. What a checkpoint holds and how a resume restores
it is engine.train.state; why a run failed and what to do, engine.train.failures. Resume is a Trainer started
from the run's last checkpoint; with data randomness derived from (seed, epoch, index), the resumed run cannot
tell it was interrupted.
"""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from .. import config as C
from ..data.dataset import eval_dataset, train_dataset
from ..data.loader import EpochSampler, eval_indices, first_skips, make_loader
from ..diagnosis import pins
from ..diagnosis.rulebook import lower_lr
from ..data.profile import resolve_for_training
from ..diagnosis.watcher import Watcher
from ..evaluation.evaluate import EvalInterrupted, evaluate
from ..files import RecordError
from ..metric_keys import COCO_METRICS, LOG_WEIGHTS, LOSSES
from ..model.detector import build_model
from ..model.targets import build_targets
from ..run import checkpoint as ckpt_io
from ..run import journal, rundir, runctl
from ..run.device import group_memory, memory_format, pick_device, reserved_memory
from ..run.stop import StopRun
from ..run.distributed import Dist, convert_sync_batchnorm, use_sync_bn
from ..run.events import (Callback, Error, EvalMetrics, Event, Log, PlanChanged, RunState, StateChanged, StepMetrics,
                          Traceback, null_callback)
from ..run.recorder import Recorder
from . import state, tboard
from .commands import Commands
from .failures import classify
from .lr_plan import LrPlan, clean_from
from .optim import ema_and_optimizer, ema_l2


class Trainer:
    def __init__(self, cfg: C.Config, run_dir: Path | str, callback: Callback = null_callback,
                 max_steps: int | None = None, resume: bool = False, owner: runctl.RunOwner | None = None,
                 dist: Dist | None = None):
        self.cfg = cfg
        # data-parallel under torchrun (engine.run.distributed): rank 0 alone writes the run folder and reads commands
        self.dist = dist or Dist.from_env(cfg.train.device, cfg.train.dist_timeout_s)
        self.run_dir = Path(run_dir)
        self.callback = callback
        self.stop_at = max_steps  # stop (resumable) after this step; the schedule still plans the full run
        self.resume_from = rundir.last_checkpoint(self.run_dir) if resume else None
        self.owner = owner  # taken in run() unless resume() already holds it
        self.commands = Commands(self)
        self.watcher = Watcher(cfg)
        self.record: Recorder | None = None  # rank 0's, while it runs
        self.board: tboard.Board | None = None  # rank 0's TensorBoard view (train.tensorboard), after the setup
        # progress: what a checkpoint holds (engine.train.state)
        self.state = RunState.STARTING
        self.step = self.epoch = self.total_steps = 0
        self.best_map = -1.0
        self.last_eval_step = -1
        self.saved_step = 0  # the step of the newest checkpoint on disk (an emergency save skips when no newer)
        self.train_s = 0.0  # training seconds of the whole run (evaluations in, pauses out), across resumes
        self._t_mark = 0.0  # start of the training time not yet counted
        self._lines_since_check = 0
        self.failing = False  # the run is ending on a failure: a record the disk refuses no longer stops anything
        self._skipped_images: set[str] = set()
        # built by _setup
        self.device: torch.device | None = None
        self.layout = torch.contiguous_format  # train.channels_last, the model's and its batches' memory
        self.train_set: Any = None
        self.steps_per_epoch = 0
        self.plan: LrPlan | None = None
        self.model: torch.nn.Module | None = None
        self.net: torch.nn.Module | None = None  # the model, or DistributedDataParallel around it
        self.ema: AveragedModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        # built at the first evaluation; dropped when a live edit changes the eval images
        self.eval_set: Any = None
        self.eval_loader: Any = None

    @classmethod
    def resume(cls, run_dir: Path | str, callback: Callback = null_callback, updates: dict[str, Any] | None = None,
               max_steps: int | None = None) -> "Trainer":
        """A trainer continuing ``run_dir`` from its last checkpoint; ``updates`` may touch live keys only.
        Raises runctl.RunBusy when a live process owns the folder (nothing is changed then)."""
        run_dir = Path(run_dir)
        cfg = C.with_live_updates(C.load(run_dir / rundir.CONFIG), updates or {}, "resume")
        if not rundir.last_checkpoint(run_dir).exists():
            raise ckpt_io.CheckpointError(f"{rundir.last_checkpoint(run_dir)}: this run saved no checkpoint "
                                          "yet; start it again instead")
        main = Dist.from_env(cfg.train.device, cfg.train.dist_timeout_s).is_main
        owner = runctl.RunOwner.acquire(run_dir) if main else None
        if updates and main:
            C.save(cfg, run_dir / rundir.CONFIG)
        return cls(cfg, run_dir, callback, max_steps=max_steps, resume=True, owner=owner)

    # --- requests from signals and threads (thread-safe) ---------------------------------------------------------
    def request_stop(self) -> None:
        self.commands.request_stop()

    def request_pause(self) -> None:
        self.commands.request_pause()

    def request_continue(self) -> None:
        self.commands.request_continue()

    # --- events out ---------------------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        if not self.dist.is_main:  # one run, one record: rank 0's
            return
        try:
            line = self.record.record(event)
        except RecordError:
            if not self.failing:
                raise
            line = event.to_json()  # failing on a full disk: the listeners still hear how it ended
        if isinstance(event, (StepMetrics, EvalMetrics)):
            self.watcher.observe(line)
            self._lines_since_check += 1
            if self.board is not None:
                self.board.feed(event)
        try:
            self.callback(event)
        except Exception as err:  # noqa: BLE001 - output errors (a closed pipe, a dead terminal) never stop training
            self.callback = null_callback
            self.emit(Log(f"the run's listener failed ({type(err).__name__}: {err}); training goes on without it "
                          "(the run folder keeps the whole record)", "warning"))

    def set_state(self, new: RunState, message: str = "") -> None:
        self.state = new
        self.owner.update(state=new, step=self.step)
        self.emit(StateChanged(new, self.step, message))

    # --- the run ------------------------------------------------------------------------------------------------
    def run(self) -> RunState:
        """Train to the end, a stop or a failure; returns the final state. Raises runctl.RunBusy (having written
        nothing) when another live process owns the folder."""
        if self.owner is None:
            self.owner = runctl.RunOwner.acquire(self.run_dir) if self.dist.is_main else runctl.Follower()
        try:
            return self._run()
        finally:
            self.owner.release()

    def _run(self) -> RunState:
        if self.dist.is_main:
            self.record = Recorder(self.run_dir)
        try:
            self._setup()
            self.board = tboard.open_board(self)
            self.set_state(RunState.RUNNING, "resumed" if self.resume_from else "started")
            self._loop()
        except Exception as err:  # noqa: BLE001 - a run must end with a recorded reason, whatever broke
            failure = classify(err, self.cfg, self.device or "?")
            self.failing = True
            kept = state.emergency_save(self, failure.error) if failure.save_weights else ""
            self.emit(Error(failure.error, failure.hint + kept, self.step))
            self.set_state(RunState.FAILED, failure.error)
            if failure.traceback and self.record is not None:  # the record only: listeners had the Error
                self.record.record(Traceback(traceback.format_exc()))
        finally:
            if self.board is not None:
                self.board.close()
            if self.dist.is_main:
                try:
                    journal.write(self.run_dir)
                except Exception:  # noqa: BLE001 - the journal is a courtesy; never mask the run's own outcome
                    pass
                self.record.close()
        return self.state

    def _setup(self) -> None:
        cfg, chosen = resolve_for_training(self.cfg)  # "auto" keys from the train split, before anything reads them
        if chosen:
            self.cfg = cfg
            self.watcher.set_config(cfg)
            for x in chosen:
                self.emit(Log(f"{x.key} = auto → {x.value}: {x.why}"))
        self.device = self.dist.device(cfg.train.device) if self.dist.active else pick_device(cfg.train.device)
        if self.dist.is_main:
            C.save(cfg, self.run_dir / rundir.CONFIG)
        ckpt_io.seed_all(cfg.train.seed)  # python, numpy and torch: every generator a checkpoint records
        self.train_set = train_dataset(cfg, cfg.train.seed)
        for w in getattr(self.train_set, "warnings", [])[:20]:
            self.emit(Log(w, "warning"))
        if getattr(self.train_set, "skipped", 0):
            self.emit(Log(f"data.skip_bad: skipped {self.train_set.skipped} bad annotation(s) in "
                          f"{self.train_set.ann_file}; the run continues without them", "warning"))
        bs, world = cfg.data.batch_size, self.dist.world
        self.steps_per_epoch = len(self.train_set) // (bs * world)  # a step takes the global batch bs × world
        if self.steps_per_epoch == 0:
            raise StopRun(f"data.batch_size = {bs}" + (f" × {world} ranks" if world > 1 else "") + " is larger "
                          f"than the training set ({len(self.train_set)} images); lower data.batch_size")
        self.plan = LrPlan(cfg, self.steps_per_epoch)  # the length and the lr decay (engine.train.lr_plan)
        self.total_steps = self.plan.total_steps
        # a resumed run's weights come from its checkpoint: backbone.weights may be gone by now
        self.model = build_model(cfg, self.train_set.num_classes, load_weights=self.resume_from is None)
        if cfg.train.init_from and self.resume_from is None:
            self.emit(Log(f"train.init_from: every layer starts from {self.model.weights_source}"))
        if self.dist.active and use_sync_bn(cfg.train.sync_bn, world, bs):
            self.model, n_bn = convert_sync_batchnorm(self.model, self.device.type)
            self.emit(Log(f"train.sync_bn: {n_bn} BatchNorm layers synchronised over {world} ranks"))
        self.layout = memory_format(cfg.train.channels_last)
        self.model.to(self.device, memory_format=self.layout)  # before DDP, EMA and AdamW copy its parameters
        self.net = self.dist.wrap(self.model)  # DistributedDataParallel under torchrun; the model itself otherwise
        if self.dist.active:
            self.emit(Log(f"data-parallel: {world} ranks ({self.dist.backend}), {bs} images per device, global "
                          f"batch {bs * world}, lr {self.lr(0):g} (linear scaling on the global batch)"))
        self.ema, self.optimizer = ema_and_optimizer(cfg, self.model)
        if self.resume_from is not None:
            ckpt_io.remove_stale_temps(self.resume_from.parent)  # partial files of a killed predecessor
            state.restore(self, self.resume_from)

    def _loop(self) -> None:
        bs = self.cfg.data.batch_size
        t_last, seen, ips = time.perf_counter(), 0, 0.0
        self._t_mark = t_last
        if self.plan.on:
            self.emit(PlanChanged(self.step, self.total_steps, list(self.plan.milestones), self.plan.describe()))
        if self.step and self._eval_due() and self.last_eval_step != self.step:
            self.evaluate_now()  # the evaluation a stop interrupted: redone before training on
        while self.step < self.total_steps:
            self.epoch, position = divmod(self.step, self.steps_per_epoch)
            # augment.clean_last: an epoch that starts in the run's last stretch trains on plain samples
            clean = clean_from(self.cfg, self.total_steps)
            augment = self.epoch * self.steps_per_epoch < clean
            if not augment and position == 0 and (self.epoch - 1) * self.steps_per_epoch < clean:
                self.emit(Log(f"augment.clean_last: from step {self.step} to the end ({self.total_steps}) the "
                              "samples are not augmented"))
            sampler = EpochSampler(len(self.train_set), self.cfg.train.seed, self.epoch,
                                   start=position * bs * self.dist.world, rank=self.dist.rank,
                                   world=self.dist.world, batch=bs, augment=augment)
            loader = make_loader(self.train_set, sampler, bs, self.cfg.data.workers, self.device.type,
                                 drop_last=True)
            for images, targets in loader:
                if self.commands.at_step() or self._reached_stop_at():
                    return
                if self.step >= self.total_steps:  # a live edit of train.epochs / max_steps ended the run here
                    break
                cfg = self.cfg  # live edits land between steps
                for msg in first_skips(targets, self._skipped_images):  # data.skip_bad: each bad image once
                    self.emit(Log(msg, "warning"))
                lr = self.lr(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                values = self._train_step(images, targets)
                self.step += 1
                seen += images.shape[0] * self.dist.world  # images/s of the whole group
                now = time.perf_counter()
                if now - t_last > 0.5 or self.step == 1:
                    ips, t_last, seen = seen / (now - t_last), now, 0
                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    self.emit(StepMetrics(step=self.step, epoch=self.epoch, time=time.time(), lr=lr,
                                          images_per_s=ips, total_steps=self.total_steps, **values,
                                          **group_memory(self.device, self.dist.per_rank)))
                if self._eval_due():
                    self.evaluate_now()
                else:
                    if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                        self.save()
                    if cfg.diagnose.check_every and self._lines_since_check >= cfg.diagnose.check_every:
                        self._diagnose()
                self._tick()
                if self.plan.on and self.dist.active:  # every rank re-plans on rank 0's clock
                    self.train_s = self.dist.from_main(self.train_s)
                if self.plan.observe(self.step, self.train_s):
                    self.plan_changed()
                if self.step >= self.total_steps or self._reached_stop_at():
                    break
            if self.state == RunState.STOPPED:
                return
        if self.commands.at_step():  # a stop during the last evaluation
            return
        if self.last_eval_step != self.step:
            self._evaluate()
            if self.commands.at_step():
                return
        self._diagnose()
        self.set_state(RunState.FINISHED, f"best mAP {max(self.best_map, 0):.4f}")

    def _train_step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float]:
        images = images.to(self.device, non_blocking=True, memory_format=self.layout)
        target_maps = build_targets(targets, self.model.num_classes, self.cfg, self.device)
        if self.dist.active:  # losses are divided by the objects of the global batch, as in one process
            num_pos = torch.as_tensor(target_maps["num_pos"], dtype=torch.float32, device=self.device)
            target_maps["num_pos"] = self.dist.mean_(num_pos.clone())
        losses = self.net(images, target_maps)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        clip = self.cfg.train.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        keys = LOSSES + LOG_WEIGHTS
        # One host sync per step: the values to log and the finiteness check, before the update.
        stacked = [losses[k].detach().float() for k in keys] + [grad_norm.float(), ema_l2(self.ema.module, self.model)]
        # averaged over ranks: a non-finite loss on any rank stops them all at this step
        values = dict(zip(keys + ("grad_norm", "ema_l2"), self.dist.mean_(torch.stack(stacked)).tolist()))
        if not all(math.isfinite(v) for k, v in values.items() if k != "ema_l2"):
            bad = ", ".join(k for k, v in values.items() if not math.isfinite(v))
            self.save()  # the weights are still those of the last good step
            raise StopRun(f"non-finite {bad} at step {self.step + 1}: lr {self.lr(self.step):g} is likely too large. "
                          f"Try train.base_lr = {lower_lr(self.cfg.train.base_lr):g} (one step down the 0.001/0.003/0.01 "
                          "grid) or train.grad_clip = 10, then resume from the last checkpoint")
        self.optimizer.step()
        self.ema.update_parameters(self.model)
        return values

    # --- evaluation and diagnosis ------------------------------------------------------------------------------
    def evaluate_now(self) -> None:
        self._evaluate()
        self._diagnose()

    def _evaluate(self) -> None:
        cfg, d = self.cfg, self.dist
        if self.eval_set is None:
            self.eval_set = eval_dataset(cfg, cfg.train.seed)
            n, bs = len(self.eval_set), cfg.data.batch_size
            # data-parallel: each rank evaluates every world-th batch, gathered to rank 0 (engine.evaluation.evaluate)
            self.eval_loader = make_loader(self.eval_set, eval_indices(n, bs, d.rank, d.world), bs,
                                           cfg.data.workers, self.device.type, drop_last=False)
        args = (self.eval_loader, cfg, self.device, self.eval_set.coco, self.eval_set.cat_ids)
        batches = -(-(-(-len(self.eval_set) // cfg.data.batch_size)) // d.world)  # the longest rank's batches
        shard = {"dist": d, "batches": batches} if d.active else {}
        stop = self.commands.eval_interrupt
        try:
            m = evaluate(self.ema.module, *args, interrupt=stop, **shard)
            online = evaluate(self.model, *args, interrupt=stop, **shard) if cfg.eval.online else {}
        except EvalInterrupted:  # stopped mid-way: the checkpoint of this step redoes it on resume
            return
        self.last_eval_step = self.step
        self.emit(EvalMetrics(step=self.step, epoch=self.epoch, time=time.time(), mode=cfg.eval.val_data_mode,
                              images=int(m["images"]), online_mAP=online.get("mAP"), online_AP50=online.get("AP50"),
                              errors=m.get("errors"), **{k: float(m[k]) for k in COCO_METRICS + LOSSES}))
        improved = m["mAP"] > self.best_map
        if improved:
            self.best_map = float(m["mAP"])
        self.save(ring=True)
        if improved:
            state.save_best(self)

    def _diagnose(self) -> None:
        """The notes' rules over the history so far; new findings go out as Diagnosis events."""
        if not self.cfg.diagnose.enabled or not self.dist.is_main:
            return
        self._lines_since_check = 0
        try:
            findings = self.watcher.check(reserved_memory(self.device))
        except Exception as err:  # noqa: BLE001 - a broken rule must never end a training run
            self.emit(Log(f"diagnostics skipped: {type(err).__name__}: {err}", "warning"))
            return
        for finding in findings:
            problem = pins.pin_rewind(self.run_dir, finding)  # the checkpoint its remedy rewinds to, kept
            if problem:
                self.emit(Log(problem, "warning"))
            self.emit(finding.to_event())

    # --- live edits, the plan and the clock ----------------------------------------------------------------------
    def lr(self, step: int) -> float:
        """The plan's lr (linear scaling on data.batch_size) × the ranks: linear scaling on the global batch."""
        return self.plan.lr_at(step) * self.dist.world

    def plan_changed(self) -> None:
        self.total_steps = self.plan.total_steps
        self.emit(PlanChanged(self.step, self.total_steps, list(self.plan.milestones), self.plan.describe()))

    def _tick(self) -> None:
        """Training time so far, for the budget plan: since the last tick, unless a pause was in between."""
        now = time.perf_counter()
        self.train_s += now - self._t_mark
        self._t_mark = now

    def restart_clock(self) -> None:
        self._t_mark = time.perf_counter()  # paused time is not training time

    # --- checkpoints and stops -----------------------------------------------------------------------------------
    def save(self, ring: bool = False) -> None:
        state.save(self, ring)

    def _reached_stop_at(self) -> bool:
        if self.stop_at is None or self.step < self.stop_at or self.step >= self.total_steps:
            return False
        self.save()
        self.set_state(RunState.STOPPED, f"reached --max-steps {self.stop_at}; resume to continue")
        return True

    def _eval_due(self) -> bool:
        epochs, position = divmod(self.step, self.steps_per_epoch)
        return position == 0 and epochs % self.cfg.eval.interval == 0
