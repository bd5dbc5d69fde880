"""The train state: what a checkpoint holds, writing it (last.pt, the ring, best.pt, an emergency save) and
restoring it, with the world-size rescale when a run resumes on another number of processes.

Functions of a Trainer (engine.train.trainer): they read its model, EMA, optimizer, lr plan, step and record."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch

from ..run import checkpoint as ckpt_io
from ..run import rundir
from ..run.stop import StopRun
from ..run.events import CheckpointSaved, Log, from_json


def snapshot(t: Any, emergency: str = "") -> dict[str, Any]:
    """What a checkpoint holds: weights, EMA, optimizer, the lr plan, the step and sampler position, the rng."""
    epoch, position = divmod(t.step, t.steps_per_epoch)
    return {
        "format": ckpt_io.FORMAT,
        "config": t.cfg.model_dump(mode="json"),
        "model": t.model.state_dict(),
        "ema": t.ema.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "schedule": {"total_steps": t.total_steps, "lr": t.lr(t.step), "plan": t.plan.state_dict()},
        "step": t.step,
        "epoch": epoch,
        "sampler": {"epoch": epoch, "position": position},
        "best_map": t.best_map,
        "last_eval_step": t.last_eval_step,
        "rng": ckpt_io.rng_state(),
        "world_size": t.dist.world,
        "emergency": emergency,  # "" for an ordinary checkpoint, else the failure it outlived
        # …and the metric lines the disk refused before it, written back by the resume: nothing recorded is lost
        "unwritten": list(t.record.unwritten) if emergency and t.record else [],
    }


def save(t: Any, ring: bool = False) -> None:
    """last.pt always; at evaluations also a ring file (checkpoints/step-N.pt) that remedies rewind to.
    Data-parallel: every rank comes here at the same step; the ranks check they agree, rank 0 writes, and
    a failed write stops them all."""
    check_ranks_agree(t)
    error = None
    if t.dist.is_main:
        try:
            write(t, ring)
        except StopRun as err:
            error = str(err)
    error = t.dist.from_main(error)
    if error:
        raise StopRun(error) from None


def check_ranks_agree(t: Any) -> None:
    """Every rank at the same step with the same lr and weights: what a command applied at different steps,
    or any drift, would break. Checked at each checkpoint of a data-parallel run."""
    if not t.dist.active:
        return
    with torch.no_grad():
        weights = float(sum(p.double().sum() for p in t.model.parameters()))
    seen = t.dist.gather((t.step, t.lr(t.step), weights))
    if any(s != seen[0] for s in seen):
        raise StopRun(f"ranks disagree at a checkpoint (step, lr, weight sum per rank: {seen}); "
                      "resume from the last checkpoint")


def write(t: Any, ring: bool, emergency: str = "") -> None:
    last = rundir.last_checkpoint(t.run_dir)
    path = rundir.ring_checkpoint(t.run_dir, t.step) if ring else last
    try:
        # last.pt first: it is what resume reads, so a kill between the two writes never leaves a ring file
        # newer than last.pt (the ring entry is then simply missing)
        ckpt_io.save_atomic(snapshot(t, emergency), last)
        if ring:
            ckpt_io.link_atomic(last, path)
            # the oldest ring file (the first evaluation's) stays: 13.1's rewind, to before the 2nd epoch
            for old in rundir.ring_checkpoints(t.run_dir)[1:-t.cfg.train.keep_checkpoints]:
                old.unlink(missing_ok=True)
    except OSError as err:  # a full disk inside torch.save arrives here too (checkpoint.save_atomic)
        prev = ckpt_io.peek(last, "step") if last.exists() else None
        intact = f"the previous checkpoint (step {prev}) is intact" if prev is not None else "no checkpoint yet"
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        what = (f"no space left on {last.parent} ({err.strerror})" if full
                else f"could not write {path} ({err.strerror or err})")
        then = "Free disk space, then resume" + ("" if prev is not None else " (it starts again from step 0)")
        raise StopRun(f"{what}; {intact}. {then}") from None
    t.saved_step = t.step
    t.emit(CheckpointSaved(str(path), t.step, t.step // t.steps_per_epoch, False))


def save_best(t: Any) -> None:
    best = rundir.best_checkpoint(t.run_dir)
    ckpt_io.link_atomic(rundir.last_checkpoint(t.run_dir), best)
    t.emit(CheckpointSaved(str(best), t.step, t.step // t.steps_per_epoch, True))


def emergency_save(t: Any, reason: str) -> str:
    """A failure mid-run: save the weights in memory as last.pt (marked ``emergency`` with the reason) when they
    are newer than the last checkpoint and finite, so nothing since is lost. Returns what to tell the user."""
    if t.dist.active or t.optimizer is None or t.step <= t.saved_step:
        return ""
    with torch.no_grad():
        if not all(bool(torch.isfinite(p).all()) for p in t.model.parameters()):
            return " (the weights in memory are not finite: not saved)"
    try:
        write(t, ring=False, emergency=reason)
    except (StopRun, OSError) as err:
        return f" (an emergency checkpoint could not be written: {str(err).split('. ')[0]})"
    return f"; an emergency checkpoint at step {t.step} holds the weights in memory (resume continues from it)"


def rescaled_step(step: int, world: int, train_images: int, batch_size: int, new_world: int,
                  steps_per_epoch: int) -> int:
    """The step of this run at which ``step`` of a run with ``world`` processes stood: the same epoch and the
    same global sample position in it, rounded down to a whole global batch of this run."""
    epoch, position = divmod(step, max(1, train_images // (batch_size * world)))
    return epoch * steps_per_epoch + position * batch_size * world // (batch_size * new_world)


def restore(t: Any, path: Path) -> None:
    """The trainer continues from the checkpoint at ``path``: weights, optimizer, step, plan, rng; rank 0 trims
    the record to it, writes back what the disk refused, and tells the rules what was already reported."""
    if t.dist.active:  # rank 0 reads, every rank gets it (other machines need not see the run folder)
        state = t.dist.from_main(ckpt_io.load(path, map_location="cpu") if t.dist.is_main else None)
    else:
        state = ckpt_io.load(path, map_location=t.device)
    t.model.load_state_dict(state["model"])
    t.ema.load_state_dict(state["ema"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.step = t.saved_step = int(state["step"])
    t.best_map = float(state["best_map"])
    t.last_eval_step = int(state.get("last_eval_step", -1))
    saved_step, saved_world = t.step, int(state.get("world_size", 1))
    plan = state.get("schedule", {}).get("plan")
    if saved_world != t.dist.world:  # another process count: the same global sample position
        t.step = rescaled_step(saved_step, saved_world, len(t.train_set), t.cfg.data.batch_size, t.dist.world,
                               t.steps_per_epoch)
        t.last_eval_step = t.step if t.last_eval_step == saved_step else -1
        t.total_steps, t.train_s = t.plan.total_steps, float((plan or {}).get("elapsed_s", 0.0))
    elif plan is not None:
        t.plan.load_state_dict(plan)
        t.plan.reconfigure(t.cfg)  # a resume --set of a live key (epochs, milestones) re-places the plan
        t.total_steps, t.train_s = t.plan.total_steps, t.plan.elapsed_s
    ckpt_io.set_rng_state(state["rng"])
    if not t.dist.is_main:
        return
    dropped = t.record.trim(saved_step)
    for line in state.get("unwritten", []):
        if int(line.get("step", 0)) <= saved_step:
            t.record.record(from_json(line))
    for line in rundir.read_metrics(t.run_dir):  # the rules judge the whole run, not just this part
        t.watcher.observe(line)
    for event in rundir.read_events(t.run_dir):  # what was reported before stays reported once
        if event.get("kind") == "diagnosis" and int(event.get("step", 0)) <= t.step:
            t.watcher.remember(event)
    repaired = ckpt_io.repair_best(t.run_dir, state, path)  # a kill between the last.pt and best.pt writes
    if repaired:
        t.emit(Log(repaired, "warning"))
    note = f"resumed from {path} at step {t.step}"
    if saved_world != t.dist.world:
        bs = t.cfg.data.batch_size
        note = (f"resumed from {path} with {t.dist.world} process(es) where it was written by {saved_world}: "
                f"step {saved_step} of global batch {bs * saved_world} continues as step {t.step} of global batch "
                f"{bs * t.dist.world}, at the same global sample position (rounded down to a whole batch); "
                "not bit-exact")
    if dropped:
        note += f"; dropped {dropped} metric lines logged after that checkpoint (they are redone)"
    t.emit(Log(note))
