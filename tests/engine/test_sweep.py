"""Seven-stars sweep as a study: the grid, refusals, a real small sweep whose best lr clearly beats its worst,
stop/resume, a minutes budget, a diverging trial, control of an owner running in a thread, and two workers.

A ``Sweep`` is a study folder (engine.workflows.study); ``Sweep.run`` makes this process its owner and every trial runs as
its own process (``nanxi-tune study trial FOLDER N``), so the tests watch the trials through their run folders
and the Optuna study, not through in-process step events."""

import threading
import time

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.workflows import records as journal
from nanxi_tune.engine.workflows import sweep as S
from nanxi_tune.engine.workflows.study import STUDY_KEYS, Study, StudyError, read_spec, trial_config
from conftest import tiny as base_tiny


ONE = ["cpu"]  # Sweep.run(devices=ONE): one trial at a time on the CPU, its torch threads from OMP_NUM_THREADS


@pytest.fixture(autouse=True)
def one_thread_trials(monkeypatch):
    """The trial processes take one torch thread (on a shared 2-core box two threads fighting are many times
    slower); the owner's own CPU workers get theirs from --threads."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def tiny(**updates):
    extra = {"data.synthetic_train": 64, "data.synthetic_val": 16, "train.epochs": 1, "eval.online": False}
    return base_tiny(**(extra | updates))


def small(**updates):
    return tiny(**({"data.synthetic_train": 32, "data.synthetic_val": 8} | updates))


def wait(cond, timeout=120.0, step=0.1):
    end = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < end, "timed out"
        time.sleep(step)
    return got


def own_in_thread(sw, **kw):
    """``sw.run(**kw)`` in a thread (this process is the study's owner); the result lands in box["state"]."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("state", sw.run(**kw)), name="test-study-owner", daemon=True)
    t.start()
    wait(lambda: runctl.status(sw.dir).alive or "state" in box, 60)
    return t, box


def train_steps(run_dir):
    return [m["step"] for m in rundir.read_metrics(run_dir) if m.get("split") == "train"]


def live_step(run_dir):
    """The step a trial has reached: its owner's word while it lives, else its metrics."""
    st = runctl.status(run_dir)
    return max(st.step if st.alive else 0, max(train_steps(run_dir), default=0))


def test_grid_window_and_slide():
    assert S.window(0.001) == [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    assert S.window(0.002)[0] == 0.003 and S.window(0.0012)[0] == 0.001  # snapped to the nearest grid value
    assert S.window(3, 3) == [3.0, 10.0, 30.0]
    assert S.window(1e-5, 2) == [1e-5, 3e-5]
    vals = S.window(0.001)
    assert S.slid_window(vals, 0.01) is None
    assert S.slid_window(vals, 1.0) == [0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]  # centred on the edge best
    assert S.slid_window(vals, 0.001) == [3e-5, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03]
    with pytest.raises(ValueError):
        S.window(0)


def test_refuses_bad_keys_and_budgets(tmp_path):
    cfg = tiny()
    assert S.SweepError is StudyError
    with pytest.raises(S.SweepError, match="unknown key"):
        S.Sweep.new(cfg, "train.nope", 0.1, tmp_path, trial_steps=2)
    with pytest.raises(S.SweepError, match="not numeric"):
        S.Sweep.new(cfg, "preprocess.resize", 0.1, tmp_path, trial_steps=2)
    with pytest.raises(S.SweepError, match="exactly one"):
        S.Sweep.new(cfg, "train.base_lr", 0.1, tmp_path)
    with pytest.raises(S.SweepError, match="exactly one"):
        S.Sweep.new(cfg, "train.base_lr", 0.1, tmp_path, trial_steps=2, trial_minutes=1)
    with pytest.raises(S.SweepError, match="at least 1 step"):
        S.Sweep(tmp_path / "zero", cfg, "train.base_lr", [0.1], trial_steps=0)
    with pytest.raises(S.SweepError, match="positive duration"):
        S.Sweep(tmp_path / "neg", cfg, "train.base_lr", [0.1], trial_minutes=-1)
    with pytest.raises(C.ConfigError):  # base_lr ≤ 10: a window reaching 30 is refused before any trial
        S.Sweep.new(cfg, "train.base_lr", 1, tmp_path, trial_steps=2)
    with pytest.raises(S.SweepError, match="no study.json"):  # opening a folder that holds no study
        S.Sweep(tmp_path / "nothing")
    assert S.list_sweeps(tmp_path) == []  # nothing refused left a study behind


@pytest.mark.slow
def test_real_sweep_best_beats_worst_and_lands_everywhere(tmp_path):
    events = []
    cfg = tiny()
    sw = S.Sweep.new(cfg, "train.base_lr", 0.0001, tmp_path, trial_steps=40, callback=events.append)
    assert sw.values == [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
    assert all(r.status == "pending" for r in sw.results)
    assert sw.run(workers=2) == "finished"
    rows = sw.table()
    assert [r["value"] for r in rows] == sw.values and all(r["status"] == "finished" for r in rows)
    best, worst = max(rows, key=lambda r: r["mAP"]), min(rows, key=lambda r: r["mAP"])
    assert [r["value"] for r in rows if r["best"]] == [best["value"]]
    assert best["mAP"] > worst["mAP"] + 0.02 and best["mAP"] > 10 * worst["mAP"], rows
    assert best["value"] >= 0.003  # the tiny lrs learn little in 40 steps
    # every trial is an ordinary run: config with the value and the budget, metrics, checkpoints, a journal
    for r in rows:
        d = sw.dir / f"trial-{S.value_name(r['value'])}"
        assert r["run_dir"] == str(d.resolve()) and r["steps"] == 40 and r["device"] == "cpu"
        tc = C.load(d / rundir.CONFIG)
        assert tc.train.base_lr == r["value"] and tc.train.max_steps == 40
        assert tc.eval.val_data_mode == cfg.eval.val_data_mode
        assert rundir.best_checkpoint(d).exists()
        assert train_steps(d) == list(range(1, 41))
        assert "sweep trial: `train.base_lr`" in (d / rundir.JOURNAL).read_text()
    # the study: its state, its Optuna trials (the value as the param, mAP as the value), journal, records
    st = runctl.status(sw.dir)
    assert not st.alive and st.state == runctl.RunState.FINISHED
    trials = Study.open(sw.dir).trials()
    assert sorted(t.params["train.base_lr"] for t in trials) == sw.values
    assert {t.params["train.base_lr"]: t.values[0] for t in trials} == {r["value"]: r["mAP"] for r in rows}
    text = (sw.dir / rundir.JOURNAL).read_text()
    assert f"| {S.value_name(best['value'])} ★ |" in text and "mAP vs value" in text
    recs = journal.records(tmp_path)
    (srec,) = [r for r in recs if r["kind"] == "sweep"]
    assert srec["best"] == best["value"] and len(srec["trials"]) == 7
    assert f"best {S.value_name(best['value'])}" in journal.render_records(recs)
    # edge handling agrees with the table
    assert sw.at_edge() == (best["value"] in (0.0001, 0.1))
    assert (sw.next_window() is not None) == sw.at_edge()
    # apply best → config
    applied = sw.apply_best(cfg)
    assert applied.train.base_lr == best["value"] and C.diff(cfg, applied) == {
        "train.base_lr": (cfg.train.base_lr, best["value"])}
    # the owner's events: each trial handed out and done once, then the study's end
    progress = [e for e in events if e.kind == "study"]
    assert sorted(e.number for e in progress if e.what == "trial_started") == list(range(7))
    assert sorted(e.number for e in progress if e.what == "trial_done") == list(range(7))
    assert [e.state for e in events if e.kind == "state"][-1] == runctl.RunState.FINISHED
    chart = S.text_chart(rows)
    assert "★" in chart and "0.0001" in chart


def test_text_chart_keeps_a_space_between_value_labels():
    rows = [{"value": v, "mAP": m, "status": "finished", "best": m == 0.3}
            for v, m in zip(S.window(0.0003), (0.08, 0.3, 0.16, 0.15, 0.09, 0.02, 0.0))]
    labels = S.text_chart(rows).splitlines()[-2].split()
    assert labels == ["0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3"]


def test_stop_and_resume_skips_finished_and_resumes_stopped(tmp_path):
    cfg = small(**{"train.checkpoint_every": 1000})
    sw = S.Sweep(tmp_path / "sw", cfg, "train.base_lr", [0.001, 0.003, 0.01], trial_steps=40)
    t2 = sw.dir / "trial-0.003"
    thread, box = own_in_thread(sw, devices=ONE)
    wait(lambda: t2.is_dir() and live_step(t2) >= 2 or "state" in box)  # the second trial trains
    sw.stop()  # from this test's thread: every trial stops with a checkpoint
    thread.join(120)
    assert box["state"] == "stopped" and not thread.is_alive()
    assert [r.status for r in sw.results] == ["finished", "stopped", "pending"]
    assert runctl.status(sw.dir).state == runctl.RunState.STOPPED
    assert not runctl.status(t2).alive  # the trial's process ended with the stop
    stopped_at = sw.results[1].steps
    assert 2 <= stopped_at < 40 and rundir.last_checkpoint(t2).exists()
    first = rundir.read_metrics(sw.dir / "trial-0.001")
    assert not (sw.dir / "trial-0.01").exists()

    again = S.load(sw.dir)
    assert again.status == "stopped" and again.results[1].steps == stopped_at
    assert again.run() == "finished"  # its owner remembers devices=ONE
    assert [r.status for r in again.results] == ["finished"] * 3
    assert rundir.read_metrics(sw.dir / "trial-0.001") == first  # not rerun
    resumed = [e["message"] for e in rundir.read_events(t2) if str(e.get("message", "")).startswith("resumed from")]
    assert resumed == [resumed[0]] and f"at step {stopped_at}" in resumed[0]  # from its checkpoint, once
    assert train_steps(t2) == list(range(1, 41))  # each step once, to the end
    assert again.best_value() in again.values
    assert len(Study.open(sw.dir).trials()) == 3  # resumed trials are the same Optuna trials, none added


def test_minutes_budget_plans_each_trial_to_its_wall_time(tmp_path):
    """train.time_budget_min: the trial's plan projects the steps that fit its minutes (from the measured speed)
    and ends there; the epochs are a ceiling it does not reach."""
    cfg = small(**{"train.epochs": 500})
    budget = 0.03  # 1.8 s of training a trial
    sw = S.Sweep(tmp_path / "sw", cfg, "loss.loss_scale", [1.0, 3.0], trial_minutes=budget)
    assert sw.run(devices=ONE) == "finished"
    for r in sw.results:
        d = sw.dir / f"trial-{S.value_name(r.value)}"
        tc = C.load(d / rundir.CONFIG)
        assert tc.train.time_budget_min == budget and not tc.train.max_steps
        assert r.status == "finished" and r.mAP is not None and 0 < r.steps < 500 * 4  # cut well before 500 epochs
        plans = [e for e in rundir.read_events(d) if e.get("kind") == "plan"]
        assert plans and plans[-1]["total_steps"] == r.steps  # it ended where its plan put the end
        assert r.seconds >= 0.99 * budget * 60  # the trial's wall time covers its training budget
    assert sw.best_value() in (1.0, 3.0)


def test_diverging_value_is_a_failed_trial_and_never_best(tmp_path):
    # base_batch_size 1: lr = base_lr × 8, so base_lr 10 (lr 80) blows up AdamW on this model within a few steps
    events = []
    sw = S.Sweep(tmp_path / "sw", small(**{"train.base_batch_size": 1}), "train.base_lr", [0.003, 10.0],
                 trial_steps=8, callback=events.append)
    assert sw.run(devices=ONE) == "finished"  # a failed trial is a result: the study still finishes
    by = {r.value: r for r in sw.results}
    assert by[0.003].status == "finished" and by[0.003].mAP is not None
    assert by[10.0].status == "failed" and "non-finite" in by[10.0].error and by[10.0].mAP is None, by[10.0]
    assert by[10.0].score() < 0 <= by[0.003].score()
    assert sw.best_value() == 0.003 and [r["value"] for r in sw.table() if r["best"]] == [0.003]
    (t,) = [t for t in Study.open(sw.dir).trials() if t.params["train.base_lr"] == 10.0]
    assert t.state.name == "FAIL" and t.values is None  # Optuna never ranks it
    done = [e.message for e in events if e.kind == "study" and e.what == "trial_done"]
    assert any(m.endswith("10: failed") for m in done), done


def test_ctl_controls_an_owner_running_in_a_thread(tmp_path):
    sw = S.Sweep(tmp_path / "sw", small(**{"train.epochs": 50}), "train.base_lr", [0.001, 0.003], trial_steps=400)
    t1 = sw.dir / "trial-0.001"
    thread, box = own_in_thread(sw, devices=ONE)
    wait(lambda: t1.is_dir() and live_step(t1) >= 2 or "state" in box)
    assert runctl.status(sw.dir).state == runctl.RunState.RUNNING

    # pause: acknowledged once the trial holds; no step while paused
    ack = runctl.request(sw.dir, runctl.Op.PAUSE, timeout=60)
    assert ack and ack["applied"], ack
    assert runctl.status(sw.dir).state == runctl.RunState.PAUSED
    assert Study.open(sw.dir).control() == "paused"
    wait(lambda: runctl.status(t1).state == runctl.RunState.PAUSED, 30)
    held = live_step(t1)
    time.sleep(2.0)
    assert live_step(t1) == held < 400 and runctl.status(t1).state == runctl.RunState.PAUSED
    assert [r.status for r in sw.results] == ["paused", "pending"]  # no new trial started either

    # continue: the trial steps on
    ack = runctl.request(sw.dir, runctl.Op.CONTINUE)
    assert ack and ack["applied"], ack
    assert runctl.status(sw.dir).state == runctl.RunState.RUNNING
    wait(lambda: live_step(t1) > held, 60)

    # set: an unknown key is refused by name; a study key is applied to trials that start from now on
    ack = runctl.request(sw.dir, runctl.Op.SET, {"study.nope": 5})
    assert ack and not ack["applied"] and "study.nope" in ack["message"], ack
    ack = runctl.request(sw.dir, runctl.Op.SET, {"train.base_lr": 0.1})  # a trial's key, not the study's
    assert ack and not ack["applied"] and "train.base_lr" in ack["message"], ack
    assert Study.open(sw.dir).spec.trial_steps == 400
    ack = runctl.request(sw.dir, runctl.Op.SET, {"study.trial_steps": 7})
    assert ack and ack["applied"] and "7" in ack["message"], ack
    spec = Study.open(sw.dir).spec
    assert spec.trial_steps == 7 and spec.trial_minutes is None and "study.trial_steps" in STUDY_KEYS
    assert read_spec(sw.dir).trial_steps == 7  # study.json too
    assert trial_config(spec, 0.003).train.max_steps == 7

    # stop: the owner ends, the trial with a checkpoint
    ack = runctl.request(sw.dir, runctl.Op.STOP, timeout=60)
    assert ack and ack["applied"], ack
    thread.join(120)
    assert not thread.is_alive() and box["state"] == "stopped"
    st = runctl.status(sw.dir)
    assert st.state == runctl.RunState.STOPPED and not st.alive
    assert not runctl.status(t1).alive and rundir.last_checkpoint(t1).exists()
    assert [r.status for r in sw.results] == ["stopped", "pending"]
    with pytest.raises(runctl.NotAlive):  # no owner left to command
        runctl.send(sw.dir, runctl.Op.PAUSE)


def test_two_workers_run_every_trial_exactly_once(tmp_path):
    events = []
    values = [0.001, 0.003, 0.01, 0.03]
    sw = S.Sweep(tmp_path / "sw", small(), "train.base_lr", values, trial_steps=3, callback=events.append)
    assert sw.run(workers=2) == "finished"
    assert Study.open(sw.dir).spec.workers == 2  # remembered for a resume
    trials = Study.open(sw.dir).trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.params["train.base_lr"] for t in trials) == values
    started = [e.number for e in events if e.kind == "study" and e.what == "trial_started"]
    assert sorted(started) == [0, 1, 2, 3]  # each handed out once
    for v in values:
        d = sw.dir / f"trial-{S.value_name(v)}"
        assert train_steps(d) == [1, 2, 3]  # trained once, by one process
        starts = [e for e in rundir.read_events(d) if e.get("kind") == "state" and e.get("state") == "running"]
        assert len(starts) == 1
        assert not any(str(e.get("message", "")).startswith("resumed from") for e in rundir.read_events(d))
    # two trials at once: the owner handed out two before any was done
    whats = [e.what for e in events if e.kind == "study"]
    assert whats[:2] == ["trial_started", "trial_started"], whats


def test_a_trial_whose_process_died_with_the_owner_does_not_read_running(tmp_path):
    """Reproduces a CI failure: the owner is killed -9 right after a worker marked a trial running and before it
    trained (no checkpoint). Nothing runs it any more, so it must not read "running": it starts again (pending);
    one that saved a checkpoint resumes from it (stopped)."""
    import socket

    sw = S.Sweep(tmp_path / "sw", small(), "train.base_lr", [0.001, 0.003], trial_steps=3)
    study = sw.study
    fresh, saved = study.claim(), study.claim()
    for trial in (fresh, saved):
        run_dir = sw.dir / trial.user_attrs["run"]
        run_dir.mkdir()
        study.mark(trial, host=socket.gethostname(), pid=999_999, run_dir=str(run_dir), status="running")
    rundir.last_checkpoint(sw.dir / saved.user_attrs["run"]).parent.mkdir(parents=True)
    rundir.last_checkpoint(sw.dir / saved.user_attrs["run"]).write_bytes(b"a checkpoint")
    got = {t.number: t.status for t in sw.results}
    assert got == {fresh.number: "pending", saved.number: "stopped"}
