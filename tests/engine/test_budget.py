"""Budget: the projection at every eval agrees with the over-time-budget rule on the same history."""

import pytest

from nanxi_tune.engine.diagnosis import projection as B
from nanxi_tune.engine import config as C
from nanxi_tune.engine.diagnosis.rules import RULES


def lines(sps: float, total: int, n: int = 60, eval_every: int = 20, eval_s: float = 5.0):
    t, out = 1000.0, []
    for step in range(1, n + 1):
        t += sps
        out.append({"kind": "step", "split": "train", "step": step, "epoch": (step - 1) // eval_every, "time": t,
                    "loss": 1.0, "loss_map": 0.5, "loss_offset": 0.2, "loss_shape": 0.3, "lr": 0.001,
                    "grad_norm": 1.0, "total_steps": total})
        if step % eval_every == 0:
            t += eval_s
            out.append({"kind": "eval", "split": "val", "step": step, "epoch": step // eval_every - 1, "time": t,
                        "mAP": 0.1, "AP50": 0.2, "loss": 1.0, "loss_map": 0.5, "loss_offset": 0.2,
                        "loss_shape": 0.3})
    return out


@pytest.mark.parametrize("sps,over", [(2.0, True), (1.0, False)])
def test_projection_at_every_eval_agrees_with_the_rule(sps, over):
    cfg = C.with_updates(C.Config(), {"budget.max_days": 4.0, "train.epochs": 10000, "eval.interval": 1})
    total = 200_000
    ls = lines(sps, total)
    ps = B.projections(ls, cfg)
    assert [p.step for p in ps] == [20, 40, 60]
    last = ps[-1]
    assert last.seconds_per_step == pytest.approx(sps)
    assert last.projected_days == pytest.approx(total * sps / 86400)
    assert last.over is over
    finding = RULES["over-time-budget"].fn(cfg, ls)
    assert (finding is not None) is over
    if finding:
        assert finding.evidence["projected_days"] == pytest.approx(last.projected_days, rel=1e-3)
        assert last.finding["rule"] == "over-time-budget"
    assert last.eval_seconds == pytest.approx(5.0)
    assert last.projected_days_with_evals == pytest.approx(last.projected_days + 10000 * 5.0 / 86400)
    assert "days" in last.text()
    assert ps[0].step == 20 and ps[0].projected_days is not None  # 20 lines = diagnose.budget_min_lines


def test_too_few_lines_has_no_projection_yet():
    cfg = C.Config()
    ps = B.projections(lines(2.0, 1000, n=10, eval_every=5), cfg)
    assert all(p.projected_days is None and not p.over for p in ps)
    assert "not enough" in ps[0].text()
