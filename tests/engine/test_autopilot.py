"""The autopilot (engine.workflows.autopilot): the budget shared from the step time, val untouched before the final
run, the recipe saved as a preset, a kill -9 mid-round resumed to the same journal, a live budget change."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data.dataset import resolve
from nanxi_tune.engine.grid import grid_index, grid_value
from nanxi_tune.engine.run import rundir, runctl
from nanxi_tune.engine.workflows import autopilot_plan as P
from nanxi_tune.engine.workflows.autopilot import AutopilotOwner, create
from tests.conftest import tiny

FAST = {"train.epochs": 1, "eval.interval": 1, "data.synthetic_train": 40}


def test_budget_text_in_minutes_hours_days():
    assert [P.parse_budget(x) for x in ("90m", "12h", "2d", "45", "1.5h")] == [90, 720, 2880, 45, 90]
    for bad in ("", "0", "-3h", "12 hours", "h"):
        with pytest.raises(P.AutopilotError, match="90m, 12h or 2d"):
            P.parse_budget(bad)


def spec(budget_min, **kw):
    return P.AutopilotSpec("bccd", {}, budget_min, **kw)


def test_the_plan_gives_the_final_run_half_and_shares_the_rest_per_trial():
    plan = P.make_plan(spec(30), 0.0, 0.5, list(P.SEARCH), post_s=60)
    assert plan.rounds == ["lr", "shape", "capacity"]
    trial = (30 * 60 - 60 - 15 * 60) / 10  # 4 lr (a slide) + 3 + 3 trials rank
    assert plan.trial_s == pytest.approx(trial)
    # the shape and capacity rounds' "as-is" is the previous round's best: 8 trials train, the final run gets the 2
    assert plan.search_s == pytest.approx(8 * trial) and plan.final_s == pytest.approx(15 * 60 + 2 * trial)
    assert plan.search_s + plan.final_s == pytest.approx(30 * 60 - 60)
    assert "10 trials (lr, shape, capacity)" in plan.why and "2 of them the previous round's best" in plan.why
    # a recipe already on Gaussian samples has two shape arms: the search shares its time among 9 trials
    two = P.make_plan(spec(30), 0.0, 0.5, list(P.SEARCH), post_s=60, arms={"shape": 2})
    assert two.trial_s == pytest.approx((30 * 60 - 60 - 15 * 60) / 9)


def test_a_re_plan_inside_the_search_keeps_the_trial_length_and_the_time_saved_goes_to_the_final_run():
    trial = (30 * 60 - 60 - 15 * 60) / 10
    # after the lr round (4 trials): shape and capacity both carry their as-is; a capacity arm left out (2 arms)
    later = P.make_plan(spec(30), 4 * trial + 20, 0.5, ["shape", "capacity"], post_s=60,
                        arms={"capacity": 2}, carry_first=True, trial_s=trial)
    assert later.trial_s == trial and later.search_s == pytest.approx((3 + 2 - 2) * trial)
    assert later.final_s == pytest.approx(30 * 60 - 60 - 4 * trial - 20 - 3 * trial) and "(kept)" in later.why


def test_a_short_budget_drops_the_last_rounds_first_and_says_why():
    plan = P.make_plan(spec(10), 0.0, 1.0, list(P.SEARCH), post_s=30)  # 270 s of search, 60-step trials: 4 fit
    assert plan.rounds == ["lr"] and "capacity dropped" in plan.why and "shape dropped" in plan.why
    none = P.make_plan(spec(2), 0.0, 1.0, list(P.SEARCH))
    assert none.rounds == [] and none.final_s == pytest.approx(120) and "no search" in none.why


def test_a_long_budget_caps_the_trials_and_gives_the_rest_to_the_final_run():
    plan = P.make_plan(spec(2 * 1440), 0.0, 0.1, list(P.SEARCH))
    assert plan.trial_s == pytest.approx(P.MAX_TRIAL_STEPS * 0.1)
    assert plan.final_s > 0.99 * (2 * 86400 - plan.search_s) - 1


def test_capacity_arms_too_slow_to_rank_at_equal_time_are_left_out_with_the_reason():
    arms = [{"name": "as-is", "set": {}}, {"name": "width-48", "set": {"backbone.width": 48}},
            {"name": "resnet18", "set": {"backbone.name": "resnet18"}}]
    # a 41 s trial at 0.5 s a step: the recipe trains 82 steps, width-48 (1.2x) 68, ResNet-18 (5.8x) 14
    kept, why = P.rankable_arms(arms, {"as-is": 1.0, "width-48": 1.2, "resnet18": 5.8}, 41.0, 0.5)
    assert [a["name"] for a in kept] == ["as-is", "width-48"]
    assert list(why) == ["resnet18"] and "14 steps" in why["resnet18"] and "cannot rank" in why["resnet18"]
    # longer trials: every arm can rank; the recipe itself always stays
    assert P.rankable_arms(arms, {"as-is": 1.0, "width-48": 1.2, "resnet18": 5.8}, 600.0, 0.5) == (arms, {})
    assert P.rankable_arms(arms, {"as-is": 1.0, "width-48": 9, "resnet18": 9}, 1.0, 0.5)[0] == arms[:1]


def test_the_capacity_round_offers_no_smaller_input_even_where_objects_are_large(tmp_path):
    """A 224-px arm (for 320) won its equal-time trial on the few-large-objects set (more steps: 0.71 vs 0.49
    held-out) and its final run then ended below the preset at 320 on the same val files (0.921 vs 0.937): a
    smaller input costs the high-IoU precision that short trials cannot see."""
    from nanxi_tune.engine.data.profile import Profile

    owner = AutopilotOwner(_make(tmp_path))
    owner.ap.profile = Profile(410, 587, {"circle": 195}, 1, 3, 3, 104.5, 151.1, 249.4, 297, 320).to_json()
    owner.ap.recipe = {"neck.out_stride": 16, "preprocess.input_size": 320}
    assert [a["name"] for a in owner._capacity_arms()] == ["as-is", f"width-{2 * tiny().backbone.width}", "resnet18"]


def test_the_final_run_trains_and_is_scored_on_the_data_the_search_cut_whatever_input_size_it_chose(tmp_path):
    """A synthetic set is drawn at the input size: a recipe with a smaller input used to send the final run to
    another set drawn at that size, its val figure not comparable to anything else's."""
    folder = _make(tmp_path)
    owner = AutopilotOwner(folder)
    base = owner.base
    owner.ap.recipe = {"preprocess.input_size": 96}
    cfg = owner.final_config({})
    assert cfg.preprocess.input_size == 96
    assert cfg.data.train == str(resolve(base.data.train, "train", base)[1])
    assert cfg.data.val == str(resolve(base.data.val, "val", base)[1])
    other = owner.recipe_config()
    assert cfg.data.val != str(resolve(other.data.val, "val", other)[1])  # not the set drawn at 96 px


