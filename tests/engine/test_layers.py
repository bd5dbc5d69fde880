"""The architecture's walls, checked from the source: no import circle inside the engine (deferred imports
included), one import style, and the engine never imports the UI or the command line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO
ENGINE = REPO / "engine"

# The engine's packages from the bottom up: a module imports only modules of its own package or of one below.
ENGINE_LAYERS = ("code_version", "files", "config", "metric_keys", "grid", "run", "data", "model", "evaluation", "inference",
                 "diagnosis", "train", "workflows")


def modules(top: str) -> dict[str, Path]:
    """Every module of the package ``top`` (engine, cli, tui) by its dotted name inside it: "run.rundir"."""
    base = REPO / top
    return {".".join(p.relative_to(base).with_suffix("").parts): p for p in base.rglob("*.py")}


def imports_of(top: str, name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Modules of ``top`` that ``path`` (module ``name``) imports, at any depth of the file (a deferred import is
    still an edge), relative or absolute; ``from pkg import x`` is an edge to pkg.x when x is a module."""
    package = name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif (node.module or "") == f"nanxi_tune.{top}" or (node.module or "").startswith(f"nanxi_tune.{top}."):
                target = node.module.split(".")[2:]
            else:
                continue
            dotted = ".".join(target)
            for a in node.names:  # a module, a package (its __init__), or a name of a module / package
                full = f"{dotted}.{a.name}" if dotted else a.name
                init = f"{dotted}.__init__" if dotted else "__init__"
                out.add(next((m for m in (full, f"{full}.__init__", dotted, init) if m in mods), full))
        elif isinstance(node, ast.Import):
            out |= {".".join(a.name.split(".")[2:]) for a in node.names if a.name.startswith(f"nanxi_tune.{top}.")}
    return (out & set(mods)) - {name}


def graph(top: str = "engine") -> dict[str, set[str]]:
    mods = modules(top)
    return {m: imports_of(top, m, p, mods) for m, p in mods.items()}


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


def test_no_import_circle_in_any_package():
    for top in ("engine", "cli", "tui"):
        found = cycle(graph(top))
        assert found is None, f"{top}/: " + " → ".join(found)


def test_engine_packages_import_only_downward():
    up = [f"{m} → {d}" for m, deps in graph().items() for d in deps
          if m.split(".")[0] in ENGINE_LAYERS and d.split(".")[0] in ENGINE_LAYERS
          and ENGINE_LAYERS.index(d.split(".")[0]) > ENGINE_LAYERS.index(m.split(".")[0])]
    assert not up, up
    packages = {m.split(".")[0] for m in modules("engine") if "." in m or m != "__init__"}
    assert packages == set(ENGINE_LAYERS), packages ^ set(ENGINE_LAYERS)  # a new package takes its place here


def test_the_graph_sees_relative_and_deferred_imports():
    g = graph()
    assert "run.rundir" in g["train.trainer"] and "config.__init__" in g["train.trainer"]
    assert "run.rundir" in g["run.runctl"]  # from . import rundir, inside run/


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_one_import_style_in_the_engine():
    absolute = [f"{p.name}: {n.module}" for p in ENGINE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("nanxi_tune.engine")]
    assert not absolute, "the engine imports itself relatively (from .x import y): " + ", ".join(absolute)


def test_engine_never_imports_the_ui_or_the_command_line():
    upward = [f"{p.name}: {name}" for p in ENGINE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
              for name in ([n.module or ""] if isinstance(n, ast.ImportFrom) else
                           [a.name for a in n.names] if isinstance(n, ast.Import) else [])
              if name.split(".")[0] in ("textual", "rich") or name.startswith(("nanxi_tune.tui", "nanxi_tune.cli"))]
    assert not upward, upward
    code = ("import sys, pkgutil, importlib, nanxi_tune.engine as E\n"
            "for m in pkgutil.walk_packages(E.__path__, 'nanxi_tune.engine.'): importlib.import_module(m.name)\n"
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


def test_the_tui_never_imports_the_command_line_and_the_command_line_only_launches_it():
    def named(path: Path) -> set[str]:
        return {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.module}

    tui_to_cli = [f"tui/{m}: {x}" for m, p in modules("tui").items() for x in named(p) if x.startswith("nanxi_tune.cli")]
    assert not tui_to_cli, tui_to_cli
    cli_to_tui = {(f"cli/{m}", x) for m, p in modules("cli").items() for x in named(p) if x.startswith("nanxi_tune.tui")}
    assert cli_to_tui == {("cli/main", "nanxi_tune.tui.app")}, cli_to_tui


def test_no_module_over_400_lines_and_the_trainer_reads_in_one_sitting():
    long = [f"{top}/{m.replace('.', '/')}.py: {n}" for top in ("engine", "cli", "tui") for m, p in modules(top).items()
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, long
    tree = ast.parse((ENGINE / "train" / "trainer.py").read_text())
    (trainer,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    assert trainer.end_lineno - trainer.lineno + 1 <= 350


def test_every_trainer_attribute_is_set_in_init():
    """No attribute created lazily: what the Trainer's methods, its commands (``self.t``) and its train state
    (``t``) assign on it, __init__ set first; and nothing probes it with hasattr / getattr."""
    def assigned(node: ast.AST, owner: str) -> set[str]:
        return {t.attr for n in ast.walk(node) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                for t in (t.elts if isinstance(t, ast.Tuple) else [t])
                if isinstance(t, ast.Attribute) and ast.unparse(t.value) == owner}

    tree = ast.parse((ENGINE / "train" / "trainer.py").read_text())
    (trainer,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    init = next(f for f in trainer.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    in_init = assigned(init, "self")
    later = assigned(trainer, "self") | assigned(ast.parse((ENGINE / "train" / "state.py").read_text()), "t")
    later |= assigned(ast.parse((ENGINE / "train" / "commands.py").read_text()), "t")
    assert later <= in_init, sorted(later - in_init)
    probes = [ast.unparse(n) for n in ast.walk(trainer) if isinstance(n, ast.Call)
              and ast.unparse(n.func) in ("hasattr", "getattr") and ast.unparse(n.args[0]) == "self"]
    assert not probes, probes
