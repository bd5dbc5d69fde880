"""`nanxi-tune train / resume --nproc-per-node N`: a data-parallel run through torchrun (torch.distributed.run).

The launcher (this process) picks the run folder, starts ``python -m torch.distributed.run … -m
nanxi_tune.cli train --run-dir DIR …`` as its own process group, and waits. A stop signal it receives
(Ctrl-C, SIGTERM, a dropped SSH session's SIGHUP) goes to every worker as SIGTERM, so they all finish the
step and rank 0 writes the checkpoint; its exit status is read from the run's record (cli.exitcodes).
``--nnodes`` / ``--node-rank`` / ``--rdzv-endpoint`` pass through to torchrun for several machines.

A worker (a process torchrun started, by this launcher or by hand) takes rank and world size from its
environment; ``shared`` hands it rank 0's config and run folder. Workers exit 0 when the run finished or
stopped (torchrun counts any other status as a crash), 1 when it failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path



def launched() -> bool:
    """A process torchrun started (engine.run.distributed.launched, without importing torch for --help)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE"))


def add_arguments(parser) -> None:
    g = parser.add_argument_group("data-parallel (torchrun; data.batch_size stays per device)")
    g.add_argument("--nproc-per-node", type=int, metavar="N", help="processes on this machine, one per GPU "
                   "(the CPU: Gloo); starts the run through torchrun")
    g.add_argument("--nnodes", type=int, default=1, metavar="M", help="machines taking part (default 1)")
    g.add_argument("--node-rank", type=int, metavar="K", help="this machine's index, 0 … M-1 (0 writes the run "
                   "folder)")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="where the machines meet: node 0's address "
                   "and a free port, the same on every machine")


def wanted(args) -> bool:
    """This command should start torchrun (rather than train here)."""
    return not launched() and bool(getattr(args, "nproc_per_node", None) or getattr(args, "nnodes", 1) > 1)


def torchrun_argv(args, worker: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc_per_node or 1)]
    if args.nnodes > 1 or args.rdzv_endpoint:
        if not args.rdzv_endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (node 0's address, the same on every "
                             "machine)")
        argv += ["--nnodes", str(args.nnodes), "--rdzv-endpoint", args.rdzv_endpoint]
        if args.node_rank is not None:  # fixed ranks: node 0 holds rank 0, the one that writes the run folder
            argv += ["--node-rank", str(args.node_rank), "--rdzv-backend", "static"]
        else:
            argv += ["--rdzv-backend", "c10d"]
    else:
        argv += ["--standalone"]
    return argv + ["-m", "nanxi_tune.cli", *worker]


def _common(args) -> list[str]:
    out: list[str] = []
    if args.sets:
        out += ["--set", *args.sets]
    if args.max_steps is not None:
        out += ["--max-steps", str(args.max_steps)]
    for flag in ("quiet", "json"):
        if getattr(args, flag, False):
            out.append(f"--{flag}")
    if getattr(args, "print_every", None):
        out += ["--print-every", str(args.print_every)]
    return out


def launch(args, command: str) -> int:
    """Run ``train`` / ``resume`` through torchrun; the exit status of the run (cli.exitcodes)."""
    from nanxi_tune.engine.run import rundir, runctl
    from nanxi_tune.cli.exitcodes import ExitCode

    writer = (args.node_rank or 0) == 0  # this machine holds rank 0: the run folder is here
    if command == "train":
        given = Path(args.run_dir) if args.run_dir else None
        if given is not None and ((given / rundir.METRICS).exists() or (given / rundir.CONFIG).exists()):
            print(f"nanxi-tune: {given} already holds a run; continue it with  nanxi-tune resume {given}  or pick "
                  "another --run-dir", file=sys.stderr)
            return ExitCode.BAD_INPUT
        run_dir = given
        if writer and run_dir is None:
            from nanxi_tune.engine import config as C

            run_dir = rundir.new_run_dir(Path(args.runs), rundir.run_name(C.load_preset(args.preset).preset))
        worker = ["--runs", args.runs, "train", "--preset", args.preset, *_common(args)]
        if run_dir is not None:
            worker += ["--run-dir", str(run_dir)]
    else:
        run_dir = Path(args.run_dir)
        st = runctl.status(run_dir)
        if st.alive:
            print(f"nanxi-tune: {runctl.RunBusy(run_dir, st.owner)}", file=sys.stderr)
            return ExitCode.BUSY
        worker = ["--runs", args.runs, "resume", str(run_dir), *_common(args)]
    try:
        argv = torchrun_argv(args, worker)
    except ValueError as err:
        print(f"nanxi-tune: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    if writer and run_dir is not None:
        print(f"nanxi-tune: {args.nnodes * (args.nproc_per_node or 1)} processes (torchrun) train {run_dir}",
              file=sys.stderr)
    rc = _run(argv)
    if not writer or run_dir is None:
        return ExitCode.FINISHED if rc == 0 else ExitCode.FAILED
    state = rundir.recorded_state(run_dir)
    code = {"finished": ExitCode.FINISHED, "stopped": ExitCode.STOPPED}.get(state or "", ExitCode.FAILED)
    if code == ExitCode.FAILED and state in (None, "running", "paused", "stopping", "starting"):
        print(f"nanxi-tune: the process group ended without recording an outcome (torchrun status {rc}: a rank "
              f"was killed or lost); resume with:  nanxi-tune resume {run_dir} --nproc-per-node "
              f"{args.nproc_per_node or 1}", file=sys.stderr)
    return code


def _run(argv: list[str]) -> int:
    """torchrun as its own process group; stop signals reach its workers as SIGTERM (a checkpoint each)."""
    proc = subprocess.Popen(argv, start_new_session=True)

    def forward(signum, _frame) -> None:
        workers = _children(proc.pid)
        for pid in workers or [proc.pid]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, forward) for s in watched if signal.getsignal(s) != signal.SIG_IGN}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # a handler installed before ours: forward anyway
                forward(signal.SIGINT, None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's workers), from /proc; [] where /proc cannot tell."""
    try:
        out = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
        return out
    except (OSError, ValueError):
        return []


# --- the worker's side ----------------------------------------------------------------------------------

def rank() -> int:
    return int(os.environ["RANK"]) if launched() else 0


def shared(cfg, run_dir: Path | None):
    """In a torchrun worker: (rank 0's config, rank 0's run folder) on every rank, so every machine trains the
    same config and only rank 0's folder exists. Elsewhere: what was given."""
    if not launched():
        return cfg, run_dir
    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.run.distributed import Dist

    d = Dist.from_env(cfg.train.device, cfg.train.dist_timeout_s)
    data, where = d.from_main((cfg.model_dump(mode="json"), str(run_dir) if run_dir else ""))
    return C.validate(data, "rank 0's config"), (Path(where) if where else None)


def worker_exit(code: int) -> int:
    """torchrun reads any status but 0 as a crashed worker: a stopped run (3) exits 0 under it."""
    from nanxi_tune.cli.exitcodes import ExitCode

    return ExitCode.FINISHED if launched() and code == ExitCode.STOPPED else code


def finish() -> None:
    """Leave the process group (a worker, once its trainer is done)."""
    if launched():
        from nanxi_tune.engine.run.distributed import _Group

        if _Group.current is not None:
            _Group.current.close()


def wait_for_start(run_dir: Path, timeout: float = 60.0) -> bool:
    """Until the run's owner is alive (tests, the TUI attaching to a launched run)."""
    from nanxi_tune.engine.run import runctl

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if runctl.status(run_dir).alive:
            return True
        time.sleep(0.1)
    return False
