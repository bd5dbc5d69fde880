"""journal.md: the human-readable record of a run, in the style of the notes' own records."""

from __future__ import annotations

import time
from pathlib import Path

from .. import config as C
from . import rundir
from ..files import write_atomic


def load(run_dir: Path):
    """(cfg, its preset or None, metrics, events, val lines, train lines) of one run directory."""
    cfg = C.load(run_dir / rundir.CONFIG)
    metrics = rundir.read_metrics(run_dir)
    return (cfg, C.base_of(cfg), metrics, rundir.read_events(run_dir),
            [m for m in metrics if m.get("split") == "val"], [m for m in metrics if m.get("split") == "train"])


def render(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    cfg, base, _metrics, events, vals, trains = load(run_dir)
    lines = [f"# {run_dir.name}", "", f"- preset: `{cfg.preset or '(none)'}`"]
    parent = parent_of(events)
    if parent:
        lines.append(f"- parent: `{parent['parent']}` ({parent.get('reason', '')})")
        if parent.get("reason") == "sweep":
            lines.append(f"- sweep trial: `{parent.get('sweep_key')}` = {parent.get('sweep_value'):g}")
    for e in events:
        if e.get("kind") == "log" and str(e.get("message", "")).startswith("resumed from"):
            lines.append(f"- resumed: {e['message']}")
        elif e.get("kind") == "log" and str(e.get("message", "")).startswith("data-parallel:"):
            lines.append(f"- {e['message']}")  # ranks, per-device and global batch, lr on the global batch
    lines += ["", "## Config vs preset", ""]
    changes = C.diff(base, cfg) if base else {}
    lines += [f"- `{k}`: {a!r} → {b!r}" for k, (a, b) in changes.items()] or ["- (no changes)"]
    lines += ["", "## Results", ""]
    if trains:
        t = trains[-1]
        lines.append(f"- step {t['step']} (epoch {t['epoch']}): loss {t['loss']:.4f} — map {t['loss_map']:.4f}, "
                     f"offset {t['loss_offset']:.4f}, shape {t['loss_shape']:.4f}")
    if vals:
        best = max(vals, key=lambda m: m.get("mAP", 0))
        lines.append(f"- best val mAP {best['mAP']:.4f} (AP50 {best['AP50']:.4f}) at step {best['step']}, "
                     f"mode {best.get('mode', '?')}")
    posts = [e for e in events if e.get("kind") == "log" and e.get("tune_post")]
    if posts:
        lines += ["", "## Post-processing (tuned after training)", ""]
        lines += [f"- {e['message']}" for e in posts]
    edits = [e for e in events if e.get("kind") == "ack" and e.get("applied") and e.get("changes")]
    if edits:
        lines += ["", "## Live edits", ""]
        lines += [f"- step {e['step']}: " + ", ".join(f"`{k}` {a!r} → {b!r}" for k, a, b in e["changes"])
                  + f" ({e.get('sender', '?')})" for e in edits]
    plans = [e for e in events if e.get("kind") == "plan"]
    if plans:
        lines += ["", "## Plan (train.time_budget_min)", ""]
        lines += [f"- step {e['step']}: {e['text']}" for e in plans[:1] + plans[-1:]] if len(plans) > 1 else \
            [f"- step {e['step']}: {e['text']}" for e in plans]
    findings = [e for e in events if e.get("kind") == "diagnosis"]
    if findings:
        lines += ["", "## Diagnoses", ""]
        lines += [f"- [{e['severity']}] `{e['rule']}` (§{e['section']}) at step {e['step']}: {e['message']}"
                  for e in findings]
    moments = [e for e in events if e.get("kind") == "error" or (e.get("kind") == "state" and (
        e.get("state") != "running" or e.get("message") in ("started", "resumed", "continued")))]
    if moments:
        lines += ["", "## Timeline", ""]
        for e in moments:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("time", 0)))
            lines.append(f"- {when} step {e.get('step', '?')}: {_moment(e)}")
    return "\n".join(lines) + "\n"


def _moment(e: dict) -> str:
    """"stopped by request; …", "resumed", "finished: best mAP …", "error: …": the state said once."""
    if e.get("kind") == "error":
        return f"error: {e.get('error')}"
    state, message = str(e.get("state")), str(e.get("message") or "")
    if state == "running" or message.split(" ")[0] == state:
        return message
    return f"{state}: {message}" if message else state


def write(run_dir: Path) -> Path:
    return write_atomic(Path(run_dir) / rundir.JOURNAL, render(run_dir))


def parent_of(events: list[dict]) -> dict | None:
    return next((e for e in events if e.get("kind") == "log" and e.get("parent")), None)
