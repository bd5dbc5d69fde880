"""The headless CLI as a user types it: train, resume, eval, diagnose, presets; errors name the key."""

import json

import pytest

from nanxi_tune.engine.run import rundir
from nanxi_tune.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

SETS = ["preprocess.input_size=64", "data.synthetic_train=32", "data.synthetic_val=8", "data.batch_size=8",
        "backbone.width=8", "head.channels=16", "train.epochs=2", "eval.online=false"]


def test_train_resume_eval_diagnose(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--preset", "demo", "--quiet", "--run-dir", str(run), "--max-steps", "3", "--set", *SETS]) == 3
    err = capsys.readouterr().err
    assert f"nanxi-tune resume {run}" in err
    lines = rundir.read_metrics(run)
    assert [m["step"] for m in lines if m["split"] == "train"] == [1, 2, 3]
    assert all(k in lines[0] for k in ("loss_map", "loss_offset", "loss_shape"))

    assert main(["train", "--preset", "demo", "--quiet", "--run-dir", str(run), "--set", *SETS]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["resume", str(run), "--quiet", "--set", "train.seed=3"]) == 2
    assert "train.seed" in capsys.readouterr().err
    assert main(["resume", str(run), "--quiet", "--set", "train.base_lr=0.001"]) == 0
    assert "finished" in capsys.readouterr().err
    assert max(m["step"] for m in rundir.read_metrics(run)) == 8

    assert main(["eval", str(run), "--checkpoint", "last"]) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and "AP50" in out and "loss_shape" in out
    assert "what costs AP50" in out and "localisation" in out and "shape" in out  # the errors, by branch
    val = [m for m in rundir.read_metrics(run) if m.get("split") == "val"][-1]
    errors = val["errors"]  # every evaluation stores what costs AP50 with its line (issue 21)
    assert set(errors["delta"]) == {"classification", "localisation", "both", "duplicate", "background", "missed"}
    assert abs(errors["map50"] - val["AP50"]) < 1e-6  # the breakdown's AP50 is COCOeval's

    assert main(["diagnose", str(run), "--json"]) == 0
    findings = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert {"rule", "severity", "section", "remedy"} <= set(findings[0])


def test_bad_set_and_preset_are_clear(tmp_path, capsys):
    assert main(["train", "--preset", "demo", "--set", "train.base_lr=-1", "--run-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "train.base_lr = -1" in err and "greater than 0" in err and "Traceback" not in err
    assert main(["train", "--preset", "nope"]) == 2
    assert "bundled presets" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_presets_lists_bundled(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "coco-640" in out and "bccd" in out


def test_resume_without_checkpoint_starts_again(tmp_path, capsys):
    run = tmp_path / "empty"
    run.mkdir()
    from nanxi_tune.engine import config as C

    C.save(C.with_updates(C.load_preset("demo"), C.parse_sets(SETS)), run / "config.toml")
    assert main(["resume", str(run), "--quiet", "--max-steps", "1"]) == 3
    assert "before its first checkpoint: starting it again from step 0" in " ".join(capsys.readouterr().err.split())


def test_missing_data_is_a_message_not_a_traceback(tmp_path, capsys):
    code = main(["train", "--preset", "demo", "--quiet", "--run-dir", str(tmp_path / "r"),
                 "--set", "data.train=no/such/folder"])
    err = capsys.readouterr().err
    assert code == 1 and "no/such/folder" in err and "data.train" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before a run folder is made (issue 22)
    assert main(["autobatch", "--preset", "demo", "--set", "data.train=no/such/folder"]) == 1
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "Traceback" not in err


def test_a_folder_that_is_not_a_run_is_named(tmp_path, capsys):
    for command in ("eval", "resume", "diagnose", "budget"):
        assert main([command, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path}: not a run directory" in err and "Traceback" not in err
        assert ("saved no checkpoint yet" in err) == (command == "resume")  # killed before writing config.toml
        assert main([command, str(tmp_path / "gone")]) == 2
        assert f"{tmp_path / 'gone'}: no such file or folder" in capsys.readouterr().err


def test_a_bare_run_name_is_looked_up_under_runs(tmp_path, monkeypatch, capsys):
    from nanxi_tune.engine import config as C

    run = tmp_path / "runs" / "demo-20261205-222729"
    run.mkdir(parents=True)
    C.save(C.Config(), run / rundir.CONFIG)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["--runs", str(tmp_path / "runs"), "diagnose", "demo-20261205-222729"]) == 0
    assert f"diagnosis of {run}" in capsys.readouterr().out
    assert main(["--runs", str(tmp_path / "runs"), "diagnose", "nope"]) == 2
