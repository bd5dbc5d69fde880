"""`nanxi-tune train | resume | eval | presets`: runs from the shell, their parsers and what each does.

The trainer runs in a thread driven by cli.drive (progress, stop signals to a checkpoint, exit statuses);
with --nproc-per-node the run goes through torchrun (cli.launch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.cli.exitcodes import ExitCode
from nanxi_tune.engine.metric_keys import COCO_METRICS, LOSSES
from nanxi_tune.cli.drive import console, drive
from nanxi_tune.cli.stopsignals import StoppedBeforeStart


def add_parsers(sub) -> None:
    from nanxi_tune.cli.exitcodes import epilog

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
    from nanxi_tune.cli.launch import add_arguments as add_launch_arguments

    for command in (t, r):  # --nproc-per-node, --nnodes, --node-rank, --rdzv-endpoint: through torchrun
        add_launch_arguments(command)
    from nanxi_tune.cli.study_cmd import add_owner_arguments

    add_owner_arguments(r)  # resume STUDY: where its trials run

    e = sub.add_parser("eval", help="evaluate a run's checkpoint with COCO mAP")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", choices=["last", "best"], default="best")
    e.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override eval/postprocess keys, e.g. eval.val_data_mode=full")

    sub.add_parser("presets", help="list the bundled presets")


def presets(args) -> int:
    table = Table("preset", "input", "data.train", "batch", "base_lr", title="bundled presets")
    for name in C.preset_names():
        cfg = C.load_preset(name)
        table.add_row(name, str(cfg.preprocess.input_size), cfg.data.train, str(cfg.data.batch_size),
                      f"{cfg.train.base_lr:g}")
    Console().print(table)
    return 0


def train(args) -> int:
    from nanxi_tune.cli import launch

    if launch.wanted(args):  # --nproc-per-node / --nnodes: the run goes through torchrun
        return launch.launch(args, "train")
    cfg = C.load_preset(args.preset)
    if args.sets:
        cfg = C.with_updates(cfg, C.parse_sets(args.sets))
    if _by_config(args, cfg):  # train.devices above 1: through torchrun, as --nproc-per-node would
        return launch.launch(args, "train")
    from nanxi_tune.engine.data import datapaths

    datapaths.check(cfg)  # a missing data path is refused before a run folder is made (DataError: exit 1)
    given = Path(args.run_dir) if args.run_dir else None
    run_dir, made = None, False
    if launch.rank() == 0:  # a torchrun worker of another rank gets rank 0's folder (launch.shared)
        from nanxi_tune.engine.run import runctl

        st = runctl.status(given) if given is not None else None
        if st is not None and st.alive:  # a live trainer owns it: attach instead (exit 4, as the README says)
            console.print(f"[red]nanxi-tune: {runctl.RunBusy(given, st.owner)}", soft_wrap=True)
            return ExitCode.BUSY
        if given is not None and ((given / rundir.METRICS).exists() or (given / rundir.CONFIG).exists()):
            console.print(f"[red]nanxi-tune: {given} already holds a run; continue it with  nanxi-tune resume "
                          f"{given}  or pick another --run-dir", soft_wrap=True)  # the others: run_dir None
        else:
            made = given is None or not given.exists()
            run_dir = given or rundir.new_run_dir(Path(args.runs), rundir.run_name(cfg.preset))
    cfg, run_dir = launch.shared(cfg, run_dir)
    if run_dir is None:
        return ExitCode.BAD_INPUT
    try:
        from nanxi_tune.engine.train.trainer import Trainer

        return drive(lambda cb: Trainer(cfg, run_dir, cb, max_steps=args.max_steps), run_dir, args)
    except StoppedBeforeStart as sig:
        return _stopped_before_start(sig.name, run_dir, made)


def _by_config(args, cfg: C.Config) -> bool:
    """train.devices asks for several processes and nothing on the command line said otherwise: set
    --nproc-per-node from it (auto resolves to the visible GPUs)."""
    from nanxi_tune.cli import launch

    if launch.launched() or cfg.train.devices == 1:
        return False
    from nanxi_tune.engine.run.distributed import devices

    n = devices(cfg.train.devices)
    if n > 1:
        args.nproc_per_node = n
    return n > 1


def resume(args) -> int:
    from nanxi_tune.cli import launch
    from nanxi_tune.engine.workflows.study import is_study

    from nanxi_tune.engine.workflows.autopilot_plan import is_autopilot

    if is_autopilot(args.run_dir):  # an autopilot: this process owns it again (or starts one detached)
        from nanxi_tune.cli.autopilot_cmd import own as own_autopilot

        return own_autopilot(Path(args.run_dir), args)
    if is_study(args.run_dir):  # a study: this process becomes its owner (or starts one detached)
        from nanxi_tune.cli.study_cmd import own

        return own(Path(args.run_dir), args)
    if args.workers or args.devices or args.detach:
        print("nanxi-tune resume: --workers, --devices and --detach are for a study (a sweep's folder); a run "
              "resumes with --nproc-per-node for several devices", file=sys.stderr)
        return ExitCode.BAD_INPUT
    if launch.wanted(args):
        return launch.launch(args, "resume")
    run_dir = Path(args.run_dir)
    updates = C.parse_sets(args.sets) if args.sets else None
    cfg = C.load(run_dir / rundir.CONFIG)
    if _by_config(args, cfg):
        return launch.launch(args, "resume")
    # refusals before torch loads (seconds): a key that may not change mid-run, a folder a live process owns
    if updates and rundir.last_checkpoint(run_dir).exists():
        C.with_live_updates(cfg, updates, "resume")
    from nanxi_tune.engine.run import runctl

    if runctl.status(run_dir).alive:
        raise runctl.RunBusy(run_dir, runctl.read_owner(run_dir))
    try:
        from nanxi_tune.engine.train.trainer import Trainer

        if not rundir.last_checkpoint(run_dir).exists():
            return drive(lambda cb: _restart(run_dir, cb, updates, args.max_steps), run_dir, args)
        return drive(lambda cb: Trainer.resume(run_dir, cb, updates, max_steps=args.max_steps), run_dir, args)
    except StoppedBeforeStart as sig:
        return _stopped_before_start(sig.name, run_dir, False)


def _restart(run_dir: Path, callback, updates: dict | None, max_steps: int | None):
    """A run killed before its first checkpoint: start it again from step 0 with its config.toml (and any
    ``updates``), dropping what the killed attempt logged. Raises RunBusy if a live process owns the folder."""
    from nanxi_tune.engine.run import checkpoint as ckpt_io
    from nanxi_tune.engine.run import runctl
    from nanxi_tune.engine.run.recorder import Recorder
    from nanxi_tune.engine.train.trainer import Trainer

    from nanxi_tune.cli import launch

    cfg = C.load(run_dir / rundir.CONFIG)
    if updates:
        cfg = C.with_updates(cfg, updates, "resume")
    if launch.rank() != 0:  # a torchrun worker of another rank: rank 0 owns and cleans the folder
        return Trainer(cfg, run_dir, callback, max_steps=max_steps)
    owner = runctl.RunOwner.acquire(run_dir)  # before anything is removed: never under a live trainer's feet
    try:
        Recorder(run_dir).reset()
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
    from nanxi_tune.engine.evaluation.evaluate_run import evaluate_run

    updates = C.parse_sets(args.sets) if args.sets else {}
    m = evaluate_run(Path(args.run_dir), args.checkpoint, updates)
    out = Console()
    out.print(f"{args.run_dir} ({args.checkpoint}.pt, {m['mode']}, {m['images']} images)", soft_wrap=True,
              highlight=False)  # a path is never wrapped mid-name
    table = Table("metric", "value")
    for k in COCO_METRICS + LOSSES:
        table.add_row(k, f"{m[k]:.4f}")
    out.print(table)
    if m.get("errors"):
        Console().print(errors_table(m["errors"]))
    return 0


def errors_table(errors: dict):
    """What costs AP50 (engine.evaluation.errors), largest first, with the branch the notes tune for each kind."""
    from nanxi_tune.engine.evaluation.errors import BRANCH_OF, ERROR_KINDS

    table = Table("error", "dAP50", "count", "tune", title=f"what costs AP50 (AP50 {errors['map50']:.4f})")
    for kind in sorted(ERROR_KINDS, key=lambda k: -errors["delta"][k]):
        table.add_row(kind, f"{errors['delta'][kind]:.4f}", str(errors["counts"][kind]), BRANCH_OF[kind])
    sizes = errors.get("missed_by_size") or {}
    if any(n for _m, n in sizes.values()):
        table.caption = "missed by size: " + " · ".join(f"{k} {m}/{n}" for k, (m, n) in sizes.items() if n)
    return table


COMMANDS = {"train": train, "resume": resume, "eval": eval, "presets": presets}
