"""`nanxi-tune autopilot`: the notes' whole schedule on the user's data within a budget (engine.workflows.autopilot),
here or detached; `resume` and `ctl` reach an autopilot's folder as they reach a study's."""

from __future__ import annotations

import threading
from pathlib import Path

from nanxi_tune.cli.drive import SteadyConsole
from nanxi_tune.cli.exitcodes import ExitCode

err = SteadyConsole(stderr=True)
out = SteadyConsole()


def add_parsers(sub) -> None:
    a = sub.add_parser(
        "autopilot", help="walk the notes' schedule unattended on your data within a budget: lr, shape branch, "
        "capacity, mean/std, the final run, post-processing; journal and recipe in its folder",
        description="Cuts the train split into fit / held-out, reads the data, measures the step time and shares "
        "the budget between the search (trials scored on the held-out part) and the final run on the whole train "
        "split; val is scored by the final run only. Writes journal.md and recipe.toml (a preset) in its folder.")
    a.add_argument("--preset", dest="ap_preset", default="bccd", help="the preset to start from (default: bccd)")
    a.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE",
                   help="e.g. data.train=PATH data.val=PATH")
    a.add_argument("--budget", required=True, help="the whole time: minutes, hours or days (90m, 12h, 2d)")
    a.add_argument("--name", help="the folder's name under --runs (default: autopilot-<preset>-<time>)")
    a.add_argument("--holdout", type=float, default=0.2, help="the train fraction held out to score trials "
                   "(default 0.2)")
    a.add_argument("--seed", type=int, default=0, help="the seed of the fit / held-out cut (default 0)")
    a.add_argument("--trial-steps", type=int, default=0, metavar="N", help="every search trial N steps (default: "
                   "planned in minutes from the budget)")
    a.add_argument("--final-steps", type=int, default=0, metavar="N", help="the final run N steps (default: the "
                   "rest of the budget)")
    a.add_argument("--rounds", nargs="+", default=["lr", "shape", "capacity"], choices=["lr", "shape", "capacity"],
                   help="the search rounds to walk (default: all three, in the notes' order)")
    a.add_argument("--workers", type=int, default=1, metavar="N", help="trials at once on this CPU (a GPU box: one "
                   "per device)")
    a.add_argument("--detach", action="store_true", help="its own process: it goes on when this shell ends "
                   "(follow: nanxi-tune ctl DIR status; journal: DIR/journal.md)")
    a.add_argument("--quiet", action="store_true", help="no progress lines")


def autopilot(args) -> int:
    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.data.datapaths import DataError, check
    from nanxi_tune.engine.run import rundir
    from nanxi_tune.engine.workflows import autopilot_plan as P

    try:
        budget = P.parse_budget(args.budget)
        if not 0 < args.holdout < 1:
            raise P.AutopilotError(f"--holdout {args.holdout}: give a fraction between 0 and 1, e.g. 0.2")
        base = C.with_updates(C.load_preset(args.ap_preset), C.parse_sets(args.sets))
        check(base)
    except (P.AutopilotError, DataError) as e:
        err.print(f"nanxi-tune autopilot: {e}", markup=False, highlight=False)
        return ExitCode.BAD_INPUT
    from nanxi_tune.engine.workflows.autopilot import create

    name = args.name or rundir.run_name(f"autopilot-{base.preset or 'config'}")
    folder = rundir.new_run_dir(Path(args.runs), name)
    try:
        create(folder, args.ap_preset, base, budget, holdout=args.holdout, seed=args.seed,
               workers=max(1, args.workers), trial_steps=max(0, args.trial_steps),
               final_steps=max(0, args.final_steps), rounds=list(args.rounds))
    except P.AutopilotError as e:
        err.print(f"nanxi-tune autopilot: {e}", markup=False, highlight=False)
        return ExitCode.BAD_INPUT
    err.print(f"{folder}: autopilot for {P.budget_text(budget)} on {base.data.train}")
    return own(folder, args)


