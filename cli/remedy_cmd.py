"""`nanxi-tune remedy RUN_DIR [RULE]`: apply a finding's remedy from any shell, as **r** does in the TUI.

The same engine call (engine.workflows.remedy.apply): an lr change is proven by a short seven-stars trial downward from
the run's lr before it is applied, a change whose finding names a proof metric (localisation-bound: AP75) by a trial
against the unchanged run; the child run starts from the checkpoint pinned for the finding and trains in the
foreground to the parent's planned end (cli.drive: progress, signals, exit statuses).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nanxi_tune.cli.exitcodes import ExitCode


def add_parsers(sub) -> None:
    c = sub.add_parser(
        "remedy", help="apply the remedy of a run's most severe open finding as a child run and train it",
        description="Apply the remedy of RUN_DIR's most severe open finding (or of RULE's) as a child run — what r "
                    "does on a finding in the TUI, through the same engine call — and train the child in the "
                    "foreground to the parent's planned end. An lr remedy is proven first: short trials of the lr "
                    "grid downward from the run's lr, from the finding's rewind checkpoint, pick the value. Exit "
                    "status: 0 done (or --list/--dry-run/--no-train), 1 nothing to apply or the remedy failed, "
                    "2 unknown rule, 3 the child stopped before its end, 4 the run is live in another process.")
    c.add_argument("run_dir")
    c.add_argument("rule", nargs="?", help="the finding's rule id (default: the most severe open finding with a "
                                           "config change)")
    c.add_argument("--list", action="store_true", help="list the open findings and their proposals")
    c.add_argument("--dry-run", action="store_true", help="show what would change and where the child would "
                                                          "start; train and write nothing")
    c.add_argument("--no-train", action="store_true", help="create the child (running any trial) but do not "
                                                           "train it; `nanxi-tune resume CHILD` trains it")
    c.add_argument("--no-trial", action="store_true", help="apply the finding's own change untried (no lr descent, "
                                                           "no trial against the unchanged run)")
    c.add_argument("--trial-steps", type=int, metavar="N", help="steps per trial, lr or change (default: a tenth of "
                                                                "the run, 10 to 300)")
    c.add_argument("--from-scratch", action="store_true", help="when the finding's rewind checkpoint is gone, "
                                                               "start the child from step 0 instead of refusing")
    c.add_argument("--dismiss", action="store_true", help="close the finding without applying it (its pinned "
                                                          "checkpoint is released)")
    c.add_argument("--child-dir", metavar="DIR", help="the child's folder (new or empty; default runs/<run>-<rule>); "
                   "while the lr trials train, `nanxi-tune ctl DIR pause|continue|stop` drives them")
    c.add_argument("--finding", metavar="JSON_FILE", help="the finding to apply, as a JSON object (as the TUI "
                   "passes the one selected on its Monitor) instead of the run's open findings")
    c.add_argument("--quiet", action="store_true", help="no progress display while the child trains")
    c.add_argument("--json", action="store_true", help="--list/--dry-run as JSON; training as JSON Lines, as for "
                                                       "train")
    c.add_argument("--print-every", type=int, metavar="N", help="as for train")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _set_text(changes: dict) -> str:
    return ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in changes.items()) or "—"


def _describe(f: dict) -> str:
    rem = f.get("remedy") or {}
    where = ""
    if rem.get("set") and rem.get("resume_from_step") is not None:
        pinned = rem.get("checkpoint_step", "?")
        where = f"; rewinds to step ≤ {rem['resume_from_step']}" + (
            " (no checkpoint left: from step 0)" if "checkpoint_step" in rem and pinned is None else
            f" (checkpoint {pinned} pinned)" if "checkpoint_step" in rem else "")
    return (f"{f.get('severity', '?'):<7} {f.get('rule')} at step {f.get('step')}: "
            f"{_set_text(rem.get('set') or {})}{where}\n        {rem.get('text') or ''}")


def remedy(args) -> int:
    from nanxi_tune.engine.workflows import remedy as R
    from nanxi_tune.engine.run import rundir, runctl

    run_dir = Path(args.run_dir)
    found = R.open_findings(run_dir)
    if args.list:
        if args.json:
            for f in found:
                print(json.dumps(f, allow_nan=True, ensure_ascii=False))
        elif not found:
            print(f"{run_dir.name}: no open findings")
        else:
            print(f"{run_dir.name}: {len(found)} open finding(s), most severe first")
            for f in found:
                print("  " + _describe(f))
        return ExitCode.FINISHED
    if args.finding:
        try:
            finding = json.loads(Path(args.finding).read_text(encoding="utf-8"))
            assert isinstance(finding, dict) and finding.get("rule")
        except (OSError, ValueError, AssertionError) as err:
            _say(f"nanxi-tune remedy: --finding {args.finding}: not a finding as JSON ({err or 'no rule'})")
            return ExitCode.BAD_INPUT
    elif args.rule:
        finding = next((f for f in found if f.get("rule") == args.rule), None)
        if finding is None:
            from nanxi_tune.engine.diagnosis.rules import RULES

            if args.rule not in RULES:
                _say(f"nanxi-tune remedy: {args.rule}: no such rule; the rules are {', '.join(RULES)}")
                return ExitCode.BAD_INPUT
            _say(f"nanxi-tune remedy: {run_dir.name} has no open {args.rule} finding (open: "
                 f"{', '.join(f['rule'] for f in found) or 'none'}); `nanxi-tune remedy {run_dir} --list` shows them")
            return ExitCode.FAILED
    else:
        finding = next((f for f in found if R.applicable(f)), None)
        if finding is None:
            _say(f"nanxi-tune remedy: {run_dir.name} has no open finding with a config change to apply"
                 + (f" (open: {', '.join(f['rule'] for f in found)})" if found else ""))
            return ExitCode.FAILED
    if args.dismiss:
        if runctl.status(run_dir).alive:
            return _busy(run_dir)
        R.dismiss(run_dir, finding)
        print(f"{run_dir.name}: {finding['rule']} dismissed")
        return ExitCode.FINISHED
    if not R.applicable(finding):
        rem = finding.get("remedy") or {}
        _say(f"nanxi-tune remedy: {finding['rule']} has no config change to apply: "
             f"{rem.get('text') or finding.get('message')}")
        if rem.get("command"):  # a workflow does it: say which (issue 22)
            _say(f"  do it with:  {rem['command'].format(run=run_dir)}")
        return ExitCode.FAILED
    if args.dry_run:
        plan = R.plan(run_dir, finding, args.from_scratch, args.trial_steps)
        if args.no_trial:
            plan.pop("trial", None)
            plan.pop("proof", None)
        if args.json:
            print(json.dumps(plan, allow_nan=True, ensure_ascii=False))
        else:
            print(f"{run_dir.name}: {finding['rule']} (step {finding.get('step')})")
            for k, (old, new) in plan["changes"].items():
                print(f"  {k}: {old} → {new}" + ("  (the trial picks the value)" if "trial" in plan and
                                                   k == R.LR else ""))
            if "trial" in plan:
                t = plan["trial"]
                print(f"  trial: {R.LR} = {', '.join(f'{v:g}' for v in t['values'])} (downward, stopping once the "
                      f"loss turns worse), {t['steps']} steps each; the best-scored, or the value below it when the value above "
                      "it diverged")
            if "proof" in plan:
                p = plan["proof"]
                print(f"  trial: {p['steps']} steps with the change and {p['steps']} without, from the same "
                      f"checkpoint; applied when it raises val {p['metric']}")
            if "start" in plan:
                print(f"  child starts {plan['start']}")
        if "error" in plan:
            _say(f"nanxi-tune remedy: {plan['error']}")
            return ExitCode.FAILED
        return ExitCode.FINISHED
    if runctl.status(run_dir).alive:
        return _busy(run_dir)

    def on_trial(t) -> None:
        if isinstance(t, R.Arm):  # a change proven against the unchanged run
            metric = finding["remedy"].get("proof", "score")
            s = f"val {metric} {t.score:.3f} (mAP {t.mAP:.3f})" if t.status == "done" else t.status
            _say(f"trial {'with' if t.name == 'remedy' else 'without'} the change: {s} after {t.steps} steps")
            return
        s = (f"held-out val loss {t.score:.4f} (mAP {t.mAP:.3f}; train loss {t.train_score:.4f})"
             if t.status == "done" else t.status)
        _say(f"trial {R.LR} = {t.value:g}: {s} after {t.steps} steps")

    _say(f"{run_dir.name}: applying {finding['rule']}: {_set_text(finding['remedy']['set'])}")
    try:
        child = R.apply(run_dir, finding, trial=not args.no_trial, trial_steps=args.trial_steps,
                        allow_scratch=args.from_scratch, callback=on_trial,
                        child=Path(args.child_dir) if args.child_dir else None)
    except R.RemedyStopped as err:
        _say(f"nanxi-tune remedy: {err}")
        return ExitCode.STOPPED
    rec = json.loads((child / R.REMEDY_JSON).read_text(encoding="utf-8"))
    print(f"child {child}: {_set_text(rec['set'])}, {rec['start']}", flush=True)
    if args.no_train:
        print(f"train it with:  nanxi-tune resume {child}" if R.has_checkpoint(child) else
              f"train it with:  nanxi-tune resume {child}  (it starts from step 0)")
        return ExitCode.FINISHED
    from nanxi_tune.engine import config as C
    from nanxi_tune.cli.drive import drive

    def make(cb):
        from nanxi_tune.engine.train.trainer import Trainer

        if R.has_checkpoint(child):
            return Trainer.resume(child, cb)
        return Trainer(C.load(child / rundir.CONFIG), child, cb)

    return drive(make, child, args)


def _busy(run_dir: Path) -> int:
    _say(f"nanxi-tune remedy: {run_dir.name} is live in another process; stop it first "
         f"(nanxi-tune ctl {run_dir} stop), then apply the remedy")
    return ExitCode.BUSY


COMMANDS = {"remedy": remedy}
