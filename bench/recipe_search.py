"""The bccd recipe, searched with the tool itself on BCCD's train split only (val is never scored here).

BCCD's train annotations are split once (seeded) into a fit part and a held-out part; every trial trains on
the fit part and is scored on the held-out part, so the choice can be made without looking at val. Rounds, in
the notes' order (§4–5):

  lr        the seven-stars sweep (七星连珠法) of train.base_lr, short trials of equal steps;
  shape     the shape branch: loss (l1 / giou) × encoding (wh / log_wh / ltrb), at the round-1 lr;
  width     backbone.width at the chosen lr and shape options.

Each trial is an ordinary run folder under --out (the sweep's folder, trial-*), so `nanxi-tune journal` and the
TUI's Runs tab read them; the script prints each round's table in the journal's style and the chosen recipe.

The lr round is a study (engine.workflows.study): this process owns it, each trial its own process, ``--workers N`` trials
at once on the CPU (or one per GPU); stopped or killed, it goes on where it was when the script runs again (or with
``nanxi-tune resume DIR/sweep-lr``).

    python bench/recipe_search.py [--rounds lr shape width] [--trial-steps 150] [--holdout 0.2] [--out DIR]
                                  [--workers N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.split import split_train
from nanxi_tune.engine.workflows import sweep as S
from nanxi_tune.engine.workflows.study import FOREVER
from nanxi_tune.engine.train.trainer import Trainer


def trial(cfg: C.Config, run_dir: Path, steps: int) -> dict:
    t0 = time.perf_counter()
    state = Trainer(C.with_updates(cfg, {"train.max_steps": steps, "eval.interval": FOREVER}), run_dir).run()
    return S.summarize_trial(run_dir) | {"state": state, "seconds": time.perf_counter() - t0}


def table(title: str, rows: list[tuple[str, dict]]) -> str:
    lines = [f"### {title}", "", "| trial | held-out mAP | AP50 | train loss | state |", "|---|---|---|---|---|"]
    def f(v, digits=4):
        return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "—"

    for name, r in rows:
        lines.append(f"| {name} | {f(r.get('mAP'))} | {f(r.get('AP50'))} | {f(r.get('train_loss'), 3)} | "
                     f"{r['state']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/bccd"))
    ap.add_argument("--out", default="runs/recipe-bccd")
    ap.add_argument("--rounds", nargs="*", default=["lr", "shape", "width"])
    ap.add_argument("--trial-steps", type=int, default=150)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--lr-start", type=float, default=0.0003)
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    ap.add_argument("--workers", type=int, default=None, help="lr round: trials at once on the CPU (default 1; "
                    "on a GPU box one per device)")
    a = ap.parse_args()
    train_json = Path(a.data) / "annotations/instances_train.json"
    if not train_json.exists():
        print(f"BCCD not found at {a.data}; pass --data PATH", file=sys.stderr)
        return 1
    out = Path(a.out).resolve()  # the trial processes (and a later `nanxi-tune resume`) read these paths
    out.mkdir(parents=True, exist_ok=True)
    fit, held = split_train(train_json, out, a.holdout)
    cfg = C.with_updates(C.load_preset("bccd"), {"data.train": str(fit), "data.val": str(held),
                                                 "eval.val_data_mode": "full"} | C.parse_sets(a.sets))
    report = [f"# bccd recipe search — {time.strftime('%Y-%m-%d %H:%M')}",
              f"fit {fit.name} / held-out {held.name} ({a.holdout:.0%} of train), {a.trial_steps} steps a trial"]

    if "lr" in a.rounds:
        sw = S.Sweep(out / "sweep-lr", cfg, "train.base_lr", S.window(a.lr_start), trial_steps=a.trial_steps) \
            if not (out / "sweep-lr" / S.SWEEP_JSON).exists() else S.load(out / "sweep-lr")
        if not sw.done:
            state = sw.run(workers=a.workers)
            if state != "finished":
                raise SystemExit(f"round 1 — lr: the sweep {state}; resume it: nanxi-tune resume {sw.dir}")
        S.write_journal(sw.dir)
        rows = [(f"base_lr = {S.value_name(r['value'])}", r | {"state": r.get("status", "?")}) for r in sw.table()]
        report.append(table("round 1 — lr, seven stars", rows))
        best = sw.best_value()
        if best is None:
            raise SystemExit(f"round 1 — lr: no trial finished; see the trials' events.jsonl under {sw.dir}")
        else:
            cfg = C.with_updates(cfg, {"train.base_lr": best})
            report.append(f"chosen: train.base_lr = {best:g}" + ("  (at the window's edge: slide)" if sw.at_edge()
                                                                   else ""))
        print(report[-2], report[-1], sep="\n", flush=True)

    def categorical(name: str, title: str, options: dict[str, dict]) -> None:
        nonlocal cfg
        rows = []
        for label, updates in options.items():
            r = trial(C.with_updates(cfg, updates), out / name / label.replace(" ", "").replace("=", "-"),
                      a.trial_steps)
            rows.append((label, r))
            print(f"  {title}: {label}: mAP {r.get('mAP')}", flush=True)
        label, r = max(rows, key=lambda x: x[1].get("mAP") or -1.0)
        if r.get("mAP") is None:
            raise SystemExit(f"{title}: no trial finished; see the trials' events.jsonl under {out / name}")
        cfg = C.with_updates(cfg, options[label])
        report.extend([table(title, rows), f"chosen: {label}"])
        print(report[-2], report[-1], sep="\n", flush=True)

    if "shape" in a.rounds:
        categorical("round-shape", "round 1 — shape branch", {
            f"{loss} {enc}": {"loss.shape_loss": loss, "encode.shape": enc}
            for loss in ("l1", "giou") for enc in ("wh", "log_wh", "ltrb")})
    if "width" in a.rounds:
        w = cfg.backbone.width
        categorical("round-width", "round 1 — backbone width", {
            f"width={x}": {"backbone.width": x} for x in sorted({max(8, w * 2 // 3), w, w * 4 // 3})})
    report.append("\nrecipe: " + ", ".join(f"{k} = {v}" for k, v in C.diff(C.load_preset("bccd"), cfg).items()
                                           if not k.startswith(("data.", "eval.val_data_mode"))))
    (out / "recipe.md").write_text("\n\n".join(report) + "\n")
    print(report[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
