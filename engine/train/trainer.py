"""The training loop, readable top to bottom: data → model → loss → AdamW → EMA → eval → checkpoint.

A Trainer owns one run directory (engine.run.runctl's lock, for its whole life). It emits typed events to one
callback, and applies the commands of the run's control channel (pause, continue, stop, checkpoint,
evaluate, live edits) at step boundaries; pause and stop also interrupt an evaluation between batches.
Resume is a Trainer started from the run's last checkpoint; with data randomness derived from
(seed, epoch, index), the resumed run cannot tell it was interrupted.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from ..run import checkpoint as ckpt_io
from .. import config as C
from ..run import journal, rundir, runctl
from . import tboard
from ..files import RecordError
from ..run.recorder import Recorder
from ..run.device import StopRun, memory_mib, pick_device
from ..diagnosis.rulebook import lower_lr
from ..data.dataset import DataError, EpochSampler, eval_dataset, eval_indices, make_loader, train_dataset
from ..run.distributed import Dist, convert_sync_batchnorm, use_sync_bn
from ..evaluation.evaluate import EvalInterrupted, evaluate
from .lr_plan import BudgetPlan
from ..metric_keys import COCO_METRICS, LOG_WEIGHTS, LOSSES
from ..diagnosis.watcher import Watcher
from ..run.events import Callback, CheckpointSaved, CommandAck, Error, EvalMetrics, Event, Log, PlanChanged, RunState, StateChanged, StepMetrics, Traceback, from_json, null_callback
from ..run.runctl import Command, Op
from ..model.backbones import WeightsError
from ..model.detector import build_model
from ..model.targets import build_targets


def ema_avg_fn(decay: float, ramp: bool):
    """EMA update for AveragedModel. With ``ramp`` the decay is min(decay, (1 + n) / (10 + n)) after n updates
    (TensorFlow's num_updates rule): early weights move fast, so a full 0.99 from step 0 averages weights
    too far apart to form a working model."""

    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n)) if ramp else decay
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(list(ema_params), list(params), 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            for e, p in zip(ema_params, params):
                e.copy_(p)

    return update


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv weights only: decaying biases, norm scales and the log weights s_* toward 0
    would pull the heatmap prior bias and the loss balance away from where they belong."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class EditNotSaved(RuntimeError):
    """On the other ranks: rank 0 could not save a live edit, so no rank makes it."""


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
        self.state = RunState.STARTING
        self.step = 0
        self.epoch = 0
        self.total_steps = 0
        self.best_map = -1.0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._wake = threading.Event()
        self.watcher = Watcher(cfg)
        self._lines_since_check = 0
        self._record: Recorder | None = None  # rank 0's, while it runs
        self.board: tboard.Board | None = None  # rank 0's TensorBoard view (train.tensorboard), after the setup
        self.owner = owner  # taken in run() unless resume() already holds it
        self.inbox = runctl.Inbox(self.run_dir)
        self._deferred: list[Command] = []  # commands met during an evaluation, applied after it
        self._saved_step = 0  # the step of the newest checkpoint on disk (an emergency save skips when no newer)
        self._emergency_reason = ""
        self._failing = False  # the run is ending on a failure: a record the disk refuses no longer stops anything

    # --- commands in: in-process requests (signals; thread-safe) and the control channel ----------------
    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_pause(self) -> None:
        self._paused.set()

    def request_continue(self) -> None:
        self._paused.clear()
        self._wake.set()

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

    # --- events out ------------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        if not self.dist.is_main:  # one run, one record: rank 0's
            return
        try:
            line = self._record.record(event)
        except RecordError:
            if not self._failing:
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
            self._emit(Log(f"the run's listener failed ({type(err).__name__}: {err}); training goes on without it "
                           "(the run folder keeps the whole record)", "warning"))

    def _diagnose(self) -> None:
        """The notes' rules over the history so far; new findings go out as Diagnosis events."""
        if not self.cfg.diagnose.enabled or not self.dist.is_main:
            return
        self._lines_since_check = 0
        try:
            findings = self.watcher.check(self._model_stats())
        except Exception as err:  # noqa: BLE001 - a broken rule must never end a training run
            self._emit(Log(f"diagnostics skipped: {type(err).__name__}: {err}", "warning"))
            return
        for finding in findings:
            self._pin(finding)
            self._emit(finding.to_event())

    def _pin(self, finding) -> None:
        """Keep the checkpoint a finding's remedy rewinds to outside the ring (engine.diagnosis.pins) until the finding is
        applied or dismissed; the remedy records the pinned step (None: none was left, the child starts at 0)."""
        from ..diagnosis import pins

        rem = finding.remedy
        if rem.get("resume_from_step") is None or not rem.get("set"):
            return
        try:
            rem["checkpoint_step"] = pins.pin(self.run_dir, finding.rule, int(rem["resume_from_step"]))
        except OSError as err:
            self._emit(Log(f"could not pin the rewind checkpoint of {finding.rule}: {err}", "warning"))

    def _model_stats(self) -> dict[str, Any]:
        if self.device.type != "cuda":
            return {}
        free, total = torch.cuda.mem_get_info(self.device)
        return {"memory": {"used": torch.cuda.max_memory_reserved(self.device), "total": total}}

    def _memory(self) -> dict[str, Any]:
        """Every rank's memory for the system strip (one small collective at a logged step)."""
        held, total = memory_mib(self.device)
        return {"memory_mib": tuple(round(m, 1) for m in self.dist.per_rank(held)),
                "memory_total_mib": round(total, 1), "memory_of": self.device.type}

    def _set_state(self, state: RunState, message: str = "") -> None:
        self.state = state
        self.owner.update(state=state, step=self.step)
        self._emit(StateChanged(state, self.step, message))

    # --- the run -------------------------------------------------------------------------------
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
            self._record = Recorder(self.run_dir)
        try:
            self._setup()
            self.board = tboard.open_board(self)
            self._set_state(RunState.RUNNING, "resumed" if self.resume_from else "started")
            self._loop()
        except StopRun as err:
            self._fail(str(err).split("\n")[0], str(err))
        except ckpt_io.CheckpointError as err:
            self._fail("checkpoint", str(err))
        except WeightsError as err:  # backbone.weights: names the file, the layer and the fix
            self._fail(str(err).split("\n")[0], str(err))
        except DataError as err:  # names the file and the fix; not a crash, so no traceback
            msg = str(err)
            if "Original Traceback" in msg:  # re-raised from a loader worker: keep the worker's own message
                msg = msg.rstrip().rsplit("DataError: ", 1)[-1]
            self._fail(msg, "fix the data as the message says (or set data.skip_bad = true to skip bad items "
                       "with a warning), then resume" + self._emergency(msg))
        except RecordError as err:  # a full disk under the record: the weights in memory first
            self._fail(str(err), "free disk space, then resume" + self._emergency(str(err)))
        except torch.OutOfMemoryError:
            self._fail("out of memory", self._oom_hint() + self._emergency("out of memory"))
        except Exception as err:  # noqa: BLE001 - a run must end with a recorded reason, whatever broke
            if "can't allocate memory" in str(err) or isinstance(err, MemoryError):
                self._fail("out of memory", self._oom_hint() + self._emergency("out of memory"))
            else:
                what = f"{type(err).__name__}: {err}"
                self._fail(what, "see the traceback in events.jsonl; fix the cause and resume from the last "
                           "checkpoint" + self._emergency(what))
                import traceback

                if self._record is not None:  # the record only: listeners had the Error
                    self._record.record(Traceback(traceback.format_exc()))
        finally:
            if self.board is not None:
                self.board.close()
            if self.dist.is_main:
                try:
                    journal.write(self.run_dir)
                except Exception:  # noqa: BLE001 - the journal is a courtesy; never mask the run's own outcome
                    pass
                self._record.close()
        return self.state

    def _emergency(self, reason: str) -> str:
        """A failure mid-run: save the weights in memory as last.pt (marked ``emergency`` with the reason) when they
        are newer than the last checkpoint and finite, so nothing since is lost. Returns what to tell the user."""
        self._failing = True
        if self.dist.active or getattr(self, "optimizer", None) is None or self.step <= self._saved_step:
            return ""
        with torch.no_grad():
            if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                return " (the weights in memory are not finite: not saved)"
        self._emergency_reason = reason
        try:
            self._write_checkpoint(ring=False)
        except (StopRun, OSError) as err:
            return f" (an emergency checkpoint could not be written: {str(err).split('. ')[0]})"
        finally:
            self._emergency_reason = ""
        return f"; an emergency checkpoint at step {self.step} holds the weights in memory (resume continues from it)"

    def _fail(self, error: str, hint: str) -> None:
        if error == "checkpoint" and hint:  # a CheckpointError's message names the file and why: it is the error
            error, hint = hint, ("copy a good checkpoint of this run (checkpoints/step-*.pt or best.pt) over "
                                 "checkpoints/last.pt and resume, or start a new run")
        elif "no such file or folder" in error and "data.skip_bad" in hint:  # a missing path, not a bad item
            hint = ("paths in presets and --set are relative to the folder nanxi-tune runs in: run it from the "
                    "folder they are relative to, or give absolute paths (--set data.train=PATH data.val=PATH)")
        self._failing = True
        self._emit(Error(error, hint, self.step))
        self._set_state(RunState.FAILED, error)

    def _oom_hint(self) -> str:
        bs = self.cfg.data.batch_size
        return (f"out of memory with data.batch_size = {bs} at preprocess.input_size = "
                f"{self.cfg.preprocess.input_size} on {getattr(self, 'device', '?')}; try data.batch_size = "
                f"{max(1, bs // 2)} (lr follows by linear scaling) or a smaller preprocess.input_size, "
                "then resume from the last checkpoint")

    def _setup(self) -> None:
        cfg = self.cfg
        self.device = self.dist.device(cfg.train.device) if self.dist.active else pick_device(cfg.train.device)
        if self.dist.is_main:
            C.save(cfg, self.run_dir / rundir.CONFIG)
        ckpt_io.seed_all(cfg.train.seed)  # python, numpy and torch: every generator a checkpoint records
        self.train_set = train_dataset(cfg, cfg.train.seed)
        for w in getattr(self.train_set, "warnings", [])[:20]:
            self._emit(Log(w, "warning"))
        if getattr(self.train_set, "skipped", 0):
            self._emit(Log(f"data.skip_bad: skipped {self.train_set.skipped} bad annotation(s) in "
                           f"{self.train_set.ann_file}; the run continues without them", "warning"))
        self._skipped_images: set[str] = set()
        bs, world = cfg.data.batch_size, self.dist.world
        self.steps_per_epoch = len(self.train_set) // (bs * world)  # a step takes the global batch bs × world
        if self.steps_per_epoch == 0:
            raise StopRun(f"data.batch_size = {bs}" + (f" × {world} ranks" if world > 1 else "") + " is larger "
                          f"than the training set ({len(self.train_set)} images); lower data.batch_size")
        self.plan = BudgetPlan(cfg, self.steps_per_epoch)  # the length and the lr decay (engine.train.lr_plan)
        self.total_steps = self.plan.total_steps
        self._train_s = 0.0  # training seconds of the whole run (evaluations in, pauses out), across resumes
        # a resumed run's weights come from its checkpoint: backbone.weights may be gone by now
        self.model = build_model(cfg, self.train_set.num_classes, load_weights=self.resume_from is None)
        if self.dist.active and use_sync_bn(cfg.train.sync_bn, world, bs):
            self.model, n_bn = convert_sync_batchnorm(self.model, self.device.type)
            self._emit(Log(f"train.sync_bn: {n_bn} BatchNorm layers synchronised over {world} ranks"))
        self.model.to(self.device)
        self.net = self.dist.wrap(self.model)  # DistributedDataParallel under torchrun; the model itself otherwise
        if self.dist.active:
            self._emit(Log(f"data-parallel: {world} ranks ({self.dist.backend}), {bs} images per device, global "
                           f"batch {bs * world}, lr {self._lr(0):g} (linear scaling on the global batch)"))
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_avg_fn(cfg.train.ema_decay, cfg.train.ema_ramp),
                                 use_buffers=True)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.train.weight_decay), lr=cfg.lr,
                                           betas=(cfg.train.beta1, cfg.train.beta2))
        if self.resume_from is not None:
            ckpt_io.remove_stale_temps(self.resume_from.parent)  # partial files of a killed predecessor
            self._load(self.resume_from)

    def _loop(self) -> None:
        bs = self.cfg.data.batch_size
        t_last, seen, ips = time.perf_counter(), 0, 0.0
        self._t_mark = t_last
        if self.plan.on:
            self._emit(PlanChanged(self.step, self.total_steps, list(self.plan.milestones), self.plan.describe()))
        if self.step and self._eval_due() and not self._evaluated_at_step():
            self._evaluate()  # the evaluation a stop interrupted: redone before training on
            self._diagnose()
        while self.step < self.total_steps:
            self.epoch, position = divmod(self.step, self.steps_per_epoch)
            sampler = EpochSampler(len(self.train_set), self.cfg.train.seed, self.epoch,
                                   start=position * bs * self.dist.world, rank=self.dist.rank,
                                   world=self.dist.world, batch=bs)
            loader = make_loader(self.train_set, sampler, bs, self.cfg.data.workers, self.device.type,
                                 drop_last=True)
            for images, targets in loader:
                if self._honour_commands() or self._reached_stop_at():
                    return
                if self.step >= self.total_steps:  # a live edit of train.epochs / max_steps ended the run here
                    break
                cfg = self.cfg  # live edits land between steps
                self._count_skipped(targets)
                lr = self._lr(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                values = self._train_step(images, targets)
                self.step += 1
                seen += images.shape[0] * self.dist.world  # images/s of the whole group
                now = time.perf_counter()
                if now - t_last > 0.5 or self.step == 1:
                    ips, t_last, seen = seen / (now - t_last), now, 0
                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    self._emit(StepMetrics(step=self.step, epoch=self.epoch, time=time.time(), lr=lr,
                                           images_per_s=ips, total_steps=self.total_steps,
                                           **values, **self._memory()))
                if self._eval_due():
                    self._evaluate()
                    self._diagnose()
                else:
                    if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                        self._save()
                    if cfg.diagnose.check_every and self._lines_since_check >= cfg.diagnose.check_every:
                        self._diagnose()
                self._tick()
                if self.plan.on and self.dist.active:  # every rank re-plans on rank 0's clock
                    self._train_s = self.dist.from_main(self._train_s)
                if self.plan.observe(self.step, self._train_s):
                    self._plan_changed()
                if self.step >= self.total_steps or self._reached_stop_at():
                    break
            if self.state == RunState.STOPPED:
                return
        if self._honour_commands():  # a stop during the last evaluation
            return
        if not self._evaluated_at_step():
            self._evaluate()
            if self._honour_commands():
                return
        self._diagnose()
        self._set_state(RunState.FINISHED, f"best mAP {max(self.best_map, 0):.4f}")

    def _eval_due(self) -> bool:
        epochs, position = divmod(self.step, self.steps_per_epoch)
        return position == 0 and epochs % self.cfg.eval.interval == 0

    def _count_skipped(self, targets: list[dict]) -> None:
        """data.skip_bad: a warning with the running count for each bad image met for the first time."""
        for t in targets:
            for msg in t.get("skipped", ()):
                if msg not in self._skipped_images:
                    self._skipped_images.add(msg)
                    self._emit(Log(f"data.skip_bad: skipped {len(self._skipped_images)} bad image(s) so far; "
                                   f"latest: {msg}", "warning"))

    def _train_step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float]:
        images = images.to(self.device, non_blocking=True)
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
        stacked = [losses[k].detach().float() for k in keys] + [grad_norm.float(), self._ema_l2()]
        # averaged over ranks: a non-finite loss on any rank stops them all at this step
        values = dict(zip(keys + ("grad_norm", "ema_l2"), self.dist.mean_(torch.stack(stacked)).tolist()))
        if not all(math.isfinite(v) for k, v in values.items() if k != "ema_l2"):
            bad = ", ".join(k for k, v in values.items() if not math.isfinite(v))
            self._save()  # the weights are still those of the last good step
            raise StopRun(f"non-finite {bad} at step {self.step + 1}: lr {self._lr(self.step):g} is likely too large. "
                          f"Try train.base_lr = {lower_lr(self.cfg.train.base_lr):g} (one step down the 0.001/0.003/0.01 "
                          "grid) or train.grad_clip = 10, then resume from the last checkpoint")
        self.optimizer.step()
        self.ema.update_parameters(self.model)
        return values

    @torch.no_grad()
    def _ema_l2(self) -> torch.Tensor:
        """The notes' "retention" metric: L2 distance between EMA and online weights as they stand before this
        step's update (a tensor, read with the step's one sync)."""
        ema, online = list(self.ema.module.parameters()), list(self.model.parameters())
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(torch._foreach_sub(ema, online))).float())

    def _reached_stop_at(self) -> bool:
        if self.stop_at is None or self.step < self.stop_at or self.step >= self.total_steps:
            return False
        self._save()
        self._set_state(RunState.STOPPED, f"reached --max-steps {self.stop_at}; resume to continue")
        return True

    def _honour_commands(self) -> bool:
        """At a step boundary: apply the channel's commands; stop (checkpoint first) or wait while paused, still
        applying commands. True means the loop must end."""
        self.owner.update(step=self.step)
        self._apply_commands()
        self._hold_while_paused(self._apply_commands)
        if self._stop.is_set():
            self._set_state(RunState.STOPPING)
            self._save()
            self._set_state(RunState.STOPPED, "stopped by request; resume to continue")
            return True
        return False

    def _take_commands(self) -> list:
        """The channel's new commands, on every rank: rank 0 reads them and every rank gets them (with rank 0's
        pause flag and any rank's stop request) at the same step boundary or evaluation batch."""
        taken = self.inbox.take() if self.dist.is_main else []
        taken, stop, paused, _ = self.dist.control(taken, self._stop.is_set(), self._paused.is_set())
        if stop:
            self._stop.set()
        if self.dist.active:
            (self._paused.set if paused else self._paused.clear)()
        return taken

    def _lr(self, step: int) -> float:
        """The plan's lr (linear scaling on data.batch_size) × the ranks: linear scaling on the global batch."""
        return self.plan.lr_at(step) * self.dist.world

    def _apply_commands(self) -> None:
        pending, self._deferred = self._deferred + self._take_commands(), []
        for cmd in pending:
            if isinstance(cmd, runctl.Rejected):  # never guessed at
                self._emit(cmd.event(self.step))
                continue
            try:
                message, changes = self._apply(cmd)
            except C.ConfigError as err:
                self._emit(CommandAck(cmd.id, cmd.op.value, False, self.step, str(err), cmd.sender))
                continue
            except (RecordError, EditNotSaved) as err:  # config.toml not saved: the edit is not made, the run goes on
                self._emit(CommandAck(cmd.id, cmd.op.value, False, self.step,
                                      f"{err}; free disk space, then send the edit again", cmd.sender))
                continue
            self._emit(CommandAck(cmd.id, cmd.op.value, True, self.step, message, cmd.sender, changes))

    def _apply(self, cmd: Command) -> tuple[str, list]:
        """One command at a step boundary: (what was done, live edits as [key, old, new])."""
        if cmd.op == Op.PAUSE:
            self._paused.set()
            return f"paused at step {self.step}", []
        if cmd.op == Op.CONTINUE:
            self._paused.clear()
            return f"continued at step {self.step}", []
        if cmd.op == Op.STOP:
            self._stop.set()
            return f"stopping at step {self.step} with a checkpoint", []
        if cmd.op == Op.CHECKPOINT:
            self._save()
            return f"checkpoint written at step {self.step}", []
        if cmd.op == Op.EVAL:
            self._evaluate()
            self._diagnose()
            return f"evaluated at step {self.step}", []
        changes = self.live_edit(cmd.updates)
        said = ", ".join(f"{k} {old} → {new}" for k, old, new in changes) or "no change"
        return f"{said} from step {self.step + 1}", changes

    def live_edit(self, updates: dict[str, Any]) -> list[list]:
        """Change live keys mid-run (C.with_live_updates names any refused key); saved to config.toml, so a
        resume continues with them. Returns [key, old, new] per changed key."""
        new = C.with_live_updates(self.cfg, updates, "live edit")
        changes = [[k, a, b] for k, (a, b) in C.diff(self.cfg, new).items()]
        if not changes:
            return []
        refused = None
        if self.dist.is_main:  # saved first: an edit the disk refuses is not made
            try:
                C.save(new, self.run_dir / rundir.CONFIG)
            except RecordError as err:
                refused = err
        if self.dist.from_main(str(refused) if refused else None):  # every rank makes rank 0's choice
            raise refused or EditNotSaved("rank 0 could not save config.toml")
        self.cfg = new
        self.watcher.set_config(new)
        if hasattr(self, "plan") and self.plan.reconfigure(new):
            self._plan_changed()
        if any(k.startswith("eval.") and k not in ("eval.interval", "eval.online") for k, _, _ in changes):
            self.__dict__.pop("eval_set", None)  # val_data_mode / qmv / rsr: the eval images change
        return changes

    def _plan_changed(self) -> None:
        self.total_steps = self.plan.total_steps
        self._emit(PlanChanged(self.step, self.total_steps, list(self.plan.milestones), self.plan.describe()))

    def _tick(self) -> None:
        """Training time so far, for the budget plan: since the last tick, unless a pause was in between."""
        now = time.perf_counter()
        self._train_s += now - self._t_mark
        self._t_mark = now

    def _hold_while_paused(self, poll: Any, note: str = "") -> None:
        """Paused: wait here, ``poll`` applying the commands that come, until continue or stop."""
        if not self._paused.is_set() or self._stop.is_set():
            return
        self._set_state(RunState.PAUSED, note)
        while self._paused.is_set() and not self._stop.is_set():
            self._wake.wait(runctl.POLL_S * 4)
            self._wake.clear()
            poll()
        if not self._stop.is_set():
            self._set_state(RunState.RUNNING, "continued")
        self._t_mark = time.perf_counter()  # paused time is not training time

    def _eval_commands(self) -> None:
        """Between evaluation batches: pause, continue and stop act now; other commands wait for the next step."""
        for cmd in self._take_commands():
            if isinstance(cmd, Command) and cmd.op in (Op.PAUSE, Op.STOP, Op.CONTINUE):
                self._emit(CommandAck(cmd.id, cmd.op.value, True, self.step, self._apply(cmd)[0]
                                      + " (during an evaluation)", cmd.sender))
            else:
                self._deferred.append(cmd)

    def _eval_interrupt(self) -> bool:
        """Between evaluation batches: True ends the evaluation (stop). A pause holds it here until continue or
        stop."""
        self._eval_commands()
        self._hold_while_paused(self._eval_commands, "during an evaluation")
        return self._stop.is_set()

    # --- evaluation ------------------------------------------------------------------------
    def _evaluated_at_step(self) -> bool:
        return getattr(self, "_last_eval_step", -1) == self.step

    def _evaluate(self) -> None:
        cfg = self.cfg
        if not hasattr(self, "eval_set"):
            self.eval_set = eval_dataset(cfg, cfg.train.seed)
            n, bs, d = len(self.eval_set), cfg.data.batch_size, self.dist
            # data-parallel: each rank evaluates every world-th batch, gathered to rank 0 (engine.evaluation.evaluate)
            self.eval_loader = make_loader(self.eval_set, eval_indices(n, bs, d.rank, d.world), bs,
                                           cfg.data.workers, self.device.type, drop_last=False)
            self._eval_batches = -(-(-(-n // bs)) // d.world)  # the longest rank's batches
        args = (self.eval_loader, cfg, self.device, self.eval_set.coco, self.eval_set.cat_ids)
        shard = {"dist": self.dist, "batches": self._eval_batches} if self.dist.active else {}
        try:
            m = evaluate(self.ema.module, *args, interrupt=self._eval_interrupt, **shard)
            online = (evaluate(self.model, *args, interrupt=self._eval_interrupt, **shard) if cfg.eval.online
                      else {})
        except EvalInterrupted:  # stopped mid-way: the checkpoint of this step redoes it on resume
            return
        self._last_eval_step = self.step
        self._emit(EvalMetrics(step=self.step, epoch=self.epoch, time=time.time(), mode=cfg.eval.val_data_mode,
                               images=int(m["images"]), online_mAP=online.get("mAP"),
                               online_AP50=online.get("AP50"), errors=m.get("errors"),
                               **{k: float(m[k]) for k in COCO_METRICS + LOSSES}))
        improved = m["mAP"] > self.best_map
        if improved:
            self.best_map = float(m["mAP"])
        self._save(ring=True)
        if improved:
            self._save_best()

    # --- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "format": ckpt_io.FORMAT,
            "config": self.cfg.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"total_steps": self.total_steps, "lr": self._lr(self.step),
                         "plan": self.plan.state_dict()},
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "sampler": {"epoch": self.step // self.steps_per_epoch, "position": self.step % self.steps_per_epoch},
            "best_map": self.best_map,
            "last_eval_step": getattr(self, "_last_eval_step", -1),
            "rng": ckpt_io.rng_state(),
            "world_size": self.dist.world,
            "emergency": self._emergency_reason,  # "" for an ordinary checkpoint, else the failure it outlived
            # …and the metric lines the disk refused before it, written back by the resume: nothing recorded is lost
            "unwritten": list(self._record.unwritten) if self._emergency_reason and self._record else [],
        }

    def _save(self, ring: bool = False) -> None:
        """last.pt always; at evaluations also a ring file (checkpoints/step-N.pt) that remedies rewind to.
        Data-parallel: every rank comes here at the same step; the ranks check they agree, rank 0 writes, and
        a failed write stops them all."""
        self._check_ranks_agree()
        error = None
        if self.dist.is_main:
            try:
                self._write_checkpoint(ring)
            except StopRun as err:
                error = str(err)
        error = self.dist.from_main(error)
        if error:
            raise StopRun(error) from None

    def _check_ranks_agree(self) -> None:
        """Every rank at the same step with the same lr and weights: what a command applied at different steps,
        or any drift, would break. Checked at each checkpoint of a data-parallel run."""
        if not self.dist.active:
            return
        with torch.no_grad():
            weights = float(sum(p.double().sum() for p in self.model.parameters()))
        seen = self.dist.gather((self.step, self._lr(self.step), weights))
        if any(s != seen[0] for s in seen):
            raise StopRun(f"ranks disagree at a checkpoint (step, lr, weight sum per rank: {seen}); "
                          "resume from the last checkpoint")

    def _write_checkpoint(self, ring: bool) -> None:
        last = rundir.last_checkpoint(self.run_dir)
        path = rundir.ring_checkpoint(self.run_dir, self.step) if ring else last
        try:
            # last.pt first: it is what resume reads, so a kill between the two writes never leaves a ring file
            # newer than last.pt (the ring entry is then simply missing)
            ckpt_io.save_atomic(self._state(), last)
            if ring:
                ckpt_io.link_atomic(last, path)
                # the oldest ring file (the first evaluation's) stays: 13.1's rewind, to before the 2nd epoch
                for old in rundir.ring_checkpoints(self.run_dir)[1:-self.cfg.train.keep_checkpoints]:
                    old.unlink(missing_ok=True)
        except OSError as err:  # a full disk inside torch.save arrives here too (checkpoint.save_atomic)
            prev = ckpt_io.peek(last, "step") if last.exists() else None
            intact = f"the previous checkpoint (step {prev}) is intact" if prev is not None else "no checkpoint yet"
            import errno

            full = err.errno in (errno.ENOSPC, errno.EDQUOT)
            what = (f"no space left on {last.parent} ({err.strerror})" if full
                    else f"could not write {path} ({err.strerror or err})")
            then = "Free disk space, then resume" + ("" if prev is not None else " (it starts again from step 0)")
            raise StopRun(f"{what}; {intact}. {then}") from None
        self._saved_step = self.step
        self._emit(CheckpointSaved(str(path), self.step, self.step // self.steps_per_epoch, False))

    def _save_best(self) -> None:
        best = rundir.best_checkpoint(self.run_dir)
        ckpt_io.link_atomic(rundir.last_checkpoint(self.run_dir), best)
        self._emit(CheckpointSaved(str(best), self.step, self.step // self.steps_per_epoch, True))

    def _rescaled_step(self, step: int, world: int) -> int:
        """The step of this run at which ``step`` of a run with ``world`` processes stood: the same epoch and the
        same global sample position in it, rounded down to a whole global batch of this run."""
        bs = self.cfg.data.batch_size
        epoch, position = divmod(step, max(1, len(self.train_set) // (bs * world)))
        return epoch * self.steps_per_epoch + position * bs * world // (bs * self.dist.world)

    def _load(self, path: Path) -> None:
        if self.dist.active:  # rank 0 reads, every rank gets it (other machines need not see the run folder)
            state = self.dist.from_main(ckpt_io.load(path, map_location="cpu") if self.dist.is_main else None)
        else:
            state = ckpt_io.load(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self._saved_step = self.step
        self.best_map = float(state["best_map"])
        self._last_eval_step = int(state.get("last_eval_step", -1))
        saved_step, saved_world = self.step, int(state.get("world_size", 1))
        if saved_world != self.dist.world:  # another process count: the same global sample position
            self.step = self._rescaled_step(saved_step, saved_world)
            self._last_eval_step = self.step if self._last_eval_step == saved_step else -1
            plan = state.get("schedule", {}).get("plan") or {}
            self.total_steps, self._train_s = self.plan.total_steps, float(plan.get("elapsed_s", 0.0))
        elif "plan" in state.get("schedule", {}):
            self.plan.load_state_dict(state["schedule"]["plan"])
            self.plan.reconfigure(self.cfg)  # a resume --set of a live key (epochs, milestones) re-places the plan
            self.total_steps, self._train_s = self.plan.total_steps, self.plan.elapsed_s
        ckpt_io.set_rng_state(state["rng"])
        if not self.dist.is_main:
            return
        dropped = self._record.trim(saved_step)
        for line in state.get("unwritten", []):
            if int(line.get("step", 0)) <= saved_step:
                self._record.record(from_json(line))
        for line in rundir.read_metrics(self.run_dir):  # the rules judge the whole run, not just this part
            self.watcher.observe(line)
        for event in rundir.read_events(self.run_dir):  # what was reported before stays reported once
            if event.get("kind") == "diagnosis" and int(event.get("step", 0)) <= self.step:
                self.watcher.remember(event)
        repaired = ckpt_io.repair_best(self.run_dir, state, path)  # a kill between the last.pt and best.pt writes
        if repaired:
            self._emit(Log(repaired, "warning"))
        note = f"resumed from {path} at step {self.step}"
        if saved_world != self.dist.world:
            note = (f"resumed from {path} with {self.dist.world} process(es) where it was written by {saved_world}: "
                    f"step {saved_step} of global batch {self.cfg.data.batch_size * saved_world} continues as step "
                    f"{self.step} of global batch {self.cfg.data.batch_size * self.dist.world}, at the same global "
                    "sample position (rounded down to a whole batch); not bit-exact")
        if dropped:
            note += f"; dropped {dropped} metric lines logged after that checkpoint (they are redone)"
        self._emit(Log(note))
