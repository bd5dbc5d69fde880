"""`nanxi-tune`: the TUI by default, headless subcommands for scripts and SSH sessions.

Imports stay lazy: `--help` must not import torch, and the TUI shows its first frame before torch loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from nanxi_tune.engine.exitcodes import epilog

    p = argparse.ArgumentParser(
        prog="nanxi-tune", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog(),
        description="Tuning assistant for heatmap detectors (CenterNet/TTFNet family), after Nanxi's tuning notes. "
                    "With no command, opens the TUI.")
    p.add_argument("--preset", default="demo", help="preset name or .toml path for the TUI (default: demo)")
    p.add_argument("--runs", default="runs", help="folder holding run directories (default: runs)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    o = sub.add_parser("open", help="open an existing run directory in the TUI")
    o.add_argument("run_dir")

    t = sub.add_parser("train", help="train headless from a preset", epilog=epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--preset", default="demo", help="preset name or .toml path")
    t.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. train.base_lr=0.003 data.batch_size=32")
    t.add_argument("--run-dir", help="run directory (default: runs/<preset>-<time>)")
    t.add_argument("--max-steps", type=int, help="stop with a checkpoint after this step (resume continues)")
    t.add_argument("--quiet", action="store_true", help="no progress display (warnings, errors, the outcome only)")
    t.add_argument("--json", action="store_true", help="JSON Lines on stdout: one object per event, then "
                   '{"kind": "exit", ...}; messages stay on stderr')
    t.add_argument("--print-every", type=int, metavar="N", help="when output is not a terminal: a progress line "
                   "every N steps (default 10; at least one every 10 s)")

    r = sub.add_parser("resume", help="resume a run from its last checkpoint (a run stopped before its first "
                       "checkpoint starts again from step 0)", epilog=epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("run_dir")
    r.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                   help="change live keys before resuming (e.g. train.base_lr=0.001)")
    r.add_argument("--max-steps", type=int, help="stop with a checkpoint after this step")
    r.add_argument("--quiet", action="store_true", help="no progress display (warnings, errors, the outcome only)")
    r.add_argument("--json", action="store_true", help="JSON Lines on stdout, as for train")
    r.add_argument("--print-every", type=int, metavar="N", help="as for train")
    from nanxi_tune.tui.launch import add_arguments as add_launch_arguments

    for command in (t, r):  # --nproc-per-node, --nnodes, --node-rank, --rdzv-endpoint: through torchrun
        add_launch_arguments(command)

    e = sub.add_parser("eval", help="evaluate a run's checkpoint with COCO mAP")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", choices=["last", "best"], default="best")
    e.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override eval/postprocess keys, e.g. eval.val_data_mode=full")

    d = sub.add_parser("diagnose", help="run the notes' diagnostic rules over a run directory")
    d.add_argument("run_dir")
    d.add_argument("--json", action="store_true",
                   help="JSON Lines: one JSON object per finding (events.jsonl's form), no output without findings")

    sub.add_parser("presets", help="list the bundled presets")

    from nanxi_tune.tui.ctl_cmd import add_parser as add_ctl_parser

    add_ctl_parser(sub)

    from nanxi_tune.tui.remedy_cmd import add_parser as add_remedy_parser

    add_remedy_parser(sub)

    from nanxi_tune.tui.workflows_cmd import add_parsers as add_workflow_parsers

    add_workflow_parsers(sub)  # sweep, stats, autobatch, tune-post, journal, budget
    for command in sub.choices.values():  # every --set: repeating it adds to the earlier values
        for action in command._actions:
            if action.dest == "sets":
                action.__class__ = _Accumulate
    return p


class _Accumulate(argparse.Action):
    """`--set a=1 --set b=2 c=3` gives [a=1, b=2, c=3] (argparse's "store" would keep the last one only)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *(values or [])])


RUNS = ("train", "resume")  # commands that train: stop signals are theirs from the first instant


def main(argv: list[str] | None = None) -> int:
    from nanxi_tune.tui.stopsignals import GUARD, StoppedBeforeStart

    if any(a in RUNS for a in (sys.argv[1:] if argv is None else argv)):
        GUARD.install()  # before anything slow: a SIGTERM while torch loads must not exit 143 silently
    try:
        return _main(argv)
    except StoppedBeforeStart as sig:
        from nanxi_tune.engine.exitcodes import ExitCode

        print(f"nanxi-tune: {sig.name}: stopped before training started; nothing was written", file=sys.stderr)
        return ExitCode.STOPPED
    finally:
        GUARD.restore()


def _main(argv: list[str] | None) -> int:
    from nanxi_tune.engine.exitcodes import ExitCode
    from nanxi_tune.tui.stopsignals import GUARD

    args = _parser().parse_args(argv)
    if args.command not in RUNS:
        GUARD.restore()
    from nanxi_tune.engine.config import ConfigError

    run_dir = getattr(args, "run_dir", None)
    from nanxi_tune.engine.rundir import CONFIG

    if args.command != "train" and run_dir and not (Path(run_dir) / CONFIG).exists():
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
        if args.command == "ctl":
            from nanxi_tune.tui.ctl_cmd import ctl

            return ctl(args)
        if args.command == "remedy":
            from nanxi_tune.tui.remedy_cmd import remedy

            return remedy(args)
        if args.command == "diagnose":
            from nanxi_tune.tui.diagnose_cmd import diagnose

            return diagnose(args)
        from nanxi_tune.tui.workflows_cmd import COMMANDS as WORKFLOWS

        if args.command in WORKFLOWS:
            return WORKFLOWS[args.command](args)
        from nanxi_tune.tui import headless

        return getattr(headless, args.command)(args)
    except ConfigError as err:
        print(f"nanxi-tune: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the engine's own errors already say what to do: no traceback
        if type(err).__name__ in USER_ERRORS:
            print(f"nanxi-tune: {err}", file=sys.stderr)
            return USER_ERRORS[type(err).__name__]
        raise


# Errors whose message names the file or key and the fix (engine.data, checkpoint, remedy, sweep, runctl), with
# the exit status each gives. Matched by name so the CLI need not import the engine (and torch) to catch them.
USER_ERRORS = {"DataError": 1, "CheckpointError": 1, "RemedyError": 1, "SweepError": 1,
               "RunBusy": 4}  # RunBusy: the run folder is owned by another live process (ExitCode.BUSY)


if __name__ == "__main__":
    sys.exit(main())
