"""The CLI's consoles: a printed line is never wrapped (a log file keeps a command to copy on one line)."""

import io

from nanxi_tune.cli.drive import SteadyConsole


def test_a_long_line_to_a_file_stays_one_line():
    buf = io.StringIO()
    folder = "/tmp/walk/runs3/autopilot-demo-20261207-010514"
    SteadyConsole(file=buf, width=40).print(f"stopped. Resume with: nanxi-tune resume {folder}")
    assert buf.getvalue() == f"stopped. Resume with: nanxi-tune resume {folder}\n"
