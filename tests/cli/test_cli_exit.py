"""The headless CLI as shells, schedulers and nohup expect it: repeated --set accumulates, exit statuses tell a
finished run from a stopped or failed one (and are listed in --help), unknown keys get "did you mean", output to a
pipe is plain lines (or JSON lines), a signal in the first instant leaves no empty folder, and a run killed before
its first checkpoint resumes from step 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanxi_tune.engine import config as C
from conftest import REPO
from nanxi_tune.engine.run import rundir
from nanxi_tune.cli.exitcodes import ExitCode
from nanxi_tune.cli.main import _parser, main

SETS = ["preprocess.input_size=64", "data.synthetic_train=32", "data.synthetic_val=8", "data.batch_size=8",
        "backbone.width=8", "head.channels=16", "train.epochs=1", "eval.online=false", "diagnose.enabled=false"]


def cli() -> list[str]:
    script = Path(sys.executable).with_name("nanxi-tune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nanxi_tune.cli"]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# --- arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["train"], ["resume", "r"], ["eval", "r"], ["sweep"], ["stats"],
                                     ["autobatch"]])
def test_repeated_set_accumulates(command):
    args = _parser().parse_args(command + ["--set", "train.base_lr=10", "--set", "train.epochs=4", "a=1", "b=2"])
    assert args.sets == ["train.base_lr=10", "train.epochs=4", "a=1", "b=2"]
    assert _parser().parse_args(command + ["--set", "a=1", "b=2"]).sets == ["a=1", "b=2"]


def test_help_lists_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for code in ExitCode:
        assert f"{int(code)} " in out
    assert "stopped by request" in out and "resume" in out and "bad input" in out


def test_diagnose_help_says_json_lines(capsys):
    with pytest.raises(SystemExit):
        main(["diagnose", "--help"])
    assert "JSON Lines" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("key,meant", [("train.base_rl", "train.base_lr"), ("trian.base_lr", "train.base_lr"),
                                       ("base_lr", "train.base_lr"), ("data.batchsize", "data.batch_size")])
def test_unknown_key_did_you_mean(key, meant, capsys):
    with pytest.raises(C.ConfigError, match=f"did you mean {meant}"):
        C.with_updates(C.load_preset("demo"), {key: 1})
    assert main(["train", "--set", f"{key}=1", "--run-dir", "/nonexistent/x"]) == ExitCode.BAD_INPUT
    assert f"did you mean {meant}" in capsys.readouterr().err


def test_unknown_key_in_a_preset_file_did_you_mean(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[train]\nbase_rl = 0.01\n")
    with pytest.raises(C.ConfigError, match="did you mean train.base_lr"):
        C.load_preset(str(p))


def test_a_stop_exits_3_and_a_finish_0(tmp_path, capsys, one_thread):
    run = tmp_path / "r"
    assert main(["train", "--quiet", "--run-dir", str(run), "--max-steps", "2", "--set", *SETS]) == ExitCode.STOPPED
    assert f"nanxi-tune resume {run}" in capsys.readouterr().err
    assert main(["resume", str(run), "--quiet"]) == ExitCode.FINISHED
    assert main(["train", "--quiet", "--run-dir", str(run), "--set", *SETS]) == ExitCode.BAD_INPUT


# --- output when stdout is not a terminal -------------------------------------------------------------

def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cli() + args, capture_output=True, text=True, env=env(), timeout=timeout)


def test_piped_output_is_plain_lines_at_steps_evals_and_states(tmp_path):
    run = tmp_path / "r"  # 4 steps per epoch, 2 epochs: an eval at 4 and 8
    r = run_cli(["train", "--run-dir", str(run), "--print-every", "2", "--set", *SETS, "train.epochs=2",
                 "eval.interval=1"])
    assert r.returncode == ExitCode.FINISHED, r.stderr[-2000:]
    lines = r.stderr.splitlines()
    assert lines[0].endswith(f"run folder: {run} (resume: nanxi-tune resume {run})"), lines[0]  # issue 22
    steps = [ln for ln in lines if " step " in f" {ln.split(' ', 1)[1]}" and "/8" in ln]
    assert [ln.split()[2] for ln in steps] == ["1/8", "3/8", "5/8", "7/8", "8/8"], lines
    for key in ("epoch", "loss", "map", "offset", "shape", "lr", "img/s", "ETA"):
        assert key in steps[-2], steps[-2]
    assert sum("val mAP" in ln for ln in lines) == 2
    assert any("state running" in ln for ln in lines) and any("state finished" in ln for ln in lines)
    assert not any(ch in r.stderr for ch in "\r\x1b━…"), "no progress bar or escape codes in a log"
    assert all(len(ln) < 300 for ln in lines)


def test_json_lines_on_stdout(tmp_path):
    run = tmp_path / "r"
    r = run_cli(["train", "--json", "--run-dir", str(run), "--max-steps", "3", "--set", *SETS])
    assert r.returncode == ExitCode.STOPPED, r.stderr[-2000:]
    objs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert objs[0] == {"kind": "run", "run_dir": str(run)}  # the first line names the run folder (issue 22)
    kinds = [o["kind"] for o in objs]
    assert kinds.count("step") == 3 and "state" in kinds and "checkpoint" in kinds
    assert objs[-1] == {"kind": "exit", "state": "stopped", "code": 3, "step": 3, "run_dir": str(run),
                        "best_mAP": 0}
    assert "nanxi-tune resume" in r.stderr


def test_quiet_prints_the_outcome_only(tmp_path):
    run = tmp_path / "r"
    r = run_cli(["train", "--quiet", "--run-dir", str(run), "--max-steps", "2", "--set", *SETS])
    assert r.returncode == ExitCode.STOPPED
    assert r.stdout == "" and " ".join(r.stderr.split()) == f"stopped at step 2. Resume with: nanxi-tune resume {run}"


# --- signals in the first instant ----------------------------------------------------------------------

@pytest.mark.parametrize("delay", [0.4, 1.5])  # while Python loads the CLI / while torch loads
def test_sigterm_while_starting_exits_stopped_and_leaves_no_folder(tmp_path, delay):
    root = tmp_path / "runs"
    p = subprocess.Popen(cli() + ["--runs", str(root), "train", "--set", *SETS], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env(), cwd=tmp_path)
    time.sleep(delay)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == ExitCode.STOPPED, (p.returncode, err[-2000:])
    assert "SIGTERM" in err and "stopped before training started" in err, err[-2000:]
    assert not root.exists() or not list(root.iterdir()), list(root.iterdir())


# --- a run killed before its first checkpoint ------------------------------------------------------------

def test_resume_before_first_checkpoint_starts_again_from_step_0(tmp_path, capsys, one_thread):
    run = tmp_path / "r"
    cfg = C.with_updates(C.load_preset("demo"), C.parse_sets(SETS))
    C.save(cfg, run / rundir.CONFIG)
    # what a kill -9 during the first steps leaves: partial metrics and events, a temp checkpoint, no last.pt
    (run / rundir.METRICS).write_text('{"split": "train", "step": 1, "loss": 9.0}\n{"split": "tr')
    (run / rundir.EVENTS).write_text('{"kind": "state", "state": "running", "step": 0}\n')
    (run / rundir.CHECKPOINTS).mkdir()
    (run / rundir.CHECKPOINTS / ".last.pt.tmp-999999999").write_bytes(b"partial")
    assert main(["train", "--quiet", "--run-dir", str(run), "--set", *SETS]) == ExitCode.BAD_INPUT
    assert "nanxi-tune resume" in capsys.readouterr().err
    assert main(["resume", str(run), "--quiet", "--max-steps", "2"]) == ExitCode.STOPPED
    err = " ".join(capsys.readouterr().err.split())
    assert "stopped before its first checkpoint: starting it again from step 0" in err
    assert [m["step"] for m in rundir.read_metrics(run) if m["split"] == "train"] == [1, 2]
    assert [m["loss"] for m in rundir.read_metrics(run)][0] != 9.0
    assert not list((run / rundir.CHECKPOINTS).glob(".*tmp*"))
    assert main(["resume", str(run), "--quiet"]) == ExitCode.FINISHED


def test_readme_lists_the_exit_codes_and_relative_paths():
    readme = (REPO / "README.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in readme, code
    assert "relative to the folder you run" in readme and "JSON Lines" in readme and "⟳" in readme


def test_a_run_owned_by_a_live_process_exits_4(tmp_path, capsys, one_thread):
    from nanxi_tune.engine.run import runctl

    run = tmp_path / "r"
    assert main(["train", "--quiet", "--run-dir", str(run), "--max-steps", "1", "--set", *SETS]) == ExitCode.STOPPED
    owner = runctl.RunOwner.acquire(run)  # another trainer, as far as the lock can tell
    try:
        assert main(["resume", str(run), "--quiet"]) == ExitCode.BUSY
    finally:
        owner.release()
    assert "live process" in capsys.readouterr().err


def test_under_nohup_a_hangup_is_still_ignored(tmp_path):
    """nohup starts the command with SIGHUP ignored: the run must keep ignoring it (only SIGINT/SIGTERM stop it)."""
    run = tmp_path / "r"
    p = subprocess.Popen(cli() + ["train", "--run-dir", str(run), "--set", *SETS, "train.max_steps=10",
                                  "eval.interval=100"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline and not [
            m for m in rundir.read_metrics(run) if m.get("split") == "train"]:
        time.sleep(0.05)
    p.send_signal(signal.SIGHUP)
    out, err = p.communicate(timeout=180)
    assert p.returncode == ExitCode.FINISHED, err[-2000:]
    assert "SIGHUP" not in err


def test_refused_resumes_answer_before_torch_loads(tmp_path):
    """A key that may not change mid-run and a folder a live process owns are refused in a fraction of a second:
    torch is never imported for them (issue 22)."""
    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.run import runctl

    run = tmp_path / "r"
    (run / rundir.CHECKPOINTS).mkdir(parents=True)
    C.save(C.Config(), run / rundir.CONFIG)
    rundir.last_checkpoint(run).write_bytes(b"")  # only its existence matters to these refusals
    probe = ("import sys; from nanxi_tune.cli.main import main; rc = main(sys.argv[1:]); "
             "print('rc', rc, 'torch' in sys.modules)")

    def resume(*extra: str) -> str:
        r = subprocess.run([sys.executable, "-c", probe, "resume", str(run), *extra], capture_output=True,
                           text=True, timeout=60)
        return r.stdout.strip().splitlines()[-1] + " " + r.stderr

    said = resume("--set", "train.seed=4")
    assert said.startswith(f"rc {ExitCode.BAD_INPUT} False") and "not a live key" in said, said
    owner = runctl.RunOwner.acquire(run)
    try:
        said = resume()
    finally:
        owner.release()
    assert said.startswith(f"rc {ExitCode.BUSY} False") and "live process" in said, said
