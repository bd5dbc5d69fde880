"""The index of all runs: each run as a record, in the notes' style ("<change> vs <preset>: mAP …"), the
records of a whole runs folder (sweeps included), curves, and two runs compared. `nanxi-tune journal`,
the Runs tab's compare and the tuning plan read it; a run's own journal.md is engine.run.journal's.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as C
from ..run import rundir
from . import sweep as S
from ..run.journal import load, parent_of


def record(run_dir: Path) -> dict:
    """One run as data: preset, parent (remedy / sweep) and resumes, config diff vs preset, results, findings."""
    run_dir = Path(run_dir)
    cfg, base, metrics, events, vals, trains = load(run_dir)
    best = max(vals, key=lambda m: m.get("mAP", 0)) if vals else None
    parent = parent_of(events)
    post = [e["tune_post"] for e in events if e.get("kind") == "log" and e.get("tune_post")]
    return {
        "kind": "run", "name": run_dir.name, "path": str(run_dir), "preset": cfg.preset,
        "status": rundir.state_of(events) or "unknown", "started": next((e.get("time") for e in events if e.get("time")), None),
        "parent": parent.get("parent") if parent else None, "reason": parent.get("reason") if parent else None,
        "sweep_key": parent.get("sweep_key") if parent else None,
        "sweep_value": parent.get("sweep_value") if parent else None,
        "resumes": sum(1 for e in events if e.get("kind") == "log"
                       and str(e.get("message", "")).startswith("resumed from")),
        "changes": {k: [a, b] for k, (a, b) in (C.diff(base, cfg) if base else {}).items()},
        "mAP": best.get("mAP") if best else None, "AP50": best.get("AP50") if best else None,
        "best_step": best.get("step") if best else None, "mode": best.get("mode") if best else cfg.eval.val_data_mode,
        "steps": max((m.get("step", 0) for m in metrics), default=0),
        "final_loss": trains[-1].get("loss") if trains else None,
        "findings": sorted({e["rule"] for e in events if e.get("kind") == "diagnosis"}),
        "tune_post": post[-1] if post else None,
        "normalize_source": cfg.normalize.source, "batch_size": cfg.data.batch_size,
    }


def _val(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return str(v)


def line(rec: dict) -> str:
    """A record in the notes' own style: "<change> vs <preset>: mAP … (AP50 …)"."""
    if rec.get("kind") == "sweep":
        return rec["line"]
    changes = rec.get("changes") or {}
    if rec.get("reason") == "sweep" and rec.get("sweep_key"):  # a trial: what the sweep varied
        v = rec.get("sweep_value")
        shown = {rec["sweep_key"]: changes.get(rec["sweep_key"], [f"{_val(v)} (the preset's value)", v])}
    else:
        shown = {k: v for k, v in changes.items() if k not in ("train.max_steps", "eval.interval")} or changes
    what = ", ".join(f"{k} {_val(a)}" if isinstance(a, str) and a.endswith("(the preset's value)")
                     else f"{k} {_val(b)} vs {_val(a)}" for k, (a, b) in shown.items()) or "as preset"
    head = f"{rec['name']}: {what} ({rec['preset'] or 'no preset'})"
    res = (f"mAP {rec['mAP']:.4f} (AP50 {rec['AP50']:.4f}, {rec['mode']}, step {rec['best_step']})"
           if rec.get("mAP") is not None else "no evaluation yet")
    tail = [rec["status"]]
    if rec.get("parent"):
        tail.append(f"{rec['reason'] or 'child'} of {Path(rec['parent']).name}")
    if rec.get("resumes"):
        tail.append(f"resumed {rec['resumes']}×")
    if rec.get("findings"):
        tail.append("findings: " + ", ".join(rec["findings"]))
    if rec.get("tune_post"):
        tp = rec["tune_post"]
        tail.append(f"post-processing tuned: mAP {tp['default']['mAP']:.4f} → {tp['best']['mAP']:.4f}")
    return f"{head}: {res} [{'; '.join(tail)}]"


def records(root: Path = Path("runs")) -> list[dict]:
    """Every run (sweep trials included) and every sweep under ``root``, oldest first."""
    root = Path(root)
    out: list[dict] = []
    if not root.is_dir():
        return out
    for p in sorted(root.iterdir()):
        if (p / rundir.CONFIG).exists():
            try:
                out.append(record(p))
            except Exception as err:  # noqa: BLE001 - one broken folder must not hide the others
                out.append({"kind": "run", "name": p.name, "path": str(p), "error": str(err), "started": None})
        elif S.is_sweep(p):
            sw = S.load(p)
            out.append({"kind": "sweep", "name": p.name, "path": str(p), "key": sw.key, "best": sw.best_value(),
                        "status": sw.status, "started": sw.spec.created,
                        "line": f"{p.name}: {S.summary_line(sw.study)}",
                        "trials": [record(Path(r.run_dir)) for r in sw.results
                                   if (Path(r.run_dir) / rundir.CONFIG).exists()]})
    return sorted(out, key=lambda r: r.get("started") or 0)


def render_records(recs: list[dict], markdown: bool = False) -> str:
    out = []
    for rec in recs:
        text = rec.get("error") and f"{rec['name']}: unreadable ({rec['error']})" or line(rec)
        out.append(f"- {text}" if markdown else text)
        if rec.get("kind") == "sweep" and markdown:
            out += [f"  - {line(t)}" for t in rec.get("trials", [])]
    return "\n".join(out) + ("\n" if out else "")


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    metrics = rundir.read_metrics(run_dir)
    pick = lambda split, key: [(m["step"], m[key]) for m in metrics  # noqa: E731
                               if m.get("split") == split and isinstance(m.get(key), (int, float))]
    return {"train_loss": pick("train", "loss"), "val_loss": pick("val", "loss"), "mAP": pick("val", "mAP"),
            "AP50": pick("val", "AP50")}


def compare(a: Path, b: Path) -> dict:
    """Two runs side by side: every config key that differs (a, b), both sets of curves, a one-line verdict."""
    a, b = Path(a), Path(b)
    ca, cb = C.load(a / rundir.CONFIG), C.load(b / rundir.CONFIG)
    ra, rb = record(a), record(b)
    fmt = lambda r: "—" if r.get("mAP") is None else f"{r['mAP']:.4f}"  # noqa: E731
    what = ", ".join(f"{k} {_val(x)} vs {_val(y)}" for k, (x, y) in C.diff(ca, cb).items()) or "same config"
    return {"a": str(a), "b": str(b), "diff": [(k, x, y) for k, (x, y) in C.diff(ca, cb).items()],
            "curves": {"a": curves(a), "b": curves(b)}, "records": {"a": ra, "b": rb},
            "summary": f"{a.name} vs {b.name}: mAP {fmt(ra)} vs {fmt(rb)} ({what})"}
