"""The autopilot's journal.md in the notes' style: what it was asked, a heading per round with its table, the
choice and why, and the final figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import write_atomic
from ..run import rundir
from . import autopilot_plan as P


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:g}"
    return str(v)


def render(folder: Path, ap: P.Autopilot) -> str:
    s = ap.spec
    lines = [f"# autopilot {folder.name}", "",
             f"- preset `{s.preset}`, budget {P.budget_text(s.budget_min)}, {ap.used_s / 60:.1f} min used",
             f"- train `{s.config['data']['train']}`, val `{s.config['data']['val']}` (val is scored by the final "
             "run only)"]
    if ap.plan:
        lines.append(f"- plan: {ap.plan.get('why', '')}")
    for i, r in enumerate(ap.rounds, start=1):
        mark = {"done": "x", "skipped": "-", "running": ">"}.get(r.status, " ")
        lines += ["", f"## [{mark}] {i}. {P.TITLES[r.name]}", ""]
        if r.status == "pending":
            lines.append("not started")
            continue
        if r.rows:
            keys = [k for k in r.rows[0] if k != "label"]
            lines += ["| " + " | ".join(["", *keys]) + " |", "|" + "---|" * (len(keys) + 1)]
            lines += ["| " + " | ".join([_cell(x.get("label")), *(_cell(x.get(k)) for k in keys)]) + " |"
                      for x in r.rows]
            lines.append("")
        if r.choice:
            lines.append("chosen: " + ", ".join(f"`{k} = {v}`" for k, v in r.choice.items()))
        if r.why:
            lines.append(f"{'skipped: ' if r.status == 'skipped' else ''}{r.why}")
        if r.folder:
            lines.append(f"(in `{r.folder}/`)")
    if ap.final:
        lines += ["", "## result", "", "val (the final run's last weights): " +
                  ", ".join(f"{k} {v:.4f}" for k, v in ap.final.items()),
                  f"recipe: `{folder / 'recipe.toml'}` (load it with `--preset {folder / 'recipe.toml'}`)"]
    if ap.recipe:
        lines += ["", "recipe over the preset: " + ", ".join(f"`{k} = {v}`" for k, v in ap.recipe.items())]
    return "\n".join(lines) + "\n"


def write_journal(folder: Path | str, ap: P.Autopilot) -> Path:
    folder = Path(folder)
    return write_atomic(folder / rundir.JOURNAL, render(folder, ap))
