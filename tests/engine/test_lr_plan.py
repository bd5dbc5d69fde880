"""engine/train/lr_plan.py on a simulated clock: the end and the milestones fall inside the budget, the plan follows
a change of speed, never ends behind the current step, and survives a checkpoint round trip."""

import json

import pytest

from nanxi_tune.engine import config as C
from nanxi_tune.engine.train.lr_plan import LrPlan, budget_seconds, lr_at


def cfg_of(**upd) -> C.Config:
    return C.with_updates(C.Config(), {k.replace("__", "."): v for k, v in upd.items()})


def simulate(plan, speed, t=0.0, step=0, first=0.5, eval_every=0, eval_s=0.0, limit=100000):
    """Train on a fake clock: ``speed(step)`` seconds a step (the first after a start costs ``first``).
    Returns (end time, lr per step, time each step ended)."""
    lrs, times = [], []
    while step < plan.total_steps and step < limit:
        lrs.append(plan.lr_at(step))
        t += first if not times else speed(step)
        step += 1
        if eval_every and step % eval_every == 0:
            t += eval_s
        times.append(t)
        plan.observe(step, t)
    return t, lrs, times


def decay_times(lrs, times):
    return [times[i - 1] for i in range(1, len(lrs)) if lrs[i] < lrs[i - 1]]


def test_off_is_the_config_plan():
    for upd in ({}, {"train__milestones": [0.5, 0.8, 0.95]}, {"train__max_steps": 77}, {"train__warmup_steps": 5},
                {"train__schedule": "constant"}):
        cfg = cfg_of(**upd)
        plan = LrPlan(cfg, 30)
        assert not plan.on and plan.total_steps == (cfg.train.max_steps or 12 * 30)
        assert all(plan.lr_at(s) == lr_at(cfg, s, plan.total_steps) for s in range(plan.total_steps + 2))
        assert not any(plan.observe(s, s * 0.1) for s in range(1, 50))
        assert plan.total_steps == (cfg.train.max_steps or 360)
    assert LrPlan(cfg_of(), 30).describe() == "fixed plan: 360 steps (12 epochs × 30); lr ×0.1 at step 252, 324"


def test_constant_speed_fits_end_and_milestones_in_the_budget():
    plan = LrPlan(cfg_of(train__time_budget_min=1.0, train__epochs=1), 20)  # config says 20 steps
    assert plan.on and plan.budget_s == 60 and "measuring" in plan.describe()
    end, lrs, times = simulate(plan, lambda s: 0.05)
    assert 59.4 <= end <= 60.0
    assert plan.total_steps == len(lrs) == 1 + int((59.5 - 0.3) / 0.05)  # aims 0.5 % early: room for noise
    d = decay_times(lrs, times)
    assert len(d) == 2 and d[0] < d[1] < 60
    assert d[0] == pytest.approx(0.7 * 60, abs=1) and d[1] == pytest.approx(0.9 * 60, abs=1)
    assert plan.replans == 0  # nothing changed after the first projection
    assert "0.05 s/step → 1185 steps" in plan.describe()


def test_evaluations_are_paid_for():
    plan = LrPlan(cfg_of(train__time_budget_min=2.0), 50)
    end, lrs, _ = simulate(plan, lambda s: 0.05, eval_every=300, eval_s=3.0)
    assert 0.97 * 120 <= end <= 120.5  # without counting evals it would overrun by ~10 s


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_replans_when_the_speed_changes(factor):
    plan = LrPlan(cfg_of(train__time_budget_min=1.0), 100)
    end1, _, _ = simulate(plan, lambda s: 0.05, limit=400)  # 20 s in
    before, m_before = plan.total_steps, list(plan.milestones)
    replanned = []
    t, step = end1, 400
    while step < plan.total_steps:
        t += 0.05 * factor
        step += 1
        replanned.append(plan.observe(step, t))
    assert any(replanned) and plan.replans >= 1
    assert (plan.total_steps < before) if factor > 1 else (plan.total_steps > before)
    assert 0.98 * 60 <= t <= 60.3
    assert plan.milestones != m_before


