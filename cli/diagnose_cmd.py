"""`nanxi-tune diagnose RUN_DIR [--json]`: the diagnostic rules over a finished or running run directory.

Exit status 0 (findings or not), 2 when RUN_DIR is not a run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_STYLE = {"info": "cyan", "warning": "yellow", "error": "bold red"}


def _remedy_text(remedy: dict) -> str:
    parts = [f"{k} = {v}" for k, v in (remedy.get("set") or {}).items()]
    if remedy.get("resume_from_step") is not None:
        parts.append(f"resume from step ≤ {remedy['resume_from_step']}")
    head = "; ".join(parts)
    text = remedy.get("text") or ""
    return f"{head}\n{text}" if head and text else head or text


def add_parsers(sub) -> None:
    d = sub.add_parser("diagnose", help="run the notes' diagnostic rules over a run directory")
    d.add_argument("run_dir")
    d.add_argument("--json", action="store_true",
                   help="JSON Lines: one JSON object per finding (events.jsonl's form), no output without findings")


def diagnose(args) -> int:
    """Print the findings of ``args.run_dir`` as a Rich table, or with ``args.json`` as JSON Lines (one finding a
    line, events.jsonl's form; nothing when there are none), not one JSON document. Exit 0."""
    from nanxi_tune.engine import rundir
    from nanxi_tune.engine.watcher import diagnose_run

    run_dir = Path(args.run_dir)
    if not (run_dir / rundir.CONFIG).exists():
        print(f"nanxi-tune: {run_dir}: not a run directory (no {rundir.CONFIG})", file=sys.stderr)
        return 2
    findings = diagnose_run(run_dir)
    if getattr(args, "json", False):
        for f in findings:
            print(json.dumps(f.to_event().to_json(), ensure_ascii=False))
        return 0

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"diagnosis of {run_dir}", show_lines=True, expand=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("section", max_width=16)
    table.add_column("message", ratio=3)
    table.add_column("remedy", ratio=2)
    for f in findings:
        table.add_row(f.rule, f"[{_STYLE[f.severity]}]{f.severity}", f.section, f"{f.message}\n[dim]step {f.step}",
                      _remedy_text(f.remedy))
    console = Console()
    if findings:
        console.print(table)
    else:
        console.print(f"diagnosis of {run_dir}: no findings")
    return 0


COMMANDS = {"diagnose": diagnose}