def own(folder: Path, args) -> int:
    """Be the autopilot's owner here (progress on stderr) or start one detached."""
    from nanxi_tune.engine.run import runctl

    st = runctl.status(folder)
    if st.alive:
        err.print(f"nanxi-tune: {runctl.RunBusy(folder, st.owner)}")
        return ExitCode.BUSY
    if getattr(args, "detach", False):
        from nanxi_tune.cli.launch import wait_for_start
        from nanxi_tune.engine.workflows.autopilot import spawn_detached

        proc = spawn_detached(folder)
        if not wait_for_start(folder, 60) and proc.poll() is not None:
            err.print(f"nanxi-tune: the autopilot exited at once (status {proc.returncode}); see {folder}/stdout.log")
            return ExitCode.FAILED
        err.print(f"{folder}: started detached (pid {proc.pid}); it goes on when this shell ends.\n"
                  f"  follow:  nanxi-tune ctl {folder} status     journal:  {folder}/journal.md\n"
                  f"  pause / continue / stop:  nanxi-tune ctl {folder} pause|continue|stop\n"
                  f"  budget:  nanxi-tune ctl {folder} set autopilot.budget_min=MINUTES")
        return ExitCode.FINISHED
    return _own_here(folder, getattr(args, "quiet", False))


def _own_here(folder: Path, quiet: bool) -> int:
    from nanxi_tune.cli.drive import run_until_signalled
    from nanxi_tune.engine.workflows.autopilot import AutopilotOwner

    def on_event(e) -> None:
        if quiet:
            return
        if e.kind == "autopilot":
            err.print(f"[bold]{e.what.replace('_', ' ')}[/] {e.round}: {e.message}")
        elif e.kind == "study":
            err.print(f"  {e.what.replace('_', ' ')}: {e.message}")
        elif e.kind == "ack":
            err.print(f"{e.op}: {e.message}")
        elif e.kind == "error":
            err.print(f"[red]{e.error}")

    owner = AutopilotOwner(folder, on_event)
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", owner.run()), name="autopilot-owner")
    run_until_signalled(thread, owner.request_stop,
                        lambda name: err.print(f"[yellow]{name}: stopping the round with a checkpoint…"))
    state = result.get("state", "failed")
    print_status(folder)
    if state == "stopped":
        err.print(f"stopped. Resume with: nanxi-tune resume {folder}")
        return ExitCode.STOPPED
    return ExitCode.FINISHED if state == "finished" else ExitCode.FAILED


def print_status(folder: Path, as_json: bool = False) -> int:
    """The rounds as a checklist, the plan, the final figures (``ctl AUTOPILOT status``)."""
    import json

    from nanxi_tune.engine.run import runctl
    from nanxi_tune.engine.workflows import autopilot_plan as P

    ap = P.load(folder)
    st = runctl.status(folder)
    if as_json:
        print(json.dumps({"autopilot": str(folder), "state": st.state.value, "alive": st.alive, **ap.to_json()}))
        return ExitCode.FINISHED
    out.print(f"{folder.name}: {st.state.value}; budget {P.budget_text(ap.spec.budget_min)}, "
              f"{ap.used_s / 60:.1f} min used", highlight=False)
    for i, r in enumerate(ap.rounds, start=1):
        mark = {"done": "x", "skipped": "-", "running": ">"}.get(r.status, " ")
        chosen = ", ".join(f"{k}={v}" for k, v in r.choice.items())
        out.print(f" [{mark}] {i}. {P.TITLES[r.name]}" + (f": {chosen}" if chosen else ""), markup=False,
                  highlight=False)
    if ap.final:
        out.print("val: " + ", ".join(f"{k} {v:.4f}" for k, v in ap.final.items())
                  + f"; recipe: {folder / 'recipe.toml'}", highlight=False)
    return ExitCode.FINISHED


COMMANDS = {"autopilot": autopilot}
