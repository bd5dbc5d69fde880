"""Headless commands: train, resume, eval, presets.

The trainer runs in a thread; the main thread shows progress (Rich on a terminal; plain lines under nohup, a
pipe or CI; JSON lines with --json) and turns SIGINT / SIGTERM / SIGHUP into a stop request, so a dropped SSH
session or Ctrl-C ends with a checkpoint and a resume hint. Exit statuses: engine.exitcodes.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nanxi_tune.engine import config as C
from nanxi_tune.engine import rundir
from nanxi_tune.engine.exitcodes import ExitCode
from nanxi_tune.engine.vocab import COCO_METRICS, LOSSES
from nanxi_tune.tui.stopsignals import GUARD, StoppedBeforeStart

console = Console(stderr=True)


def presets(args) -> int:
    table = Table("preset", "input", "data.train", "batch", "base_lr", title="bundled presets")
    for name in C.preset_names():
        cfg = C.load_preset(name)
        table.add_row(name, str(cfg.preprocess.input_size), cfg.data.train, str(cfg.data.batch_size),
                      f"{cfg.train.base_lr:g}")
    Console().print(table)
    return 0


def train(args) -> int:
    from nanxi_tune.tui import launch

    if launch.wanted(args):  # --nproc-per-node / --nnodes: the run goes through torchrun
        return launch.launch(args, "train")
    cfg = C.load_preset(args.preset)
    if args.sets:
        cfg = C.with_updates(cfg, C.parse_sets(args.sets))
    given = Path(args.run_dir) if args.run_dir else None
    run_dir, made = None, False
    if launch.rank() == 0:  # a torchrun worker of another rank gets rank 0's folder (launch.shared)
        if given is not None and ((given / rundir.METRICS).exists() or (given / rundir.CONFIG).exists()):
            console.print(f"[red]nanxi-tune: {given} already holds a run; continue it with  nanxi-tune resume "
                          f"{given}  or pick another --run-dir", soft_wrap=True)  # the others: run_dir None
        else:
            made = given is None or not given.exists()
            run_dir = given or rundir.new_run_dir(Path(args.runs), _run_name(cfg))
    cfg, run_dir = launch.shared(cfg, run_dir)
    if run_dir is None:
        return ExitCode.BAD_INPUT
    try:
        from nanxi_tune.engine.trainer import Trainer

        return _drive(lambda cb: Trainer(cfg, run_dir, cb, max_steps=args.max_steps), run_dir, args)
    except StoppedBeforeStart as sig:
        return _stopped_before_start(sig.name, run_dir, made)


def resume(args) -> int:
    from nanxi_tune.tui import launch

    if launch.wanted(args):
        return launch.launch(args, "resume")
    run_dir = Path(args.run_dir)
    updates = C.parse_sets(args.sets) if args.sets else None
    try:
        from nanxi_tune.engine.trainer import Trainer

        if not rundir.last_checkpoint(run_dir).exists():
            return _drive(lambda cb: _restart(run_dir, cb, updates, args.max_steps), run_dir, args)
        return _drive(lambda cb: Trainer.resume(run_dir, cb, updates, max_steps=args.max_steps), run_dir, args)
    except StoppedBeforeStart as sig:
        return _stopped_before_start(sig.name, run_dir, False)


def _restart(run_dir: Path, callback, updates: dict | None, max_steps: int | None):
    """A run killed before its first checkpoint: start it again from step 0 with its config.toml (and any
    ``updates``), dropping what the killed attempt logged. Raises RunBusy if a live process owns the folder."""
    from nanxi_tune.engine import checkpoint as ckpt_io
    from nanxi_tune.engine import runctl
    from nanxi_tune.engine.trainer import Trainer

    from nanxi_tune.tui import launch

    cfg = C.load(run_dir / rundir.CONFIG)
    if updates:
        cfg = C.with_updates(cfg, updates, "resume")
    if launch.rank() != 0:  # a torchrun worker of another rank: rank 0 owns and cleans the folder
        return Trainer(cfg, run_dir, callback, max_steps=max_steps)
    owner = runctl.RunOwner.acquire(run_dir)  # before anything is removed: never under a live trainer's feet
    try:
        for name in (rundir.METRICS, rundir.EVENTS, rundir.JOURNAL):
            (run_dir / name).unlink(missing_ok=True)
        if (run_dir / rundir.CHECKPOINTS).is_dir():
            ckpt_io.remove_stale_temps(run_dir / rundir.CHECKPOINTS)
        if updates:
            C.save(cfg, run_dir / rundir.CONFIG)
    except BaseException:
        owner.release()
        raise
    console.print(f"{run_dir} was stopped before its first checkpoint: starting it again from step 0 with its "
                  f"{rundir.CONFIG}", soft_wrap=True)
    return Trainer(cfg, run_dir, callback, max_steps=max_steps, owner=owner)


def _stopped_before_start(name: str, run_dir: Path, made: bool) -> int:
    """A signal before training started: nothing to checkpoint. A folder this command made and nothing wrote
    to (no checkpoint, no metrics) is removed, so a cancelled start leaves no empty run behind."""
    wrote = rundir.last_checkpoint(run_dir).exists() or bool(rundir.read_metrics(run_dir))
    if made and not wrote and run_dir.is_dir():
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        where = "nothing was written"
    elif wrote:
        where = f"resume with:  nanxi-tune resume {run_dir}"
    else:
        where = f"nothing was trained; {run_dir} is left as it was"
    console.print(f"{name}: stopped before training started; {where}", soft_wrap=True)
    return ExitCode.STOPPED


def eval(args) -> int:  # noqa: A001 - the subcommand's name
    from nanxi_tune.engine.evaluate_run import evaluate_run

    updates = C.parse_sets(args.sets) if args.sets else {}
    m = evaluate_run(Path(args.run_dir), args.checkpoint, updates)
    table = Table("metric", "value", title=f"{args.run_dir} ({args.checkpoint}.pt, {m['mode']}, {m['images']} images)")
    for k in COCO_METRICS + LOSSES:
        table.add_row(k, f"{m[k]:.4f}")
    Console().print(table)
    return 0


def _run_name(cfg: C.Config) -> str:
    """<preset>-<time>: the preset's file stem reduced to a safe folder name (a preset's own `preset` key may
    hold anything, a 10 MB string included)."""
    import re
    import time

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(cfg.preset[:200]).stem if cfg.preset else "").strip("-.")[:40]
    return f"{stem or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_until_signalled(thread: threading.Thread, stop, say) -> None:
    """Start ``thread`` and wait for it; SIGINT / SIGTERM / SIGHUP call ``stop`` (finish the step, checkpoint)."""

    def on_signal(signum, _frame) -> None:
        say(signal.Signals(signum).name)
        stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
           if signal.getsignal(s) != signal.SIG_IGN}  # nohup ignores SIGHUP: keep ignoring it
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def output_mode(args) -> str:
    """rich (a terminal), plain (nohup, a pipe, CI: a line every few steps and at every event), json, quiet."""
    import sys

    if getattr(args, "json", False):
        return "json"
    if getattr(args, "quiet", False):
        return "quiet"
    return "rich" if sys.stdout.isatty() and sys.stderr.isatty() else "plain"


class _Rich:
    """A live progress bar on a terminal."""

    def __init__(self, args):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                                 refresh_per_second=4)
        self.task = self.progress.add_task("starting", total=None, info="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def say(self, text: str) -> None:
        self.progress.console.print(text)

    def __call__(self, e) -> None:
        kind = e.kind
        if kind == "step":
            self.progress.update(self.task, description=f"epoch {e.epoch}", completed=e.step, total=e.total_steps,
                                 info=f"loss {e.loss:.3f} map {e.loss_map:.3f} off {e.loss_offset:.3f} "
                                      f"shape {e.loss_shape:.3f} lr {e.lr:.2g} {e.images_per_s:.0f} img/s")
        elif kind == "eval":
            self.say(_eval_text(e))
        elif kind == "log":
            self.say(f"[{'yellow' if e.level == 'warning' else 'dim'}]{e.message}")
        elif kind == "diagnosis":
            self.say(f"[yellow]{e.severity} {e.rule} (§{e.section}): {e.message}")


class _Plain:
    """Plain lines for logs (nohup, pipes, CI): a progress line every ``every`` steps or ``seconds`` (whichever
    comes first), and a line at every evaluation, state change, checkpoint, warning and diagnosis."""

    def __init__(self, args, quiet: bool = False, every: int = 10, seconds: float = 10.0):
        import sys

        self.out, self.quiet = sys.stderr, quiet
        self.every = max(1, getattr(args, "print_every", None) or every)
        self.seconds = seconds
        self._last_step, self._last_time = None, 0.0
        self._first: tuple[int, float] | None = None  # (step, time) of the first step seen: the ETA's base

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def say(self, text: str) -> None:
        import re
        import time

        text = re.sub(r"\[/?(yellow|dim|red|bold)\]", "", text)  # the Rich styles used here
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.out, flush=True)

    def __call__(self, e) -> None:
        import time

        kind, now = e.kind, time.monotonic()
        if self.quiet:
            if kind == "log" and e.level == "warning":
                self.say(f"warning: {e.message}")
            return
        if kind == "step":
            if self._first is None:
                self._first = (e.step, now)
            due = (self._last_step is None or e.step - self._last_step >= self.every
                   or now - self._last_time >= self.seconds or e.step == e.total_steps)
            if due:
                self._last_step, self._last_time = e.step, now
                self.say(self.step_text(e, now))
        elif kind == "eval":
            self.say(_eval_text(e))
        elif kind == "state":
            self.say(f"state {e.state} at step {e.step}" + (f": {e.message}" if e.message else ""))
        elif kind == "checkpoint":
            self.say(f"checkpoint {'best ' if e.best else ''}saved at step {e.step}: {e.path}")
        elif kind == "log":
            self.say(f"{'warning: ' if e.level == 'warning' else ''}{e.message}")
        elif kind == "diagnosis":
            self.say(f"{e.severity} {e.rule} (§{e.section}): {e.message}")
        elif kind == "error":
            self.say(f"error: {e.error}")

    def step_text(self, e, now: float) -> str:
        eta = ""
        if self._first is not None and e.step > self._first[0] and e.total_steps:
            rate = (now - self._first[1]) / (e.step - self._first[0])
            eta = f"  ETA {_hms(rate * (e.total_steps - e.step))}"
        pct = f" ({100 * e.step / e.total_steps:.0f}%)" if e.total_steps else ""
        return (f"step {e.step}/{e.total_steps}{pct} epoch {e.epoch}  loss {e.loss:.4f} map {e.loss_map:.4f} "
                f"offset {e.loss_offset:.4f} shape {e.loss_shape:.4f}  lr {e.lr:.3g}  "
                f"{e.images_per_s:.1f} img/s{eta}")


class _Json(_Plain):
    """JSON Lines on stdout, one per event (events.jsonl's form), for machines; human messages stay on stderr."""

    def __call__(self, e) -> None:
        import json
        import sys

        print(json.dumps(e.to_json(), allow_nan=True, ensure_ascii=False), file=sys.stdout, flush=True)


def _eval_text(e) -> str:
    return (f"step {e.step}: val mAP {e.mAP:.4f} AP50 {e.AP50:.4f} (val loss {e.loss:.3f}, {e.mode}, "
            f"{e.images} images)")


def _hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _drive(make_trainer, run_dir: Path, args) -> int:
    """Run a trainer in a thread, the main thread showing progress and turning SIGINT / SIGTERM / SIGHUP into a
    stop request. Returns ExitCode.FINISHED, STOPPED or FAILED."""
    import json
    import sys

    from nanxi_tune.tui import launch

    quiet_rank = launch.rank() != 0  # torchrun: rank 0 speaks for the group
    mode = "quiet" if quiet_rank else output_mode(args)
    view = _Rich(args) if mode == "rich" else _Json(args) if mode == "json" else _Plain(args, quiet=mode == "quiet")
    outcome: dict[str, str] = {}

    def on_event(e) -> None:
        if e.kind == "error":
            outcome["error"] = f"{e.error}\n  → {e.hint}"
        view(e)

    trainer = make_trainer(on_event)
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", trainer.run()), name="trainer")

    def say(name: str) -> None:
        view.say(f"[yellow]{name}: finishing the step, saving a checkpoint…")

    with view:
        if GUARD.installed:  # `nanxi-tune` installed it before torch loaded
            GUARD.attach(trainer.request_stop, say)
            try:
                thread.start()
                while thread.is_alive():
                    thread.join(0.2)
            finally:
                GUARD.detach()
                GUARD.restore()
        else:
            run_until_signalled(thread, trainer.request_stop, say)
    state = result.get("state", "failed")
    code = {"finished": ExitCode.FINISHED, "stopped": ExitCode.STOPPED}.get(state, ExitCode.FAILED)
    launch.finish()
    if quiet_rank:
        return launch.worker_exit(code)
    if mode == "json":
        print(json.dumps({"kind": "exit", "state": state, "code": int(code), "step": trainer.step,
                          "run_dir": str(run_dir), "best_mAP": max(trainer.best_map, 0)}), file=sys.stdout,
              flush=True)
    if code == ExitCode.FAILED:
        console.print(f"[red]run failed: {outcome.get('error', 'see events.jsonl')}", soft_wrap=True)
        console.print(f"run directory: {run_dir}", soft_wrap=True)
    elif code == ExitCode.STOPPED:
        console.print(f"stopped at step {trainer.step}. Resume with:  nanxi-tune resume {run_dir}", soft_wrap=True)
    else:
        console.print(f"finished: {run_dir} (best mAP {max(trainer.best_map, 0):.4f})", soft_wrap=True)
    return launch.worker_exit(code)
