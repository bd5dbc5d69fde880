"""NMS after training: one forward pass cached, the grid decoded from it; the chosen thresholds ≥ the defaults."""

import pytest
import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.workflows import tune_post as TP
from nanxi_tune.engine.evaluation.evaluate_run import evaluate_run
from nanxi_tune.engine.train.trainer import Trainer
from conftest import tiny as base_tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**updates):
    extra = {"data.synthetic_train": 64, "data.synthetic_val": 16, "train.epochs": 6, "train.base_lr": 0.01,
             "eval.interval": 3, "eval.online": False}
    return base_tiny(**(extra | updates))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("tp") / "run"
    assert Trainer(tiny(), run).run() == "finished"
    torch.set_num_threads(n)
    return run


def test_cached_decode_scores_like_a_normal_eval(trained):
    cache = TP.cache_outputs(trained)
    flat = C.flatten(cache.cfg)
    m = TP.score(cache, {k: flat[k] for k in TP.KEYS})
    ref = evaluate_run(trained, "best")
    assert m["mAP"] == pytest.approx(ref["mAP"], abs=1e-9) and m["AP50"] == pytest.approx(ref["AP50"], abs=1e-9)
    assert len(cache.img_ids) == 16 and set(cache.outputs[0]) == {"map", "offset", "shape"}


def test_tune_beats_or_matches_defaults_and_applies(trained, tmp_path, monkeypatch):
    cfg0 = C.load(trained / rundir.CONFIG)
    calls = {"forward": 0}
    real = TP.cache_outputs

    def counting(*a, **k):
        calls["forward"] += 1
        return real(*a, **k)

    monkeypatch.setattr(TP, "cache_outputs", counting)
    progress = []
    res = TP.tune(trained, progress=lambda d, n: progress.append((d, n)))
    assert calls["forward"] == 1  # the network ran once
    n_points = 6 * 6 * 4  # the run's own values (0.6, 0.01, 100) are already on the grid
    assert len(res.rows) == n_points and progress[-1] == (n_points, n_points)
    flip = res.extra["flip_test"]["chosen"]  # decided first; the grid's rows all carry it
    assert {r[TP.FLIP] for r in res.rows} == {flip} and res.best[TP.FLIP] == flip
    defaults = [r for r in res.rows if r["default"]]
    moved = flip or res.extra["shape_vote"]["chosen"] != cfg0.postprocess.shape_vote  # chosen before the grid
    assert len(defaults) == (0 if moved else 1) and res.default["postprocess.nms_iou"] == cfg0.postprocess.nms_iou
    assert res.best["mAP"] >= res.default["mAP"]
    assert res.best["mAP"] == max(r["mAP"] for r in res.rows)
    print(f"tune-post: defaults mAP {res.default['mAP']:.4f} → best {res.best['mAP']:.4f} ({TP.fmt_point(res.best)})")
    # apply to a preset path, then to the run itself
    preset = tmp_path / "mine.toml"
    C.save(C.load_preset("demo"), preset)
    TP.apply(res, preset)
    assert C.flatten(C.load(preset))["postprocess.nms_iou"] == res.best["postprocess.nms_iou"]
    TP.apply(res)
    cfg1 = C.load(trained / rundir.CONFIG)
    assert {k: C.flatten(cfg1)[k] for k in (*TP.KEYS, TP.FLIP, TP.VOTE)} == res.best_updates()
    assert C.diff(cfg0, cfg1).keys() <= {*TP.KEYS, TP.FLIP, TP.VOTE}
    journal = (trained / rundir.JOURNAL).read_text()
    assert "Post-processing (tuned after training)" in journal and "tune-post: best" in journal
    # scoring the applied config reproduces the best
    assert evaluate_run(trained, "best")["mAP"] == pytest.approx(res.best["mAP"], abs=1e-9)


def test_grid_always_holds_the_runs_own_values():
    cfg = C.with_updates(C.Config(), {"postprocess.nms_iou": 0.55, "postprocess.top_k": 77})
    pts = TP.make_grid(cfg, {"postprocess.nms_iou": (0.5,), "postprocess.score_threshold": (0.1,),
                             "postprocess.top_k": (10,)})
    assert {"postprocess.nms_iou": 0.55, "postprocess.score_threshold": 0.01, "postprocess.top_k": 77} in pts
    assert len(pts) == 2 * 2 * 2


def _with(cache, **parts):
    from dataclasses import replace

    return replace(cache, **parts)


def _blank(outputs):
    return [dict(o, map=torch.zeros_like(o["map"])) for o in outputs]


def test_flip_test_is_scored_like_evaluation_and_chosen_only_when_it_raises_map(trained, tmp_path):
    cache = TP.cache_outputs(trained)
    flat = C.flatten(cache.cfg)
    own = {k: flat[k] for k in (*TP.KEYS, TP.FLIP)}
    assert own[TP.FLIP] is False and cache.flipped is not None
    # the cached mirrored pass scores as evaluation does with the key on
    on = TP.score(cache, {**own, TP.FLIP: True})
    flipped_run = tmp_path / "run"
    import shutil

    shutil.copytree(trained, flipped_run)
    C.save(C.with_updates(C.load(flipped_run / rundir.CONFIG), {TP.FLIP: True}), flipped_run / rundir.CONFIG)
    assert evaluate_run(flipped_run, "best")["mAP"] == pytest.approx(on["mAP"], abs=1e-9)
    small = {"postprocess.nms_iou": (0.5,), "postprocess.score_threshold": (0.1,), "postprocess.top_k": (10,)}
    # a mirror that finds nothing: flip test stays off, the run's own point is a row
    off = TP.tune(trained, small, cache=_with(cache, flipped=_blank(cache.flipped)))
    assert off.extra["flip_test"]["chosen"] is False and off.extra["flip_test"]["on"] == 0.0
    assert all(r[TP.FLIP] is False for r in off.rows)
    assert any(r["default"] for r in off.rows) == (off.extra["shape_vote"]["chosen"] == flat[TP.VOTE])
    # a plain pass that finds nothing: flip test on, every row with it, the defaults scored apart
    won = TP.tune(trained, small, cache=_with(cache, outputs=_blank(cache.outputs)))
    assert won.extra["flip_test"]["chosen"] is True and won.default["mAP"] == 0.0
    assert all(r[TP.FLIP] is True for r in won.rows) and not any(r["default"] for r in won.rows)
    assert won.best_updates()[TP.FLIP] is True and won.best["mAP"] > 0
    assert "flip test" in TP.fmt_point(won.best) and "→ on" in TP.fmt_choices(won)
    # without the mirrored pass the key cannot be scored, and tune leaves it as the run has it
    plain = TP.cache_outputs(trained, flip=False)
    with pytest.raises(ValueError, match="flip_test"):
        TP.score(plain, {TP.FLIP: True})
    assert "flip_test" not in TP.tune(trained, small, cache=plain).extra