def _shape_round(owner, carried, other, steps, status):
    """The shape round against ``carried``, its trained arms (``other`` loss, Gaussian samples) each ending
    ``status`` after ``steps`` steps with no arm ranked; (the round, what its study was asked)."""
    asked = {}

    def study(r, what):
        asked.update(what)
        r.rows = [{"label": a["name"], "mAP": 0.1, "AP50": 0.2, "steps": steps, "status": status}
                  for a in what["arms"]]
        return None

    owner._carried, owner._study = (lambda r: carried), study
    r = owner.ap.round("shape")
    owner._arms_round(r, [{"name": "as-is", "set": {}}, {"name": other, "set": {"loss.shape_loss": other}},
                          {"name": "gaussian", "set": {"loss.shape_samples": "gaussian"}}])
    return r, asked


def test_a_round_whose_every_arm_was_cut_half_way_keeps_the_carried_as_is_and_says_so(tmp_path):
    carried = {"round": "lr", "label": "0.001", "mAP": 0.54, "AP50": 0.77, "steps": 250, "run_dir": "/r/lr-0.001",
               "length": 84.0}
    r, asked = _shape_round(AutopilotOwner(_make(tmp_path)), carried, "l1", 100, "pruned")  # both cut half-way
    assert asked["refs"] == ["/r/lr-0.001"]  # the carried trial's half-way figures are what the arms are cut against
    assert r.choice == {} and r.best == carried
    assert [x["status"] for x in r.rows] == ["carried", "pruned", "pruned"]
    assert "l1, gaussian cut half-way" in r.why and "its time goes to the final run" in r.why


