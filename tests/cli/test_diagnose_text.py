"""`nanxi-tune diagnose` at 80 columns reads like a compiler diagnostic (issue 22): rule and severity on one line,
the message as a paragraph (no word a line), the remedy as `--set` text a user can copy whole."""

import shlex

from nanxi_tune.cli.main import main
from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.diagnosis import watcher
from nanxi_tune.engine.diagnosis.rulebook import Finding, remedy

MESSAGE = ("training loss has been flat since the 2nd epoch (relative drop 0.4% over 120 steps against the 5% the "
           "notes expect); the lr is most likely too large for this batch size")


def _finding() -> Finding:
    return Finding("loss-flat", "warning", "§2 lr", MESSAGE, {"rel_drop": 0.004, "steps": 120},
                   remedy({"train.base_lr": 0.0003, "loss.shape_weights": [0.1, 0.2, 0.3]}, 64,
                          "lower the lr by half a decade and resume from the end of the 1st epoch"), 180)


def test_diagnose_reads_at_80_columns(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    C.save(C.Config(), run / rundir.CONFIG)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(watcher, "diagnose_run", lambda _run: [_finding()])
    assert main(["diagnose", str(run)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    body = [x for x in lines if not x.startswith(("  --set", "  nanxi-tune", "diagnosis of"))]  # paths: whole
    assert max(len(x) for x in body) <= 80
    head = next(x for x in lines if "loss-flat" in x)
    assert "warning" in head and "§2 lr" in head and "step 180" in head
    # the message is a paragraph: no line holds a lone word
    body = [x.strip() for x in lines if x.strip() and x.strip().split()[0] in MESSAGE.split()]
    assert len(body) <= 4 and all(len(x.split()) > 3 for x in body[:-1])
    assert " ".join(body).startswith("training loss has been flat since the 2nd epoch")
    # the remedy: one line of --set a shell reads back to the same values
    sets = next(x for x in lines if x.strip().startswith("--set"))
    words = shlex.split(sets)
    assert words[0] == "--set"
    assert C.parse_sets(words[1:]) == {"train.base_lr": 0.0003, "loss.shape_weights": [0.1, 0.2, 0.3]}
    assert f"nanxi-tune remedy {run} loss-flat" in out
    assert "resume from step ≤ 64" in out


def test_diagnose_without_findings_says_so(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    C.save(C.Config(), run / rundir.CONFIG)
    monkeypatch.setattr(watcher, "diagnose_run", lambda _run: [])
    assert main(["diagnose", str(run)]) == 0
    assert f"diagnosis of {run}: no findings" in capsys.readouterr().out
