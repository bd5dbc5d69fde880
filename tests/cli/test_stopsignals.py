"""A stop signal while Python imports a library: libraries wrap imports in bare ``except`` (numpy, torch), so an
exception raised there by the signal handler is swallowed and leaves a half-made module. The stop must wait for
the import to end and then end the command (or reach the trainer) — never be lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SELF_KILL = """
import os, signal
try:  # what numpy's and torch's own imports do around optional parts
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(200000):
        pass
except BaseException:
    pass
DONE = True
"""


def run(tmp_path, body: str) -> str:
    (tmp_path / "selfkill.py").write_text(SELF_KILL)
    script = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, {where!r})
        from nanxi_tune.cli.stopsignals import GUARD, StoppedBeforeStart
        GUARD.install()
        try:
        {body}
        except StoppedBeforeStart as s:
            print("stopped", s.name, getattr(sys.modules.get("selfkill"), "DONE", False))
    """).format(where=str(tmp_path), body=textwrap.indent(textwrap.dedent(body), "    "))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_stop_inside_an_import_ends_the_command_after_the_import(tmp_path):
    out = run(tmp_path, """
        import selfkill
        time.sleep(2)
        print("went on")
    """)
    assert out == "stopped SIGTERM True"


def test_a_stop_pending_from_an_import_is_raised_before_the_trainer_is_attached(tmp_path):
    out = run(tmp_path, """
        import selfkill
        GUARD.attach(lambda: print("stop asked of a trainer"), print)
        print("attached")
    """)
    assert out == "stopped SIGTERM True"


def test_a_stop_after_attach_asks_the_trainer(tmp_path):
    out = run(tmp_path, """
        GUARD.attach(lambda: print("stop asked of a trainer"), print)
        import selfkill
        print("imported", selfkill.DONE)
    """)
    assert out.splitlines() == ["SIGTERM", "stop asked of a trainer", "imported True"]
