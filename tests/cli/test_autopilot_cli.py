"""`nanxi-tune autopilot`: bad input refused before anything is written; `ctl DIR status` reads an autopilot."""

from nanxi_tune.cli import main as cli
from nanxi_tune.engine.workflows import autopilot_plan as P
from nanxi_tune.engine.workflows.autopilot import create
from tests.conftest import tiny


def test_a_bad_budget_or_a_missing_data_path_is_refused_naming_it(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli.main(["--runs", str(runs), "autopilot", "--preset", "demo", "--budget", "soon"]) == 2
    assert "budget 'soon': give a duration such as 90m, 12h or 2d" in capsys.readouterr().err
    missing = tmp_path / "nowhere.json"
    assert cli.main(["--runs", str(runs), "autopilot", "--preset", "demo", "--budget", "1h", "--set",
                     f"data.train={missing}"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert cli.main(["--runs", str(runs), "autopilot", "--preset", "demo", "--budget", "1h", "--holdout",
                     "1.5"]) == 2
    assert "--holdout 1.5" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())  # nothing written


def test_ctl_status_shows_the_rounds_as_a_checklist(tmp_path, capsys):
    folder = tmp_path / "ap"
    create(folder, "demo", tiny(), 90)
    ap = P.load(folder)
    ap.round("split").status = "done"
    ap.round("profile").status, ap.round("profile").choice = "done", {"neck.out_stride": 16}
    P.save(folder, ap)
    assert cli.main(["ctl", str(folder), "status"]) == 0
    out = capsys.readouterr().out
    assert "ap: new; budget 90.0 min" in out
    assert " [x] 2. read the data: neck.out_stride=16" in out and " [ ] 4. learning rate" in out
    assert cli.main(["ctl", str(folder), "pause"]) == 1  # no owner: refused, with the way to resume
    assert f"nanxi-tune resume {folder}" in capsys.readouterr().err
