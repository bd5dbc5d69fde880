"""Driving a trainer from the shell: stop signals to a checkpoint, progress output (Rich on a terminal; plain lines
under nohup, a pipe or CI; JSON lines with --json), and the exit status from how the run ended (cli.exitcodes).
train, resume and remedy share it."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nanxi_tune.cli.exitcodes import ExitCode
from nanxi_tune.cli.stopsignals import GUARD

class SteadyConsole(Console):
    """A Console whose reader going away (``… | head``, a dropped terminal) silences it instead of ending the
    command (Rich's default raises SystemExit(1), which would stop a training run). It never wraps a printed line:
    a command to copy (``Resume with: nanxi-tune resume PATH``) must stay one line in a log file too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("soft_wrap", True)
        super().__init__(*args, **kwargs)

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence()


console = SteadyConsole(stderr=True)


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

    def begin(self, run_dir: Path) -> None:
        self.say(f"run folder: {run_dir}")

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

    def begin(self, run_dir: Path) -> None:
        """The first line names the run folder (quiet: its one line, the outcome, names it)."""
        if not self.quiet:
            self.say(f"run folder: {run_dir} (resume: nanxi-tune resume {run_dir})")

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

    def begin(self, run_dir: Path) -> None:
        import json
        import sys

        print(json.dumps({"kind": "run", "run_dir": str(run_dir)}), file=sys.stdout, flush=True)

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


def drive(make_trainer, run_dir: Path, args) -> int:
    """Run a trainer in a thread, the main thread showing progress and turning SIGINT / SIGTERM / SIGHUP into a
    stop request. Returns ExitCode.FINISHED, STOPPED or FAILED."""

    from nanxi_tune.cli import launch

    quiet_rank = launch.rank() != 0  # torchrun: rank 0 speaks for the group
    mode = "quiet" if quiet_rank else output_mode(args)
    view = _Rich(args) if mode == "rich" else _Json(args) if mode == "json" else _Plain(args, quiet=mode == "quiet")
    outcome: dict[str, str] = {}

    def on_event(e) -> None:
        if e.kind == "error":
            outcome["error"] = f"{e.error}\n  → {e.hint}"
        view(e)

    try:
        view.begin(run_dir)
    except OSError:
        silence()
    trainer = make_trainer(on_event)
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", trainer.run()), name="trainer")

    def say(name: str) -> None:
        view.say(f"[yellow]{name}: finishing the step, saving a checkpoint…")

    try:
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
    except OSError:  # the output went away (a closed pipe, a dead terminal): the run itself is what counts
        silence()
        while thread.is_alive():
            thread.join(0.2)
    state = result.get("state", "failed")
    code = {"finished": ExitCode.FINISHED, "stopped": ExitCode.STOPPED}.get(state, ExitCode.FAILED)
    launch.finish()
    if quiet_rank:
        return launch.worker_exit(code)
    try:
        _report(mode, state, code, trainer, run_dir, outcome)
    except OSError:
        silence()
    return launch.worker_exit(code)


def silence() -> None:
    """Our output is gone (``train … | head`` after head exited, a dropped terminal): send what is left to
    /dev/null, so neither a later print nor the interpreter's last flush fails the command."""
    import os
    import sys

    null = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(null, stream.fileno())
        except (OSError, ValueError):
            pass
    os.close(null)


def _report(mode: str, state: str, code: int, trainer, run_dir: Path, outcome: dict[str, str]) -> None:
    import json
    import sys

    if mode == "json":
        print(json.dumps({"kind": "exit", "state": state, "code": int(code), "step": trainer.step,
                          "run_dir": str(run_dir), "best_mAP": max(trainer.best_map, 0)}), file=sys.stdout,
              flush=True)
    if code == ExitCode.FAILED:
        console.print(f"[red]run failed: {outcome.get('error', 'see events.jsonl')}")
        console.print(f"run directory: {run_dir}")
    elif code == ExitCode.STOPPED:
        console.print(f"stopped at step {trainer.step}. Resume with: nanxi-tune resume {run_dir}")
    else:
        console.print(f"finished: {run_dir} (best mAP {max(trainer.best_map, 0):.4f})")
