"""The architecture's walls, checked from the source: no import circle inside the engine (deferred imports
included), one import style, and the engine never imports the UI or the command line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO
ENGINE = REPO / "engine"


def engine_imports(path: Path) -> set[str]:
    """Engine modules ``path`` imports, at any depth of the file (a deferred import is still an edge)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:
                out |= {mod.split(".")[0]} if mod else {a.name for a in node.names}
            elif mod.startswith("nanxi_tune.engine"):
                rest = mod[len("nanxi_tune.engine"):].lstrip(".")
                out |= {rest.split(".")[0]} if rest else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[2] for a in node.names if a.name.startswith("nanxi_tune.engine.")}
    return out


def graph() -> dict[str, set[str]]:
    mods = {p.stem: p for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    return {m: engine_imports(p) & set(mods) - {m} for m, p in mods.items()}


def cli_graph() -> dict[str, set[str]]:
    """cli/'s modules and the cli modules each imports, deferred imports included."""
    mods = {p.stem for p in (REPO / "cli").glob("*.py") if p.stem not in ("__init__", "__main__")}
    out: dict[str, set[str]] = {}
    for m in mods:
        deps = set()
        for node in ast.walk(ast.parse((REPO / "cli" / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nanxi_tune.cli"):
                rest = node.module[len("nanxi_tune.cli"):].lstrip(".")
                deps |= {rest.split(".")[0]} if rest else {a.name for a in node.names}
        out[m] = deps & mods - {m}
    return out


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circle_in_the_command_line():
    assert cycle(cli_graph()) is None, " → ".join(cycle(cli_graph()))


def test_no_import_circle_in_the_engine():
    assert cycle(graph()) is None, " → ".join(cycle(graph()))


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_one_import_style_in_the_engine():
    absolute = [f"{p.name}: {n.module}" for p in ENGINE.glob("*.py") for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("nanxi_tune.engine")]
    assert not absolute, "the engine imports itself relatively (from .x import y): " + ", ".join(absolute)


def test_engine_never_imports_the_ui_or_the_command_line():
    upward = [f"{p.name}: {name}" for p in ENGINE.glob("*.py") for n in ast.walk(ast.parse(p.read_text()))
              for name in ([n.module or ""] if isinstance(n, ast.ImportFrom) else
                           [a.name for a in n.names] if isinstance(n, ast.Import) else [])
              if name.split(".")[0] in ("textual", "rich") or name.startswith(("nanxi_tune.tui", "nanxi_tune.cli"))]
    assert not upward, upward
    code = ("import sys, pkgutil, importlib, nanxi_tune.engine as E\n"
            "for m in pkgutil.iter_modules(E.__path__): importlib.import_module('nanxi_tune.engine.' + m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'textual' or m.startswith(('nanxi_tune.tui', "
            "'nanxi_tune.cli'))]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_command_line_lives_in_cli_and_keeps_its_shape():
    """tui/ parses no arguments; every subcommand keeps the options, defaults and choices it had when the command
    line moved into cli/ (tests/cli/cli_shape.json; a deliberate change to the CLI updates that file too)."""
    import json

    from nanxi_tune.cli.main import _parser

    parsing = [p.name for p in (REPO / "tui").glob("*.py") if "argparse" in p.read_text()]
    assert not parsing, parsing
    p = _parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    shape = {name: sorted(f"{'/'.join(a.option_strings) or a.dest}:{a.nargs}:{a.default!r}:"
                          f"{sorted(a.choices) if a.choices else ''}" for a in sp._actions)
             for name, sp in sub.choices.items()}
    shape["(main)"] = sorted(f"{'/'.join(a.option_strings) or a.dest}:{a.default!r}" for a in p._actions if a is not sub)
    assert shape == json.loads((REPO / "tests" / "cli" / "cli_shape.json").read_text())