def test_the_lr_round_trains_the_recipe_s_lr_first_and_trials_are_cut_half_way(tmp_path):
    owner = AutopilotOwner(_make(tmp_path))
    owner.ap.fit = str(resolve(owner.base.data.train, "train", owner.base)[1])  # 40 images: 5 steps an epoch at 8
    owner.ap.spec.trial_steps = 100
    assert owner._prune_epoch() == 10  # 100 steps a trial, 5 an epoch: scored at epoch 10, half-way
    owner.ap.spec.trial_steps, owner.ap.plan = 0, {"trial_s": 60.0, "step_s": 0.5}
    assert owner._prune_epoch() == 12  # 120 steps a trial, 5 an epoch: scored at epoch 12, half-way
    owner.ap.plan = {"trial_s": 4.0, "step_s": 0.5}
    assert owner._prune_epoch() == 0  # 8 steps: under two epochs, not cut
    asked = {}

    def study(r, what):
        asked.update(what)
        return {"value": what["values"][0], "label": "x", "mAP": 0.5, "AP50": 0.7, "steps": 8}

    owner._study = study
    owner._lr(owner.ap.round("lr"))
    i = grid_index(owner.recipe_config().train.base_lr)
    assert asked["values"] == [grid_value(i), grid_value(i - 1), grid_value(i + 1)]  # the others cut against it


def test_capacity_arms_step_times_are_measured_on_the_same_batch():
    from nanxi_tune.engine.workflows.autopilot_rank import step_ratios

    cfg = tiny(**FAST)
    arms = [{"name": "as-is", "set": {}}, {"name": "wide", "set": {"backbone.width": 4 * cfg.backbone.width}}]
    ratios = step_ratios(cfg, arms, steps=1)  # (which arm is slower is a benchmark's business, not a test's)
    assert list(ratios) == ["as-is", "wide"] and ratios["as-is"] == 1.0 and 0 < ratios["wide"] < float("inf")


def _make(tmp_path, **options):
    base = tiny(**FAST)
    folder = tmp_path / "ap"
    create(folder, "demo", base, 30, trial_steps=2, final_steps=3, **options)
    return folder


@pytest.mark.slow
def test_an_autopilot_scores_only_the_held_out_part_before_its_final_run_and_saves_a_preset(tmp_path):
    folder = _make(tmp_path, rounds=["shape"], holdout=0.25)
    assert AutopilotOwner(folder).run() == "finished"
    ap = P.load(folder)
    assert [r.status for r in ap.rounds] == ["done", "done", "done", "skipped", "done", "skipped", "done", "done",
                                             "done"]
    val = tiny(**FAST).data.val
    searched = [d for d in folder.rglob(rundir.CONFIG) if d.parent.name != "final"]
    assert len(searched) >= 4  # the probe and the shape round's three arms
    for path in searched:  # every trial fit on the fit part and was scored on the held-out part
        cfg = C.load(path)
        assert (cfg.data.train, cfg.data.val) == (ap.fit, ap.holdout) and cfg.data.val != val
        evals = [m for m in rundir.read_metrics(path.parent) if m.get("split") == "val"]
        assert len(evals) <= 1
    final = C.load(folder / "final" / rundir.CONFIG)
    base = tiny(**FAST)  # the whole train split and val, as the user's data.train / data.val name them
    assert (final.data.train, final.data.val) == tuple(str(resolve(getattr(base.data, s), s, base)[1])
                                                       for s in ("train", "val"))
    assert set(ap.final) >= {"mAP", "AP50", "AP75"}
    recipe = C.load_preset(str(folder / "recipe.toml"))  # the recipe loads as a preset
    for k, v in ap.recipe.items():
        got = C.flatten(recipe)[k]
        assert (list(got) if isinstance(got, tuple) else got) == v
    journal = (folder / rundir.JOURNAL).read_text()
    assert "## [x] 5. shape branch: loss and samples" in journal and "## [-] 4. learning rate" in journal
    assert "| as-is" in journal and "val (the final run's last weights)" in journal


