"""`nanxi-tune`: the TUI by default, headless subcommands for scripts and SSH sessions.

Imports stay lazy: `--help` must not import torch, and the TUI shows its first frame before torch loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nanxi-tune",
        description="Tuning assistant for heatmap detectors (CenterNet/TTFNet family), after Nanxi's tuning notes. "
                    "With no command, opens the TUI.")
    p.add_argument("--preset", default="demo", help="preset name or .toml path for the TUI (default: demo)")
    p.add_argument("--runs", default="runs", help="folder holding run directories (default: runs)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    o = sub.add_parser("open", help="open an existing run directory in the TUI")
    o.add_argument("run_dir")

    t = sub.add_parser("train", help="train headless from a preset")
    t.add_argument("--preset", default="demo", help="preset name or .toml path")
    t.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. train.base_lr=0.003 data.batch_size=32")
    t.add_argument("--run-dir", help="run directory (default: runs/<preset>-<time>)")
    t.add_argument("--max-steps", type=int, help="stop with a checkpoint after this step (resume continues)")
    t.add_argument("--quiet", action="store_true", help="no progress display")

    r = sub.add_parser("resume", help="resume a run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                   help="change live keys before resuming (e.g. train.base_lr=0.001)")
    r.add_argument("--max-steps", type=int, help="stop with a checkpoint after this step")
    r.add_argument("--quiet", action="store_true")

    e = sub.add_parser("eval", help="evaluate a run's checkpoint with COCO mAP")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", choices=["last", "best"], default="best")
    e.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override eval/postprocess keys, e.g. eval.val_data_mode=full")

    d = sub.add_parser("diagnose", help="run the notes' diagnostic rules over a run directory")
    d.add_argument("run_dir")
    d.add_argument("--json", action="store_true", help="one JSON object per finding (events.jsonl's form)")

    sub.add_parser("presets", help="list the bundled presets")

    from nanxi_tune.tui.workflows_cmd import add_parsers as add_workflow_parsers

    add_workflow_parsers(sub)  # sweep, stats, autobatch, tune-post, journal, budget
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from nanxi_tune.engine.config import ConfigError

    run_dir = getattr(args, "run_dir", None)
    if args.command != "train" and run_dir and not (Path(run_dir) / "config.toml").exists():
        what = "not a run directory (no config.toml)" if Path(run_dir).exists() else "no such file or folder"
        print(f"nanxi-tune: {run_dir}: {what}; runs are the folders under {args.runs}/ — the TUI's Runs tab lists them"
              + ("; a run stopped as it started saved no checkpoint yet: start it again with `nanxi-tune train`"
                 if args.command == "resume" and Path(run_dir).is_dir() else ""), file=sys.stderr)
        return 2
    try:
        if args.command in (None, "open"):
            from nanxi_tune.tui.app import run_app

            run_app(preset=args.preset, open_run=Path(args.run_dir) if args.command == "open" else None,
                    runs_root=Path(args.runs))
            return 0
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
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the engine's own errors already say what to do: no traceback
        if type(err).__name__ in USER_ERRORS:
            print(f"nanxi-tune: {err}", file=sys.stderr)
            return 1
        raise


# Errors whose message names the file or key and the fix (engine.data, checkpoint, remedy, sweep). Matched by
# name so the CLI need not import the engine (and torch) just to catch them.
USER_ERRORS = {"DataError", "CheckpointError", "RemedyError", "SweepError"}


if __name__ == "__main__":
    sys.exit(main())
