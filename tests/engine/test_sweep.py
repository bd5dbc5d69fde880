"""Seven-stars sweep: the grid, a real small sweep whose best lr clearly beats its worst, stop/resume, time budget."""

import json

import pytest
import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine import rundir
from nanxi_tune.engine import runs_index as journal
from nanxi_tune.engine import sweep as S
from conftest import tiny as base_tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**updates):
    extra = {"data.synthetic_train": 64, "data.synthetic_val": 16, "train.epochs": 1, "eval.online": False}
    return base_tiny(**(extra | updates))


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
    with pytest.raises(S.SweepError, match="unknown key"):
        S.Sweep.new(cfg, "train.nope", 0.1, tmp_path, trial_steps=2)
    with pytest.raises(S.SweepError, match="not numeric"):
        S.Sweep.new(cfg, "preprocess.resize", 0.1, tmp_path, trial_steps=2)
    with pytest.raises(S.SweepError, match="exactly one"):
        S.Sweep.new(cfg, "train.base_lr", 0.1, tmp_path)
    with pytest.raises(C.ConfigError):  # base_lr ≤ 10: a window reaching 30 is refused before any trial
        S.Sweep.new(cfg, "train.base_lr", 1, tmp_path, trial_steps=2)


@pytest.mark.slow
def test_real_sweep_best_beats_worst_and_lands_everywhere(tmp_path):
    events = []
    cfg = tiny()
    sw = S.Sweep.new(cfg, "train.base_lr", 0.0001, tmp_path, trial_steps=40, callback=events.append)
    assert sw.values == [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
    assert sw.run() == "finished"
    rows = sw.table()
    assert [r["value"] for r in rows] == sw.values and all(r["status"] == "finished" for r in rows)
    best, worst = max(rows, key=lambda r: r["mAP"]), min(rows, key=lambda r: r["mAP"])
    assert [r["value"] for r in rows if r["best"]] == [best["value"]]
    assert best["mAP"] > worst["mAP"] + 0.02 and best["mAP"] > 10 * worst["mAP"], rows
    assert best["value"] >= 0.003  # the tiny lrs learn little in 40 steps
    # every trial is an ordinary run: config with the value and the budget, metrics, checkpoints, a journal
    for r in rows:
        d = tmp_path / sw.dir.name / f"trial-{S.value_name(r['value'])}"
        tc = C.load(d / rundir.CONFIG)
        assert tc.train.base_lr == r["value"] and tc.train.max_steps == 40
        assert tc.eval.val_data_mode == cfg.eval.val_data_mode
        assert rundir.best_checkpoint(d).exists()
        assert "sweep trial: `train.base_lr`" in (d / rundir.JOURNAL).read_text()
    # state, journal, records
    state = json.loads((sw.dir / S.SWEEP_JSON).read_text())
    assert state["best"] == best["value"] and state["status"] == "finished"
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
    kinds = [e.what for e in events if e.kind == "sweep"]
    assert kinds.count("trial_started") == 7 and kinds[-1] == "sweep_finished"
    assert any(e.kind == "step" for e in events)  # the trials' own events pass through
    chart = S.text_chart(rows)
    assert "★" in chart and "0.0001" in chart


def test_text_chart_keeps_a_space_between_value_labels():
    rows = [{"value": v, "mAP": m, "status": "finished", "best": m == 0.3}
            for v, m in zip(S.window(0.0003), (0.08, 0.3, 0.16, 0.15, 0.09, 0.02, 0.0))]
    labels = S.text_chart(rows).splitlines()[-2].split()
    assert labels == ["0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3"]


def test_stop_and_resume_skips_finished_and_resumes_stopped(tmp_path):
    cfg = tiny(**{"data.synthetic_train": 32, "data.synthetic_val": 8})
    holder = {}

    def stop_in_trial_2(e):
        if e.kind == "step" and "sw" in holder and holder["sw"].results[1].status == "running" and e.step == 3:
            holder["sw"].stop()

    sw = S.Sweep(tmp_path / "sw", cfg, "train.base_lr", [0.001, 0.003, 0.01], trial_steps=6,
                 callback=stop_in_trial_2)
    holder["sw"] = sw
    assert sw.run() == "stopped"
    assert [r.status for r in sw.results] == ["finished", "stopped", "pending"]
    first_lines = len(rundir.read_metrics(tmp_path / "sw" / "trial-0.001"))
    assert not (tmp_path / "sw" / "trial-0.01").exists()

    again = S.load(tmp_path / "sw")
    assert again.status == "stopped" and again.results[1].steps == 3
    assert again.run() == "finished"
    assert [r.status for r in again.results] == ["finished"] * 3
    assert len(rundir.read_metrics(tmp_path / "sw" / "trial-0.001")) == first_lines  # not rerun
    t2 = tmp_path / "sw" / "trial-0.003"
    assert any("resumed from" in e.get("message", "") for e in rundir.read_events(t2))
    assert [m["step"] for m in rundir.read_metrics(t2) if m["split"] == "train"] == list(range(1, 7))
    assert again.best_value() in again.values


def test_minutes_budget_evaluates_where_it_stops(tmp_path):
    cfg = tiny(**{"data.synthetic_train": 32, "data.synthetic_val": 8, "train.epochs": 50})
    sw = S.Sweep(tmp_path / "sw", cfg, "loss.loss_scale", [1.0, 3.0], trial_minutes=0.03)
    assert sw.run() == "finished"
    for r in sw.results:
        assert r.status == "finished" and r.mAP is not None and 0 < r.steps < 50 * 4
        assert r.seconds >= 0.03 * 60
    assert sw.best_value() in (1.0, 3.0)


def test_diverging_value_is_a_failed_trial_and_never_best(tmp_path):
    cfg = tiny(**{"data.synthetic_train": 32, "data.synthetic_val": 8})
    sw = S.Sweep(tmp_path / "sw", cfg, "train.base_lr", [0.003, 10.0], trial_steps=8)
    sw.run()
    by = {r.value: r for r in sw.results}
    if by[10.0].status == "failed":  # lr 10 with AdamW blows up on this model
        assert "non-finite" in by[10.0].error
    assert sw.best_value() == 0.003 or by[10.0].score() <= by[0.003].score()
