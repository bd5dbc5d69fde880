"""A sweep as a study from the shell: detached, two trials at once, its owner killed with SIGKILL and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nanxi_tune.engine import rundir, runctl
from nanxi_tune.engine.study import JOURNAL_FILE, list_studies

from conftest import TINY

pytestmark = pytest.mark.slow
SETS = [f"{k}={v}" for k, v in TINY.items()] + ["train.checkpoint_every=2", "train.log_every=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def nanxi(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "nanxi_tune.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def status(folder):
    r = nanxi("ctl", str(folder), "status", "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait(cond, timeout=300.0):
    end = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)
    return got


def test_detached_sweep_two_workers_survives_kill9_of_its_owner(tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    runs = tmp_path / "runs"
    r = nanxi("--runs", str(runs), "sweep", "--preset", "demo", "--param", "train.base_lr", "--start", "0.0001",
              "--trial-steps", "24", "--workers", "2", "--detach", "--set", *SETS, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "started detached" in r.stderr
    (folder,) = list_studies(runs)

    # two trials train at once, each its own process
    def two_running():
        s = status(folder)
        live = [t for t in s["trials"] if t["status"] == "running" and t["steps"] > 0]
        return s if len(live) == 2 else None

    s = wait(two_running)
    assert s["alive"] and s["state"] == "running"
    assert {t["device"] for t in s["trials"] if t["status"] == "running"} == {"cpu"}

    # let one pair finish, then kill -9 the owner while the next trials train
    wait(lambda: sum(t["status"] == "finished" for t in status(folder)["trials"]) >= 2 and
         any(t["status"] == "running" and t["steps"] >= 4 for t in status(folder)["trials"]))
    before = {t["value"]: t for t in status(folder)["trials"]}
    finished = {v: (rundir.read_metrics(t["run_dir"]), os.stat(os.path.join(t["run_dir"], "metrics.jsonl")).st_mtime)
                for v, t in before.items() if t["status"] == "finished"}
    interrupted = [v for v, t in before.items() if t["status"] == "running"]
    owner = runctl.read_owner(folder)
    os.kill(owner.pid, signal.SIGKILL)
    wait(lambda: not runctl.status(folder).alive, 30)
    # the trials die with their owner, each with a checkpoint (SIGTERM from the kernel when the owner died)
    for v in interrupted:
        wait(lambda v=v: not runctl.status(before[v]["run_dir"]).alive, 120)
    after_kill = {t["value"]: t for t in status(folder)["trials"]}
    assert all(after_kill[v]["status"] == "stopped" for v in interrupted), after_kill
    assert status(folder)["state"] in ("dead", "running")  # no owner recorded a stop: it died

    r = nanxi("resume", str(folder), "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    final = status(folder)
    assert final["state"] == "finished" and not final["alive"]
    assert len(final["trials"]) == 7 and all(t["status"] == "finished" for t in final["trials"])
    for v, (metrics, mtime) in finished.items():  # finished trials untouched
        run_dir = before[v]["run_dir"]
        assert rundir.read_metrics(run_dir) == metrics
        assert os.stat(os.path.join(run_dir, "metrics.jsonl")).st_mtime == mtime
    for v in interrupted:  # resumed from its checkpoint, not started again
        run_dir = before[v]["run_dir"]
        notes = [e.get("message", "") for e in rundir.read_events(run_dir)]
        assert any(n.startswith("resumed from") for n in notes), notes
        trains = [m["step"] for m in rundir.read_metrics(run_dir) if m.get("split") == "train"]
        assert trains == sorted(set(trains)) and trains[-1] == 24  # each step once, to the end

    # Optuna has the seven trials, each with its value, exactly once
    study = optuna.load_study(study_name=folder.name,
                              storage=JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE))))
    trials = study.get_trials()
    assert len(trials) == 7
    assert sorted(t.params["train.base_lr"] for t in trials) == sorted(t["value"] for t in final["trials"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value is not None for t in trials)
    assert (folder / rundir.JOURNAL).exists()