@pytest.mark.slow
def test_a_round_ranks_the_previous_best_as_its_as_is_and_the_final_run_starts_from_the_chosen_trial(tmp_path):
    folder = _make(tmp_path, rounds=["lr", "shape"])
    assert AutopilotOwner(folder).run() == "finished"
    ap = P.load(folder)
    lr, shape = ap.round("lr"), ap.round("shape")
    trained = sorted(d.name for d in (folder / "round-shape").glob("trial-*"))
    assert "trial-as-is" not in trained and len(trained) == len(shape.rows) - 1 >= 1  # the as-is arm not trained
    carried = shape.rows[0]
    assert carried["status"] == "carried" and carried["label"] == f"as-is (round lr: {lr.best['label']})"
    assert carried["mAP"] == lr.best["mAP"] and "not trained again" in shape.why
    if shape.choice:  # an arm beat the recipe: the final run starts from that arm's trial
        assert "round-shape" in shape.best["run_dir"]
    else:  # the recipe kept: from the lr round's best trial
        assert shape.best == lr.best
    final = C.load(folder / "final" / rundir.CONFIG)
    assert final.train.init_from == str(Path(shape.best["run_dir"]) / "checkpoints" / "last.pt")
    logs = [e.get("message", "") for e in rundir.read_events(folder / "final") if e.get("kind") == "log"]
    assert any("train.init_from: every layer starts from" in m for m in logs)
    assert "train.init_from" not in ap.recipe  # the recipe trains from scratch
    assert C.load_preset(str(folder / "recipe.toml")).train.init_from == ""
    assert "starting from the search's best trial" in ap.round("final").why


def _tables(folder):
    return [(r.name, r.status, r.choice if r.name != "normalize" else sorted(r.choice), r.rows)
            for r in P.load(folder).rounds if r.name not in ("probe", "final", "post", "split")]


