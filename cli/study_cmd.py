"""Studies from the shell: own one here or detached (`sweep`, `resume STUDY`), `study worker STORAGE STUDY` on any
machine, and `study trial`, the process an owner starts for each trial (engine.workflows.study_owner)."""

from __future__ import annotations

import threading
from pathlib import Path

from rich.table import Table

from nanxi_tune.cli.drive import SteadyConsole
from nanxi_tune.cli.exitcodes import ExitCode

out = SteadyConsole()
err = SteadyConsole(stderr=True)


def add_owner_arguments(parser) -> None:
    g = parser.add_argument_group("where trials run (a study's owner)")
    g.add_argument("--workers", type=int, metavar="N", help="trials at once on this CPU, its cores shared out "
                   "(default 1; on a GPU box one trial per device)")
    g.add_argument("--devices", metavar="LIST", help="GPUs to use, one trial each at once, e.g. 0,1,2,3 "
                   "(default: every visible GPU)")
    g.add_argument("--detach", action="store_true", help="the owner as its own process: it goes on when this "
                   "shell or SSH session ends (follow it: nanxi-tune open / ctl STUDY status)")


def add_parsers(sub) -> None:
    s = sub.add_parser("study", help="a study's workers: `study worker STORAGE STUDY` on any machine pulls trials")
    ss = s.add_subparsers(dest="study_command", metavar="{worker,trial}", required=True)
    w = ss.add_parser("worker", help="claim the next trial of a study from its storage, train it, tell its result, "
                      "until none is left (one per GPU or machine)")
    w.add_argument("storage", help="the study's storage: a database URL, or the journal file "
                   "(runs/<study>/optuna.journal)")
    w.add_argument("study", help="the study's name (its folder's name)")
    w.add_argument("--device", help="cpu, cuda, cuda:N (default: the study's train.device)")
    w.add_argument("--threads", type=int, help="torch threads (a CPU worker beside others)")
    t = ss.add_parser("trial", help="(started by a study's owner) train one claimed trial of the study in FOLDER")
    t.add_argument("folder")
    t.add_argument("number", type=int)
    t.add_argument("--device")
    t.add_argument("--threads", type=int)


# --- owning a study: here or detached ------------------------------------------------------------------------------

def own(folder: Path, args) -> int:
    """Be the study's owner here (foreground, progress on stderr) or start one detached."""
    from nanxi_tune.engine.run import runctl
    from nanxi_tune.engine.workflows.study_owner import parse_devices
    from nanxi_tune.engine.workflows.study import StudyError

    try:
        devices = parse_devices(args.devices) if getattr(args, "devices", None) else None
    except StudyError as e:
        err.print(f"nanxi-tune: {e}")
        return ExitCode.BAD_INPUT
    st = runctl.status(folder)
    if st.alive:
        err.print(f"nanxi-tune: {runctl.RunBusy(folder, st.owner)}")
        return ExitCode.BUSY
    if getattr(args, "detach", False):
        return detach(folder, args)
    return _own_here(folder, args.workers, devices, getattr(args, "quiet", False), getattr(args, "save", None))


def detach(folder: Path, args) -> int:
    """`nanxi-tune resume FOLDER` as its own process in a new session (no terminal: SIGHUP never reaches it)."""
    from nanxi_tune.cli.launch import wait_for_start
    from nanxi_tune.engine.workflows.study_owner import spawn_detached

    proc = spawn_detached(folder, args.workers, args.devices)
    if not wait_for_start(folder, 60) and proc.poll() is not None:
        err.print(f"nanxi-tune: the study's owner exited at once (status {proc.returncode}); see {folder}/stdout.log")
        return ExitCode.FAILED
    err.print(f"{folder}: started detached (pid {proc.pid}); it goes on when this shell ends.\n"
              f"  follow:  nanxi-tune open {folder}     status:  nanxi-tune ctl {folder} status\n"
              f"  pause / continue / stop:  nanxi-tune ctl {folder} pause|continue|stop")
    return ExitCode.FINISHED


