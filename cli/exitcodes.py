"""The exit statuses of `nanxi-tune`, defined once: the CLI returns them, `--help` and the README list them.

No imports beyond the standard library: the CLI reads this before torch loads.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    FINISHED = 0   # the run (or command) completed
    FAILED = 1     # the run or command failed: data, checkpoint, out of memory, non-finite loss …
    BAD_INPUT = 2  # the command line, a preset or a --set value is invalid, or the folder is not a run
    STOPPED = 3    # stopped before the end by request, --max-steps or SIGINT/SIGTERM/SIGHUP; resumable
    BUSY = 4       # the run folder is owned by another live process; attach to it instead
    INTERRUPTED = 130  # Ctrl-C in a command that is not a training run (eval, stats, …)


MEANING = {
    ExitCode.FINISHED: "finished",
    ExitCode.FAILED: "failed (the message says why and what to do)",
    ExitCode.BAD_INPUT: "bad input: command line, preset, --set value, or not a run folder",
    ExitCode.STOPPED: "stopped by request, --max-steps or a signal (SIGINT/SIGTERM/SIGHUP); "
                      "`nanxi-tune resume RUN` continues it",
    ExitCode.BUSY: "the run folder is owned by another live process",
    ExitCode.INTERRUPTED: "Ctrl-C in a command other than train/resume",
}


def epilog() -> str:
    """The exit-status table for `nanxi-tune --help`."""
    return "exit status:\n" + "\n".join(f"  {int(c):<4d} {MEANING[c]}" for c in ExitCode)
