"""Headless commands with Rich progress: train, resume, eval, presets.

The trainer runs in a thread; the main thread draws progress and turns SIGINT / SIGTERM / SIGHUP
into a stop request, so a dropped SSH session or Ctrl-C ends with a checkpoint and a resume hint.
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
    cfg = C.load_preset(args.preset)
    if args.sets:
        cfg = C.with_updates(cfg, C.parse_sets(args.sets))
    run_dir = Path(args.run_dir) if args.run_dir else rundir.new_run_dir(Path(args.runs), _run_name(cfg))
    if (run_dir / rundir.METRICS).exists() or (run_dir / rundir.CONFIG).exists():
        console.print(f"[red]nanxi-tune: {run_dir} already holds a run; continue it with  nanxi-tune resume "
                      f"{run_dir}  or pick another --run-dir", soft_wrap=True)
        return 2
    from nanxi_tune.engine.trainer import Trainer

    return _drive(lambda cb: Trainer(cfg, run_dir, cb, max_steps=args.max_steps), run_dir, args.quiet)


def resume(args) -> int:
    from nanxi_tune.engine.checkpoint import CheckpointError
    from nanxi_tune.engine.trainer import Trainer

    updates = C.parse_sets(args.sets) if args.sets else None
    try:
        return _drive(lambda cb: Trainer.resume(args.run_dir, cb, updates, max_steps=args.max_steps),
                      Path(args.run_dir), args.quiet)
    except CheckpointError as err:
        console.print(f"[red]nanxi-tune: {err}")
        return 1


def eval(args) -> int:  # noqa: A001 - the subcommand's name
    from nanxi_tune.engine.evaluate_run import evaluate_run

    updates = C.parse_sets(args.sets) if args.sets else {}
    m = evaluate_run(Path(args.run_dir), args.checkpoint, updates)
    table = Table("metric", "value", title=f"{args.run_dir} ({args.checkpoint}.pt, {m['mode']}, {m['images']} images)")
    for k in ("mAP", "AP50", "AP75", "APs", "APm", "APl", "loss", "loss_map", "loss_offset", "loss_shape"):
        table.add_row(k, f"{m[k]:.4f}")
    Console().print(table)
    return 0


def _run_name(cfg: C.Config) -> str:
    import time

    return f"{Path(cfg.preset).stem or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_until_signalled(thread: threading.Thread, stop, say) -> None:
    """Start ``thread`` and wait for it; SIGINT / SIGTERM / SIGHUP call ``stop`` (finish the step, checkpoint)."""

    def on_signal(signum, _frame) -> None:
        say(signal.Signals(signum).name)
        stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _drive(make_trainer, run_dir: Path, quiet: bool) -> int:
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                        disable=quiet, refresh_per_second=4)
    task = progress.add_task("starting", total=None, info="")
    outcome: dict[str, str] = {}

    def on_event(e) -> None:
        kind = e.kind
        if kind == "step":
            progress.update(task, description=f"epoch {e.epoch}", completed=e.step, total=e.total_steps,
                            info=f"loss {e.loss:.3f} map {e.loss_map:.3f} off {e.loss_offset:.3f} "
                                 f"shape {e.loss_shape:.3f} lr {e.lr:.2g} {e.images_per_s:.0f} img/s")
        elif kind == "eval":
            progress.console.print(f"step {e.step}: val mAP {e.mAP:.4f} AP50 {e.AP50:.4f} "
                                   f"(val loss {e.loss:.3f}, {e.mode}, {e.images} images)")
        elif kind == "error":
            outcome["error"] = f"{e.error}\n  → {e.hint}"
        elif kind == "log":
            progress.console.print(f"[{'yellow' if e.level == 'warning' else 'dim'}]{e.message}")
        elif kind == "diagnosis":
            progress.console.print(f"[yellow]{e.severity} {e.rule} (§{e.section}): {e.message}")

    trainer = make_trainer(on_event)
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", trainer.run()), name="trainer")

    with progress:
        run_until_signalled(thread, trainer.request_stop,
                            lambda name: progress.console.print(f"[yellow]{name}: finishing the step, "
                                                                "saving a checkpoint…"))
    state = result.get("state", "failed")
    if state == "failed":
        console.print(f"[red]run failed: {outcome.get('error', 'see events.jsonl')}")
        console.print(f"run directory: {run_dir}", soft_wrap=True)
        return 1
    if state == "stopped":
        console.print(f"stopped at step {trainer.step}. Resume with:  nanxi-tune resume {run_dir}", soft_wrap=True)
        return 0
    console.print(f"finished: {run_dir} (best mAP {max(trainer.best_map, 0):.4f})", soft_wrap=True)
    return 0