def test_lr_never_climbs_back_and_reached_milestones_stay():
    plan = LrPlan(cfg_of(train__time_budget_min=1.0), 100)
    speed = lambda s: 0.05 if s < 900 else 0.01  # five times faster after the first decay  # noqa: E731
    _, lrs, _ = simulate(plan, speed)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert plan.milestones[0] == pytest.approx(0.7 * 1185, abs=2)


def test_never_ends_behind_the_current_step():
    plan = LrPlan(cfg_of(train__time_budget_min=0.1), 10)  # 6 s, steps of 2.5 s
    end, lrs, _ = simulate(plan, lambda s: 2.5)
    assert plan.total_steps == len(lrs) >= plan.step and end <= 6.0 + 2.5
    plan.observe(plan.step + 1, 100.0)  # far past the budget: the end is now, not earlier
    assert plan.total_steps == plan.step


def test_short_config_does_not_end_the_run_before_the_first_projection():
    plan = LrPlan(cfg_of(train__time_budget_min=0.5, train__epochs=1), 5)
    end, lrs, _ = simulate(plan, lambda s: 0.01, first=0.01)
    assert len(lrs) > 1000 and end <= 30.0 + 1e-6


def test_max_days_is_the_ceiling_and_max_steps_caps():
    assert budget_seconds(cfg_of(train__time_budget_min=600.0, budget__max_days=0.001)) == pytest.approx(86.4)
    assert budget_seconds(cfg_of()) == 0
    plan = LrPlan(cfg_of(train__time_budget_min=1.0, train__max_steps=300), 50)
    _, lrs, _ = simulate(plan, lambda s: 0.05)
    assert plan.total_steps == len(lrs) == 300


def test_state_round_trip_resumes_the_plan():
    cfg = cfg_of(train__time_budget_min=1.0)
    plan = LrPlan(cfg, 100)
    simulate(plan, lambda s: 0.05, limit=500)
    state = json.loads(json.dumps(plan.state_dict()))  # plain data
    again = LrPlan(cfg, 100)
    again.load_state_dict(state)
    assert again.state_dict() == plan.state_dict() and again.describe() == plan.describe()
    assert all(again.lr_at(s) == plan.lr_at(s) for s in range(0, plan.total_steps + 5))
    # the resumed process continues the clock from the plan's elapsed seconds; its first step is slow
    end, lrs, _ = simulate(again, lambda s: 0.05, t=again.elapsed_s, step=again.step, first=1.0)
    assert 59.5 <= end <= 60.0 and again.total_steps == again.step


def test_state_of_another_version_is_refused():
    plan = LrPlan(cfg_of(), 10)
    with pytest.raises(ValueError, match="version"):
        plan.load_state_dict(plan.state_dict() | {"version": 99})


def test_live_edit_of_the_milestones_replans():
    plan = LrPlan(cfg_of(train__time_budget_min=1.0), 100)
    simulate(plan, lambda s: 0.05, limit=100)
    assert plan.reconfigure(cfg_of(train__time_budget_min=1.0, train__milestones=[0.5]))
    assert plan.milestones == [pytest.approx(0.5 * plan.total_steps, abs=1)]


def test_live_edit_of_other_keys_keeps_the_plan_and_resume_is_exact():
    cfg = cfg_of(train__time_budget_min=1.0)
    plan = LrPlan(cfg, 100)
    simulate(plan, lambda s: 0.05, limit=300)
    state = plan.state_dict()
    assert not plan.reconfigure(cfg_of(train__time_budget_min=1.0, train__base_lr=0.01, train__gamma=0.5))
    assert plan.state_dict() == state and plan.lr_at(0) == pytest.approx(0.01)
    again = LrPlan(cfg, 100)
    again.load_state_dict(state)
    assert not again.reconfigure(cfg) and again.state_dict() == state  # what the trainer does at resume


def test_a_live_edit_of_the_budget_replans_the_end_and_the_decay():
    assert C.is_live("train.time_budget_min")  # the autopilot's budget change reaches its final run this way
    plan = LrPlan(cfg_of(train__time_budget_min=1.0), 100)
    simulate(plan, lambda s: 0.05, limit=300)
    before = plan.total_steps
    assert plan.reconfigure(cfg_of(train__time_budget_min=2.0))
    assert plan.total_steps == pytest.approx(2 * before, rel=0.02)
    assert plan.milestones[0] == pytest.approx(0.7 * plan.total_steps, abs=1)
