"""A sweep as a study from the shell: detached, two trials at once, its owner killed with SIGKILL and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.workflows import sweep as S
from nanxi_tune.engine.workflows.study import JOURNAL_FILE, list_studies

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
    runs = tmp_path / "runs"
    r = nanxi("--runs", str(runs), "sweep", "--preset", "demo", "--param", "train.base_lr", "--start", "0.0001",
              "--trial-steps", "150", "--workers", "2", "--detach", "--set", *SETS, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "started detached" in r.stderr
    (folder,) = list_studies(runs)
    try:
        _kill9_and_resume(folder)
    finally:  # a failed check must not leave the study training in the background
        if runctl.status(folder).alive:
            runctl.send(folder, runctl.Op.STOP)


def _kill9_and_resume(folder):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    # two trials train at once, each its own process
    def two_running():
        s = status(folder)
        live = [t for t in s["trials"] if t["status"] == "running" and t["steps"] > 0]
        return s if len(live) == 2 else None

    s = wait(two_running)
    assert s["alive"] and s["state"] == "running"
    assert {t["device"] for t in s["trials"] if t["status"] == "running"} == {"cpu"}

    # let one pair finish, then kill -9 the owner while the next trials train
    def ready_to_kill():
        rows = S.load(folder).table()  # read in this process: polling through the CLI is too slow to catch a trial
        running = [t for t in rows if t["status"] == "running"]
        done = sum(t["status"] == "finished" for t in rows)
        return [t["run_dir"] for t in running] if done >= 2 and any(2 <= t["steps"] <= 100 for t in running) else None

    live = wait(ready_to_kill)
    owner = runctl.read_owner(folder)
    os.kill(owner.pid, signal.SIGKILL)
    wait(lambda: not runctl.status(folder).alive, 30)
    # the trials die with their owner, each with a checkpoint (SIGTERM from the kernel when the owner died)
    for run_dir in live:
        wait(lambda run_dir=run_dir: not runctl.status(run_dir).alive, 120)
    before = {t["value"]: t for t in status(folder)["trials"]}
    assert status(folder)["state"] == "dead"  # no owner recorded a stop: it died
    interrupted = [v for v, t in before.items() if t["status"] == "stopped"]
    assert interrupted and all(t["status"] in ("stopped", "finished", "pending") for t in before.values()), before
    finished = {v: (rundir.read_metrics(t["run_dir"]), os.stat(os.path.join(t["run_dir"], "metrics.jsonl")).st_mtime)
                for v, t in before.items() if t["status"] == "finished"}

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
        assert trains == sorted(set(trains)) and trains[-1] == 150  # each step once, to the end

    # Optuna has the seven trials, each with its value, exactly once
    study = optuna.load_study(study_name=folder.name,
                              storage=JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE))))
    trials = study.get_trials()
    assert len(trials) == 7
    assert sorted(t.params["train.base_lr"] for t in trials) == sorted(t["value"] for t in final["trials"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value is not None for t in trials)
    assert (folder / rundir.JOURNAL).exists()


def test_a_worker_elsewhere_pulls_trials_from_the_storage(tmp_path):
    """`nanxi-tune study worker STORAGE STUDY`: another box (here: another folder) claims the trials, trains them in
    its own --runs folder and tells their results to the shared storage."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from conftest import tiny

    sw = S.Sweep(tmp_path / "runs" / "sweep-x", tiny(), "train.base_lr", [0.001, 0.003], trial_steps=2)
    storage = str(sw.dir / JOURNAL_FILE)
    elsewhere = tmp_path / "box2"
    r = nanxi("--runs", str(elsewhere), "study", "worker", storage, "sweep-x", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "2 trial(s) trained" in r.stderr
    assert sorted(p.name for p in (elsewhere / "sweep-x").iterdir()) == ["trial-0.001", "trial-0.003"]
    trials = optuna.load_study(study_name="sweep-x", storage=JournalStorage(JournalFileBackend(storage))).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert {t.user_attrs["host"] for t in trials} and all(t.user_attrs["device"] for t in trials)
    assert [r.status for r in sw.results] == ["finished", "finished"]
    r = nanxi("--runs", str(elsewhere), "study", "worker", storage, "no-such-study", timeout=120)
    assert r.returncode == 2 and "no study named 'no-such-study'" in r.stderr