def _own_here(folder: Path, workers: int | None, devices: list[str] | None, quiet: bool, save: str | None) -> int:
    from nanxi_tune.cli.drive import run_until_signalled
    from nanxi_tune.engine.workflows import sweep as S
    from nanxi_tune.engine.workflows.study_owner import StudyOwner

    def on_event(e) -> None:
        if quiet:
            return
        if e.kind == "study":
            err.print(f"[bold]{e.what.replace('_', ' ')}[/] {e.number if e.number >= 0 else ''}: {e.message}")
        elif e.kind == "ack":
            err.print(f"{e.op}: {e.message}")
        elif e.kind == "error":
            err.print(f"[red]{e.error}")

    owner = StudyOwner(folder, workers, devices, on_event)
    if not quiet:
        where = ", ".join(s.device or "its device" for s in owner.slots)
        err.print(f"{folder.name}: {len(owner.slots)} trial(s) at once ({where}); stop with Ctrl-C (every trial "
                  f"checkpoints), resume with: nanxi-tune resume {folder}")
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", owner.run()), name="study-owner")
    run_until_signalled(thread, owner.request_stop,
                        lambda name: err.print(f"[yellow]{name}: stopping every trial with a checkpoint…"))
    state = result.get("state", "failed")
    sw = S.load(folder)
    print_sweep(sw)
    if save and sw.best_value() is not None:
        from nanxi_tune.engine import config as C

        C.save(sw.apply_best(), save)
        err.print(f"wrote {save} with {sw.key} = {S.value_name(sw.best_value())}")
    if state == "stopped":
        err.print(f"stopped. Resume with: nanxi-tune resume {folder}")
        return ExitCode.STOPPED
    return ExitCode.FINISHED if state == "finished" else ExitCode.FAILED


def print_sweep(sw) -> None:
    """The sweep's table, chart and best on stdout (the study's storage read once for the rows)."""
    from nanxi_tune.engine.workflows import sweep as S

    rows = sw.table()
    table = Table("value", "mAP", "AP50", "train loss", "status", title=f"seven stars: {sw.key} ({sw.dir.name})")
    for r in rows:
        f = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
        style = "bold green" if r["best"] else ""
        table.add_row(S.value_name(r["value"]) + (" ★" if r["best"] else ""), f(r["mAP"]), f(r["AP50"]),
                      f(r["train_loss"]), r["status"] + (f": {r['error']}" if r["error"] else ""), style=style)
    out.print(table)
    out.print(S.text_chart(rows), markup=False, highlight=False)
    best = next((r["value"] for r in rows if r["best"]), None)
    if best is not None:
        out.print(f"best {sw.key} = {S.value_name(best)}  → apply with  --set {sw.key}={S.value_name(best)}")
    nxt = sw.next_window()
    if nxt:
        out.print(f"[yellow]the best sits at the window's edge: slide with  nanxi-tune sweep --param {sw.key} "
                  f"--start {S.value_name(nxt[0])}  ({', '.join(S.value_name(v) for v in nxt)})")


# --- workers ---------------------------------------------------------------------------------------------------------

def study(args) -> int:
    from nanxi_tune.engine.workflows.study import Study, StudyError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.study_command == "trial":
            return _trial(Study.open(args.folder), args)
        s = Study.connect(args.storage, args.study)
    except StudyError as e:
        err.print(f"nanxi-tune study: {e}")
        return ExitCode.BAD_INPUT
    from nanxi_tune.engine.workflows.study_worker import work

    n = work(s, Path(args.runs), args.device, say=lambda m: err.print(m), stop=_stop_on_signal())
    err.print(f"worker done: {n} trial(s) trained")
    return ExitCode.FINISHED


def _trial(s, args) -> int:
    from nanxi_tune.engine.workflows.study_worker import run_claimed

    status = run_claimed(s, s.trial(args.number), Path(args.folder), args.device, stop=_stop_on_signal())
    # a pruned trial ended as asked (its result is told): not a crash for the owner to hand out again
    return {"finished": ExitCode.FINISHED, "pruned": ExitCode.FINISHED, "stopped": ExitCode.STOPPED}.get(
        status, ExitCode.FAILED)


def _stop_on_signal() -> threading.Event:
    """SIGTERM / SIGINT / SIGHUP (an owner that died sends SIGTERM) stop the trial with a checkpoint."""
    import signal

    from nanxi_tune.cli.stopsignals import GUARD

    held = GUARD.restore()
    stop = threading.Event()
    if held:  # it landed while Python imported: stop at the first step
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, lambda *_: stop.set())
    return stop


COMMANDS = {"study": study}
