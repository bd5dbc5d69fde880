"""`nanxi-tune diagnose RUN_DIR [--json]`: the diagnostic rules over a finished or running run directory.

Exit status 0 (findings or not), 2 when RUN_DIR is not a run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_STYLE = {"info": "cyan", "warning": "yellow", "error": "bold red"}


def _set_line(changes: dict) -> str:
    """The remedy's config changes as one `--set` a shell reads back to the same values."""
    import shlex

    from nanxi_tune.engine.config import toml_value

    return "--set " + " ".join(shlex.quote(f"{k}={toml_value(v)}") for k, v in changes.items())


def _print_finding(console, f, run_dir: Path) -> None:
    """One finding as a compiler prints a diagnostic: rule and severity on a line, the message and remedy as indented
    paragraphs, the commands on lines of their own (never wrapped by us, so they copy whole)."""
    from rich.text import Text

    def para(text: str, style: str = "") -> None:
        """Indented and wrapped by the cells a character takes (a Chinese character is two wide)."""
        for line in Text(text, style=style).wrap(console, max(20, console.width - 2)):
            line.rstrip()
            console.print(Text("  ") + line, soft_wrap=True)

    section = f"§{f.section}" if f.section[:1].isdigit() else f.section  # the notes' sections are numbered
    head = Text.assemble((f.severity, _STYLE[f.severity]), f"[{f.rule}] ", (f"{section} · step {f.step}", "dim"))
    console.print(head)
    para(f.message)
    if f.evidence:
        evidence = ", ".join(f"{k} = {v}" for k, v in f.evidence.items())
        para(f"evidence: {evidence}", "dim")
    rem = f.remedy or {}
    text = rem.get("text") or ""
    if rem.get("resume_from_step") is not None:
        text = f"{text} (resume from step ≤ {rem['resume_from_step']})".strip()
    if text:
        para(f"remedy: {text}")
    if rem.get("set"):
        console.print("  " + _set_line(rem["set"]), soft_wrap=True, highlight=False, markup=False)
        console.print(f"  nanxi-tune remedy {run_dir} {f.rule}", soft_wrap=True, highlight=False, markup=False)
    elif rem.get("command"):  # "A, then B": one command a line, each pasted as it is
        for command in rem["command"].format(run=run_dir).split(", then "):
            console.print("  " + command, soft_wrap=True, highlight=False, markup=False)
    console.print()


def add_parsers(sub) -> None:
    d = sub.add_parser("diagnose", help="run the notes' diagnostic rules over a run directory")
    d.add_argument("run_dir")
    d.add_argument("--json", action="store_true",
                   help="JSON Lines: one JSON object per finding (events.jsonl's form), no output without findings")


def diagnose(args) -> int:
    """Print the findings of ``args.run_dir`` as compiler-style diagnostics, or with ``args.json`` as JSON Lines (one finding a
    line, events.jsonl's form; nothing when there are none), not one JSON document. Exit 0."""
    from nanxi_tune.engine.run import rundir
    from nanxi_tune.engine.diagnosis.watcher import diagnose_run

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

    console = Console()
    if not findings:
        console.print(f"diagnosis of {run_dir}: no findings", highlight=False, soft_wrap=True)
        return 0
    console.print(f"diagnosis of {run_dir}: {len(findings)} finding{'s' * (len(findings) != 1)}\n", highlight=False,
                  soft_wrap=True)  # a path is not wrapped: it copies whole
    for f in findings:
        _print_finding(console, f, run_dir)
    return 0


COMMANDS = {"diagnose": diagnose}
