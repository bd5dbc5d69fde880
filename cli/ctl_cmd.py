"""`nanxi-tune ctl RUN_DIR …`: drive a live run from any shell through its control channel (engine.run.runctl)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from nanxi_tune.cli.exitcodes import ExitCode

VERBS = ("status", "pause", "continue", "stop", "checkpoint", "eval", "set")


def add_parsers(sub) -> None:
    c = sub.add_parser(
        "ctl", help="status of a run, or a command to its live trainer (pause, continue, stop, checkpoint, eval, "
                    "set KEY=VALUE…)",
        description="Send a command to the live trainer of RUN_DIR, whichever process runs it, and wait for its "
                    "answer. Exit status: 0 applied, 2 refused (the message names the key and what is allowed), "
                    "1 no live trainer or no answer in time.")
    c.add_argument("run_dir")
    c.add_argument("verb", choices=VERBS, metavar="{" + ",".join(VERBS) + "}")
    c.add_argument("sets", nargs="*", metavar="KEY=VALUE", help="for set: live keys, e.g. train.base_lr=0.001")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer (default 60)")
    c.add_argument("--json", action="store_true", help="print the answer (or the status) as one JSON object")


def ctl(args) -> int:
    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.run import runctl
    from nanxi_tune.engine.workflows.study import is_study

    run_dir = Path(args.run_dir)
    from nanxi_tune.engine.workflows.autopilot_plan import is_autopilot

    if args.verb == "status" and is_autopilot(run_dir):
        from nanxi_tune.cli.autopilot_cmd import print_status

        return print_status(run_dir, args.json)
    if args.verb == "status":
        return _study_status(run_dir, args.json) if is_study(run_dir) else _status(run_dir, args.json)
    if (args.verb == "set") != bool(args.sets):
        print("nanxi-tune ctl: KEY=VALUE pairs go with set, and set needs at least one", file=sys.stderr)
        return ExitCode.BAD_INPUT
    updates = C.parse_sets(args.sets) if args.sets else None
    try:
        ack = runctl.request(run_dir, runctl.Op(args.verb), updates, runctl.sender_name("ctl"), args.timeout)
    except runctl.NotAlive as err:
        print(f"nanxi-tune ctl: refused: {err}", file=sys.stderr)
        return ExitCode.FAILED
    if ack is None:
        print(f"nanxi-tune ctl: no answer from {run_dir.name} within {args.timeout:g} s (the run ended, or is busy "
              f"in a long step); see: nanxi-tune ctl {run_dir} status", file=sys.stderr)
        return ExitCode.FAILED
    if args.json:
        print(json.dumps(ack))
    if not ack["applied"]:
        print(f"nanxi-tune ctl: refused at step {ack['step']}: {ack['message']}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    if not args.json:
        print(f"{run_dir.name}: {ack['message']}")
    return ExitCode.FINISHED


def _status(run_dir: Path, as_json: bool) -> int:
    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.run import listing, rundir, runctl

    info = listing.run_info(run_dir)
    st = info.status
    if not (run_dir / rundir.CONFIG).exists():  # a job's folder (a remedy's lr trials): its state alone
        if as_json:
            print(json.dumps({"run": str(run_dir), "state": st.state.value, "alive": st.alive, "step": info.step,
                              "owner": st.owner.__dict__ if st.owner else None}))
        else:
            print(f"{run_dir.name}: {st.state.value} at step {info.step}"
                  + (f" ({st.owner.describe()})" if st.owner else ""))
        return ExitCode.FINISHED
    cfg = C.load(run_dir / rundir.CONFIG)
    live = {k: v for k, v in C.flatten(cfg).items() if C.is_live(k)}
    if as_json:
        print(json.dumps({"run": str(run_dir), "state": st.state.value, "alive": st.alive, "step": info.step,
                          "best_map": info.best_map, "owner": st.owner.__dict__ if st.owner else None,
                          "live": live}))
        return ExitCode.FINISHED
    line = f"{run_dir.name}: {st.state.value} at step {info.step}"
    if st.owner:
        line += f" ({st.owner.describe()}; heartbeat {time.time() - st.owner.heartbeat:.1f} s ago)"
    elif st.state == runctl.RunState.DEAD:
        line += f": its process went away without a stop; resume it with: nanxi-tune resume {run_dir}"
        if not rundir.last_checkpoint(run_dir).exists():  # nothing to resume from: say what resume will do
            line += " (it saved no checkpoint: resume starts it again from step 0)"
    if info.best_map is not None:
        line += f"; best mAP {info.best_map:.4f}"
    print(line)
    print("live keys: " + ", ".join(f"{k}={v}" for k, v in live.items() if not k.startswith("diagnose.")))
    return ExitCode.FINISHED


def _study_status(folder: Path, as_json: bool) -> int:
    """A study: its owner's state and every trial (value, status, step, held-out score, device)."""
    from nanxi_tune.engine.run import runctl
    from nanxi_tune.engine.workflows import sweep as S

    st = runctl.status(folder)
    sw = S.load(folder)
    rows = sw.table()
    spec = sw.spec
    if as_json:
        print(json.dumps({"study": str(folder), "state": st.state.value, "alive": st.alive,
                          "owner": st.owner.__dict__ if st.owner else None, "key": spec.key,
                          "trial_steps": spec.trial_steps, "trial_minutes": spec.trial_minutes,
                          "best": sw.best_value(), "trials": rows}))
        return ExitCode.FINISHED
    done = sum(r["status"] in S.DONE for r in rows)
    line = f"{folder.name}: {st.state.value}, {done}/{len(rows)} trials done ({spec.key}, {spec.budget_text()} each)"
    if st.owner:
        line += f" ({st.owner.describe()})"
    elif st.state == runctl.RunState.DEAD or (st.state.value == "stopped" and done < len(rows)):
        line += f"; resume it with: nanxi-tune resume {folder}"
    print(line)
    for r in rows:
        score = "—" if r["mAP"] is None else f"{r['mAP']:.4f}"
        star = " ★" if r["best"] else ""
        print(f"  {S.value_name(r['value']):>8}{star:2} {r['status']:9} step {r['steps']:>6}  mAP {score}  "
              f"{r['device'] or ''}{'  ' + r['error'] if r['error'] else ''}")
    return ExitCode.FINISHED


COMMANDS = {"ctl": ctl}
