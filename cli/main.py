"""`nanxi-tune`: the TUI by default, headless subcommands for scripts and SSH sessions.

Imports stay lazy: `--help` must not import torch, and the TUI shows its first frame before torch loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from nanxi_tune.cli.exitcodes import epilog

    p = argparse.ArgumentParser(
        prog="nanxi-tune", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog(),
        description="Tuning assistant for heatmap detectors (CenterNet/TTFNet family), after Nanxi's tuning notes. "
                    "With no command, opens the TUI.")
    p.add_argument("--preset", default="demo", help="preset name or .toml path for the TUI (default: demo)")
    p.add_argument("--runs", default="runs", help="folder holding run directories (default: runs)")
    p.add_argument("--group", metavar="NAME", help="share the runs this starts with group NAME's members (they may "
                   "read, attach, control and resume them); default: private to you. Also NANXI_TUNE_GROUP")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    o = sub.add_parser("open", help="open an existing run directory in the TUI")
    o.add_argument("run_dir")

    for family in families():  # each command family owns its parsers
        family.add_parsers(sub)
    for command in sub.choices.values():  # every --set: repeating it adds to the earlier values
        for action in command._actions:
            if action.dest == "sets":
                action.__class__ = _Accumulate
    return p


class _Accumulate(argparse.Action):
    """`--set a=1 --set b=2 c=3` gives [a=1, b=2, c=3] (argparse's "store" would keep the last one only)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *(values or [])])


def families() -> list:
    """The command modules, each with ``add_parsers(sub)`` and ``COMMANDS`` (name → function of the args)."""
    from nanxi_tune.cli import (autopilot_cmd, ctl_cmd, diagnose_cmd, predict_cmd, remedy_cmd, study_cmd, train_cmd,
                                workflows_cmd)

    return [train_cmd, diagnose_cmd, ctl_cmd, remedy_cmd, workflows_cmd, study_cmd, autopilot_cmd, predict_cmd]


RUNS = ("train", "resume", "autopilot")  # commands that train: stop signals are theirs from the first instant


def main(argv: list[str] | None = None) -> int:
    from nanxi_tune.cli.stopsignals import GUARD, StoppedBeforeStart

    if any(a in RUNS for a in (sys.argv[1:] if argv is None else argv)):
        GUARD.install()  # before anything slow: a SIGTERM while torch loads must not exit 143 silently
    try:
        return _main(argv)
    except PermissionError as err:  # someone else's private run (engine.run.access): say whose, and how to share
        from nanxi_tune.engine.run.access import denied
        from nanxi_tune.cli.exitcodes import ExitCode

        print(f"nanxi-tune: {denied(err)}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except StoppedBeforeStart as sig:
        from nanxi_tune.cli.exitcodes import ExitCode

        print(f"nanxi-tune: {sig.name}: stopped before training started; nothing was written", file=sys.stderr)
        return ExitCode.STOPPED
    finally:
        GUARD.restore()


def _main(argv: list[str] | None) -> int:
    from nanxi_tune.cli.exitcodes import ExitCode
    from nanxi_tune.cli.stopsignals import GUARD

    args = _parser().parse_args(argv)
    if args.command not in RUNS:
        GUARD.restore()
    from nanxi_tune.engine.run.access import AccessError, share_with

    try:
        share_with(args.group)
    except AccessError as err:
        print(f"nanxi-tune: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    from nanxi_tune.engine.config import ConfigError

    run_dir = getattr(args, "run_dir", None)
    if run_dir and not Path(run_dir).exists() and (Path(args.runs) / run_dir).exists():
        run_dir = args.run_dir = str(Path(args.runs) / run_dir)  # a run's bare name: looked up under --runs
    from nanxi_tune.engine.run.rundir import CONFIG, OWNER
    from nanxi_tune.engine.workflows.autopilot_plan import is_autopilot
    from nanxi_tune.engine.workflows.study import is_study

    # a study or an autopilot (resume, ctl, open), or a job's folder such as a remedy's lr trials (ctl)
    study_ok = run_dir and ((args.command in ("resume", "ctl", "open") and (is_study(run_dir)
                                                                            or is_autopilot(run_dir)))
                            or (args.command == "ctl" and (Path(run_dir) / OWNER).exists()))
    if args.command != "train" and run_dir and not (Path(run_dir) / CONFIG).exists() and not study_ok:
        what = "not a run directory (no config.toml)" if Path(run_dir).exists() else "no such file or folder"
        print(f"nanxi-tune: {run_dir}: {what}; runs are the folders under {args.runs}/ — the TUI's Runs tab lists them"
              + ("; a run stopped as it started saved no checkpoint yet: start it again with `nanxi-tune train`"
                 if args.command == "resume" and Path(run_dir).is_dir() else ""), file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        if args.command in (None, "open"):
            from nanxi_tune.tui.app import run_app

            run_app(preset=args.preset, open_run=Path(args.run_dir) if args.command == "open" else None,
                    runs_root=Path(args.runs))
            return ExitCode.FINISHED
        command = next(f.COMMANDS[args.command] for f in families() if args.command in f.COMMANDS)
        return command(args)
    except ConfigError as err:
        print(f"nanxi-tune: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `nanxi-tune ctl RUN status | head -1`: the reader had what it wanted
        from nanxi_tune.cli.drive import silence

        silence()
        return ExitCode.FINISHED
    except Exception as err:  # noqa: BLE001 - the engine's own errors already say what to do: no traceback
        if type(err).__name__ in USER_ERRORS:
            print(f"nanxi-tune: {err}", file=sys.stderr)
            return USER_ERRORS[type(err).__name__]
        raise


# Errors whose message names the file or key and the fix (engine.data.dataset, checkpoint, remedy, sweep, runctl), with
# the exit status each gives. Matched by name so the CLI need not import the engine (and torch) to catch them.
USER_ERRORS = {"DataError": 1, "CheckpointError": 1, "RemedyError": 1, "SweepError": 1, "StudyError": 2,
               "AutopilotError": 2,
               "RunBusy": 4}  # RunBusy: the run folder is owned by another live process (ExitCode.BUSY)


if __name__ == "__main__":
    sys.exit(main())