def _wait(cond, timeout=240.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_a_kill_9_in_the_middle_of_a_round_resumes_to_the_same_journal(tmp_path):
    reference = _make(tmp_path / "a", rounds=["lr"])
    assert AutopilotOwner(reference).run() == "finished"

    folder = _make(tmp_path / "b", rounds=["lr"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    owner = subprocess.Popen([sys.executable, "-m", "nanxi_tune.cli", "resume", str(folder)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        def one_trial_done():
            study = folder / "round-lr"
            return any((d / rundir.CONFIG).exists() and rundir.recorded_state(d) == "finished"
                       for d in study.glob("trial-*")) if study.is_dir() else False

        assert _wait(one_trial_done), "no lr trial finished"
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)
        assert P.load(folder).round("lr").status == "running"
        assert _wait(lambda: not runctl.status(folder).alive, 30)
        assert _wait(lambda: not any(runctl.status(d).alive for d in (folder / "round-lr").glob("trial-*")), 60)
    finally:
        if owner.poll() is None:
            owner.kill()
    done = subprocess.run([sys.executable, "-m", "nanxi_tune.cli", "resume", str(folder)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _tables(folder) == _tables(reference)
    assert P.load(folder).final == P.load(reference).final


@pytest.mark.slow
def test_a_live_budget_change_re_plans(tmp_path):
    folder = _make(tmp_path, rounds=["lr"])
    owner = AutopilotOwner(folder)
    th = threading.Thread(target=owner.run)
    th.start()
    try:
        assert _wait(lambda: P.load(folder).round("lr").status == "running")
        before = P.load(folder).plan
        ack = runctl.request(folder, runctl.Op.SET, {"autopilot.budget_min": 90}, "test", 60)
        assert ack is not None and ack["applied"], ack
        assert "autopilot.budget_min 30 → 90" in ack["message"] and "re-planned" in ack["message"]
        after = P.load(folder)
        assert after.spec.budget_min == 90 and after.plan["final_s"] > before["final_s"] + 50 * 60
        bad = runctl.request(folder, runctl.Op.SET, {"train.base_lr": 0.1}, "test", 60)
        assert bad is not None and not bad["applied"] and "autopilot.budget_min" in bad["message"]
        # continue on a running autopilot, pause twice: said as such, no state change recorded for them
        said = [runctl.request(folder, op, None, "test", 60)["message"]
                for op in (runctl.Op.CONTINUE, runctl.Op.PAUSE, runctl.Op.PAUSE, runctl.Op.CONTINUE)]
        assert said[0] == "not paused (running)" and said[2] == "already paused" and said[3] == "continued", said
        states = [e.get("message") for e in rundir.read_events(folder) if e.get("kind") == "state"]
        assert states.count("continued") == 1 and states.count("paused by request") == 1, states
    finally:
        owner.request_stop()
        th.join(300)
    assert json.loads((folder / P.AUTOPILOT_JSON).read_text())["spec"]["budget_min"] == 90


def test_a_study_of_arms_names_its_trials_and_gives_each_its_config(tmp_path):
    from nanxi_tune.engine.workflows.study import Study, StudyError, StudySpec, trial_config

    base = tiny().model_dump(mode="json")
    arms = [{"name": "as-is", "set": {}}, {"name": "giou", "set": {"loss.shape_loss": "giou"}}]
    study = Study.create(tmp_path / "s", StudySpec("arms", "arm", [], 2, None, "s", base, arms=arms))
    spec = study.spec
    assert (spec.kind, spec.values, spec.slides) == ("arms", [1.0, 2.0], 0)
    assert sorted(t.user_attrs["run"] for t in study.trials()) == ["trial-as-is", "trial-giou"]
    assert trial_config(spec, 2.0).loss.shape_loss == "giou" and trial_config(spec, 1.0).loss.shape_loss == "l1"
    assert trial_config(spec, 2.0).train.max_steps == 2
    for bad in ([{"name": "a b", "set": {}}], [{"name": "x", "set": {}}, {"name": "x", "set": {}}]):
        with pytest.raises(StudyError, match="distinct name"):
            Study.create(tmp_path / f"bad{len(bad)}", StudySpec("arms", "arm", [], 2, None, "b", base, arms=bad))


def test_the_final_run_draws_its_curve_on_qmv_when_val_is_larger_and_leaves_a_small_val_whole(tmp_path):
    """The notes' round 1: a final run evaluating the whole of a large val set every few epochs spends the budget's
    steps on a curve; QMV draws it, and the post round scores the full val once."""
    def final_mode(name, qmv):
        base = C.with_updates(tiny(**FAST), {"eval.val_data_mode": "full", "eval.qmv": qmv})
        create(tmp_path / name, "demo", base, 30, trial_steps=2, final_steps=3)
        return AutopilotOwner(tmp_path / name).final_config({}).eval.val_data_mode

    base = tiny(**FAST)
    n_val = len(json.loads(Path(resolve(base.data.val, "val", base)[1]).read_text())["images"])
    assert n_val > 2
    assert final_mode("large-val", 2) == "qmv"
    assert final_mode("small-val", n_val) == "full"


def test_a_final_run_resumed_after_a_stop_is_journaled_with_the_length_it_trained_not_what_was_left(tmp_path):
    """Stopped in the final run and resumed, the journal said "for 1.091 min" (the budget left at the resume) of a
    final run that trained 3.98 min: a resumed run keeps its own config."""
    folder = tmp_path / "ap"
    create(folder, "demo", tiny(**FAST), 30)
    owner = AutopilotOwner(folder)
    owner.ap.used_s, owner.ap.plan = 30 * 60 - 65.46, {"post_s": 0.0}  # 1.091 min left at the resume
    owner._warm_start = lambda: ""

    def train(run, cfg):  # the run as it was first started, with its own length
        assert cfg.train.time_budget_min == pytest.approx(1.091)
        run.mkdir(parents=True)
        C.save(C.with_updates(cfg, {"train.time_budget_min": 3.983}), run / rundir.CONFIG)

    owner._train = train
    r = owner.ap.round("final")
    owner._final(r)
    assert "for 3.983 min" in r.why and "1.091" not in r.why


def _row(label, value, mAP, steps, status="finished", best=False):
    return {"label": label, "value": value, "mAP": mAP, "AP50": mAP, "steps": steps, "status": status, "best": best,
            "run_dir": f"/r/{label}"}


def test_a_trial_the_slowed_host_gave_a_few_steps_ranks_nothing():
    """Under load a trial of 12 s trained 6 steps where the probe planned 110, and the round ranked it: the same
    floor that leaves a slow capacity arm out applies to the steps a trial did train."""
    from nanxi_tune.engine.workflows.autopilot_rank import choose

    too_short = lambda x: x["steps"] < P.MIN_TRIAL_STEPS  # noqa: E731
    rows = [_row("0.001", 0.001, 0.04, 85), _row("0.003", 0.003, 0.08, 99), _row("0.01", 0.01, 0.3, 6, best=True)]
    best, short = choose(rows, too_short)
    assert best["label"] == "0.003" and [x["label"] for x in short] == ["0.01"]
    assert choose(rows[1:2] + rows[2:], lambda x: False)[0]["label"] == "0.01"  # --trial-steps: all equal
    every = [_row("0.001", 0.001, 0.04, 8), _row("0.003", 0.003, 0.08, 9, best=True)]
    assert choose(every, too_short, keep=0.001)[0]["label"] == "0.001"  # nothing ranks: the recipe's own value
    assert choose(every, too_short)[0] is None
    assert choose([_row("0.001", 0.001, 0.0, 0, status="failed")], too_short, keep=0.001)[0] is None


def test_a_round_with_a_carried_as_is_names_the_arms_too_short_to_rank(tmp_path):
    folder = tmp_path / "ap"
    create(folder, "demo", tiny(**FAST), 30, final_steps=3)  # trials of minutes, not of --trial-steps
    owner = AutopilotOwner(folder)
    owner.ap.plan = {"trial_s": 12.0, "step_s": 0.1}
    carried = {"round": "lr", "label": "0.003", "mAP": 0.08, "AP50": 0.23, "steps": 99, "run_dir": "/r/lr-0.003",
               "length": 12.0}
    r, _ = _shape_round(owner, carried, "giou", 13, "finished")  # both finished in a handful of steps
    assert r.choice == {} and r.best is carried
    assert "giou trained 13 steps, gaussian trained 13 steps (fewer than 60 cannot rank" in r.why


def test_budget_words_a_user_reads_in_the_tui_as_well_as_on_the_cli(tmp_path):
    with pytest.raises(P.AutopilotError, match="budget '0': must be more than 0"):
        P.parse_budget("0")
    with pytest.raises(P.AutopilotError) as bad:
        P.parse_budget("abc")
    assert not str(bad.value).startswith("--")  # the TUI's budget field is no flag
    done = P.make_plan(spec(7), 120, 0.1, [], trial_s=12.0)
    assert "no search round left" in done.why and "0 at most" not in done.why
    owner = AutopilotOwner(_make(tmp_path))
    owner.ap.used_s = 102.0
    said = owner._set_budget({P.BUDGET_KEY: 1})
    assert "less than the 1.7 min used already" in said
    assert owner._recipe_preset().preset == "autopilot-ap"
    named = tmp_path / "autopilot-demo-20261207-005531"
    create(named, "demo", tiny(**FAST), 30, trial_steps=2, final_steps=3)
    assert AutopilotOwner(named)._recipe_preset().preset == "autopilot-demo-20261207-005531"  # not doubled


def test_code_changed_under_an_autopilot_stops_it_before_a_trial_starts_and_a_resume_goes_on(tmp_path, monkeypatch):
    """A trial is a new process: after an upgrade under a running autopilot it trained with other code than its
    owner, and the mismatch surfaced rounds later. The owner now stops, resumable, before it starts one."""
    from nanxi_tune.engine import code_version

    folder = _make(tmp_path, rounds=["shape"])
    monkeypatch.setattr(code_version, "AT_IMPORT", "0" * 12)  # the owner started on other code than the disk's
    assert AutopilotOwner(folder).run() == "stopped"
    assert P.load(folder).round("shape").status == "running"
    assert not list(folder.glob("round-shape/trial-*"))  # no trial started on the new code
    said = (folder / rundir.EVENTS).read_text()
    assert "the installed nanxi-tune changed while this ran (its code 000000000000" in said
    assert f"stopped; resume with: nanxi-tune resume {folder}" in said
    monkeypatch.undo()  # resumed: the owner runs the code on disk
    assert AutopilotOwner(folder).run() == "finished"


def test_the_code_fingerprint_follows_the_sources(tmp_path):
    from nanxi_tune.engine import code_version

    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "a.py").write_text("x = 1\n")
    roots = (tmp_path / "engine",)
    first = code_version.fingerprint(roots)
    assert code_version.fingerprint(roots) == first and code_version.changed() is None
    (tmp_path / "engine" / "a.py").write_text("x = 2\n")
    assert code_version.fingerprint(roots) != first
