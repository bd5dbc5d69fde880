"""The shape branch's two levers for tight boxes. head.shape_quality (框质量): an extra channel learns the IoU of the
box decoded at each centre cell; decode scores heat × quality^w; flip test, tune-post and export carry it.
encode.shape = ltrb_dfl: each edge distance a distribution over 16-px bins (GFL's Distribution Focal Loss)."""

import json

import pytest
import torch

from conftest import tiny, train_one_thread
from nanxi_tune.engine import config as C
from nanxi_tune.engine.model import flip_test
from nanxi_tune.engine.model.decode import decode
from nanxi_tune.engine.model.detector import build_model
from nanxi_tune.engine.model import encoding
from nanxi_tune.engine.model.loss import dfl_loss, paired_iou, quality_loss
from nanxi_tune.engine.model.targets import build_targets

pytestmark = pytest.mark.usefixtures("one_thread")

QUALITY = {"head.shape_quality": True, "train.precision": "fp32"}


def _model(**updates):
    torch.manual_seed(0)
    cfg = tiny(**(QUALITY | updates))
    model = build_model(cfg, 3)
    with torch.no_grad():  # weights that see the image (a fresh head is nearly constant)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return cfg, model


def test_the_quality_channel_is_off_by_default_and_one_more_shape_channel_when_on():
    assert C.Config().head.shape_quality is False
    off = build_model(tiny(), 3)
    cfg, on = _model()
    assert on.head_shape.out_conv.out_channels == off.head_shape.out_conv.out_channels + 1
    out = on(torch.rand(2, 3, 64, 64))
    assert out["shape"].shape == off(torch.rand(2, 3, 64, 64))["shape"].shape
    assert out["quality"].shape[1] == 1 and 0 <= out["quality"].min() and out["quality"].max() <= 1
    assert "quality" not in off(torch.rand(1, 3, 64, 64))


def test_quality_loss_is_zero_when_it_predicts_its_boxes_iou_and_trains_only_the_quality():
    cfg, model = _model()
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 30.0], [30.0, 30.0, 60.0, 62.0]]), torch.tensor([[10.0, 8.0, 50.0, 44.0]])]
    targets = build_targets([{"boxes": b, "labels": torch.tensor([0] * len(b))} for b in boxes], 3, cfg, "cpu")
    out = model(torch.rand(2, 3, 64, 64))
    out = {k: v.detach().requires_grad_(True) for k, v in out.items()}
    loss = quality_loss(out, targets, cfg)
    assert loss.item() > 0.0
    loss.backward()
    assert out["quality_logits"].grad.abs().sum() > 0
    assert out["shape"].grad is None and out["offset"].grad is None  # the quality judges the box, not moves it
    # logits at logit(IoU of the decoded box): the loss is 0 (cross-entropy less the target's entropy)
    from nanxi_tune.engine.model.loss import at_centres

    idx = targets["pos_index"]
    H, W = out["shape"].shape[-2:]
    xy = torch.stack([idx % (H * W) % W, idx % (H * W) // W], dim=1)
    centre = encoding.decode_offset(xy, at_centres(out["offset"], idx), cfg.encode.offset)
    decoded = encoding.decode_shape(centre, at_centres(out["shape"], idx), cfg.neck.out_stride, cfg.encode.shape)
    iou = paired_iou(decoded, targets["pos_box"]).detach().clamp(1e-4, 1 - 1e-4)
    exact = out["quality_logits"].detach().clone()
    flat = exact.permute(0, 2, 3, 1).reshape(-1, 1)
    flat[idx, 0] = torch.log(iou / (1 - iou))
    exact = flat.reshape(exact.shape[0], H, W, 1).permute(0, 3, 1, 2)
    assert quality_loss({**out, "quality_logits": exact}, targets, cfg).item() == pytest.approx(0.0, abs=1e-5)
    # the whole loss adds it to the shape branch's
    with_q = model.criterion.branch_losses({**out, "quality_logits": exact.detach() + 3.0}, targets)["loss_shape"]
    without = model.criterion.branch_losses({k: v for k, v in out.items() if not k.startswith("quality")},
                                            targets)["loss_shape"]
    assert with_q.item() > without.item()


def test_paired_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [2.0, 2.0, 3.0, 3.0]])
    assert paired_iou(a, b).tolist() == pytest.approx([2 / 6, 0.0])


def _two_peaks(quality: bool = True) -> dict:
    heat = torch.zeros(1, 1, 8, 8)
    heat[0, 0, 2, 2], heat[0, 0, 5, 5] = 0.9, 0.6
    out = {"map": heat, "offset": torch.full((1, 2, 8, 8), 0.5), "shape": torch.full((1, 2, 8, 8), 2.0)}
    if quality:
        q = torch.full((1, 1, 8, 8), 0.5)
        q[0, 0, 2, 2], q[0, 0, 5, 5] = 0.2, 0.9
        out["quality"] = q
    return out


@pytest.mark.parametrize("w, first, scores", [(0.0, 2, [0.9, 0.6]), (1.0, 5, [0.6 * 0.9, 0.9 * 0.2]),
                                              (2.0, 5, [0.6 * 0.81, 0.9 * 0.04])])
def test_decode_scores_heat_and_quality_by_the_weight(w, first, scores):
    cfg = C.with_updates(tiny(), {"neck.out_stride": 8, "postprocess.quality_weight": w})
    det = decode(_two_peaks(), cfg)[0]  # every other cell has heat 0 and stays 0, whatever its quality
    assert det["scores"][:2].tolist() == pytest.approx(scores) and not det["scores"][2:].any()
    assert det["boxes"][0, 0].item() == pytest.approx((first + 0.5 - 1.0) * 8)  # the first box is that peak's
    # the threshold reads the heat: a weight that shrinks every score drops no peak
    high = decode(_two_peaks(), C.with_updates(cfg, {"postprocess.score_threshold": 0.5, "postprocess.quality_weight":
                                                     16.0}))[0]
    assert len(high["scores"]) == 2 and high["scores"].max() < 0.5
    plain = decode(_two_peaks(quality=False), cfg)[0]  # a detector without the channel: the heatmap alone
    assert plain["scores"][:2].tolist() == pytest.approx([0.9, 0.6])


def test_flip_test_averages_the_quality_with_the_mirrors():
    cfg, model = _model(**{"postprocess.flip_test": True})
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        a, b = flip_test.infer(model, x, cfg), flip_test.infer(model, x.flip(-1), cfg)
        plain = model(x)
    assert torch.allclose(a["quality"], b["quality"].flip(-1), atol=1e-6)
    assert not torch.allclose(a["quality"], plain["quality"])


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("quality") / "run"
    cfg = tiny(**{"head.shape_quality": True, "encode.shape": "ltrb_dfl", "train.epochs": 4, "train.base_lr": 0.01,
                  "eval.online": False, "data.synthetic_train": 48, "data.synthetic_val": 12})
    assert train_one_thread(run, cfg) == "finished"
    return run


def test_tune_post_chooses_the_quality_weight_on_the_scored_images(quality_run):
    from nanxi_tune.engine.workflows import tune_post as TP

    cache = TP.cache_outputs(quality_run, flip=False)
    assert "quality" in cache.outputs[0]
    small = {"postprocess.nms_iou": (0.5,), "postprocess.score_threshold": (0.01,), "postprocess.top_k": (20,)}
    res = TP.tune(quality_run, small, cache=cache)
    q = res.extra["quality_weight"]
    by = {float(w): m for w, m in q["mAP"].items()}
    assert set(by) == set(TP.QUALITY_WEIGHTS)
    best = max(by.values())
    assert by[q["chosen"]] == best and (by[1.0] < best or q["chosen"] == 1.0)  # a tie keeps the run's own
    assert {r[TP.QUALITY] for r in res.rows} == {q["chosen"]} and res.best_updates()[TP.QUALITY] == q["chosen"]
    assert "quality_weight" in TP.fmt_point(res.best) and "box quality (框质量) weight" in TP.fmt_choices(res)
    # weight 0 is the heatmap alone: the same figure as a cache without the channel
    drop = [{k: v for k, v in o.items() if k != "quality"} for o in cache.outputs]
    from dataclasses import replace

    point = {**{k: C.flatten(cache.cfg)[k] for k in TP.KEYS}, TP.QUALITY: 0.0}
    assert TP.score(cache, point)["mAP"] == TP.score(replace(cache, outputs=drop), point)["mAP"]
    # a run without the channel: no quality choice, no key in its updates
    plain = TP.tune(quality_run, small, cache=replace(cache, outputs=drop))
    assert "quality_weight" not in plain.extra and TP.QUALITY not in plain.best_updates()


def test_tune_post_chooses_the_shape_vote_after_the_quality_weight(quality_run):
    from nanxi_tune.engine.workflows import tune_post as TP

    cache = TP.cache_outputs(quality_run, flip=False)
    small = {"postprocess.nms_iou": (0.5,), "postprocess.score_threshold": (0.01,), "postprocess.top_k": (20,)}
    res = TP.tune(quality_run, small, cache=cache)
    v = res.extra["shape_vote"]
    by = {float(p): m for p, m in v["mAP"].items()}
    assert set(by) == set(TP.VOTE_POWERS)
    assert by[v["chosen"]] == max(by.values()) and (by[0.0] < max(by.values()) or v["chosen"] == 0.0)
    # each power is scored with the quality weight already chosen, and the grid runs with both
    q = res.extra["quality_weight"]["chosen"]
    point = {**{k: C.flatten(cache.cfg)[k] for k in TP.KEYS}, TP.FLIP: False, TP.QUALITY: q}
    assert all(TP.score(cache, {**point, TP.VOTE: p})["mAP"] == m for p, m in by.items())
    assert {r[TP.VOTE] for r in res.rows} == {v["chosen"]} and res.best_updates()[TP.VOTE] == v["chosen"]
    assert "neighbours' shape vote (邻格投票)" in TP.fmt_choices(res)


def test_export_carries_the_quality_output(quality_run, tmp_path):
    from nanxi_tune.cli.main import main
    from nanxi_tune.engine.evaluation.evaluate_run import load_ema_model
    from nanxi_tune.engine.run import rundir

    path = tmp_path / "m.onnx"
    assert main(["export", str(quality_run), "--format", "onnx", "--out", str(path), "--checkpoint", "last"]) == 0
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert "quality" in side["outputs"] and side["decode"]["quality_weight"] == 1.0
    assert any(s.startswith("score = map × quality") for s in side["decode"]["steps"])
    cfg = C.with_updates(C.load(quality_run / rundir.CONFIG), {"train.precision": "fp32"})
    cfg, model, ds = load_ema_model(quality_run, "last", cfg)
    x = torch.stack([ds[i][0] for i in range(2)])
    with torch.inference_mode():
        ref = model.eval()(x)
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    assert len(got) == 4
    for k, g in zip(["map", "offset", "shape", "quality"], got):
        assert (torch.from_numpy(g) - ref[k]).abs().max().item() <= 1e-4 * max(1.0, ref[k].abs().max().item()), k


@pytest.mark.parametrize("samples", ["centre", "gaussian"])
def test_dfl_loss_is_zero_on_the_two_bins_around_each_distance_and_their_expectation_is_the_distance(samples):
    cfg, model = _model(**{"encode.shape": "ltrb_dfl", "neck.out_stride": 8, "loss.shape_samples": samples})
    boxes = [torch.tensor([[3.0, 5.0, 41.0, 30.0]]), torch.tensor([[10.0, 8.0, 50.0, 60.0]])]
    targets = build_targets([{"boxes": b, "labels": torch.tensor([1])} for b in boxes], 3, cfg, "cpu")
    out = model(torch.rand(2, 3, 64, 64))
    bins = encoding.dfl_bins(64)
    assert out["shape_logits"].shape == (2, 4, bins, 8, 8) and out["shape"].shape == (2, 4, 8, 8)
    assert out["shape"].min() >= 0 and out["shape"].max() <= (bins - 1) * encoding.DFL_BIN_PX / 8
    assert dfl_loss(out, targets, cfg).item() > 0.1
    # every sampled cell's distribution on the two bins around its distance, weighted by nearness
    key = "reg" if samples == "gaussian" else "pos"
    index, ltrb = targets[f"{key}_index"], targets[f"{key}_shape"]
    t = ltrb / (encoding.DFL_BIN_PX / 8)
    left = t.floor().long()
    probs = torch.zeros(len(t), 4, bins).scatter_(2, left.unsqueeze(-1), (1 - (t - left)).unsqueeze(-1))
    probs.scatter_add_(2, left.unsqueeze(-1) + 1, (t - left).unsqueeze(-1))
    exact = torch.full((2 * 8 * 8, 4, bins), -30.0)
    exact[index] = probs.clamp(min=1e-30).log()
    exact = exact.reshape(2, 8, 8, 4, bins).permute(0, 3, 4, 1, 2)
    assert dfl_loss({"shape_logits": exact}, targets, cfg).item() == pytest.approx(0.0, abs=1e-4)
    expect = (exact.softmax(2) * model.dfl_cells.view(1, 1, -1, 1, 1)).sum(2)
    b, cell = index // 64, index % 64
    assert torch.allclose(expect[b, :, cell // 8, cell % 8], ltrb, atol=1e-4)


def test_ltrb_dfl_is_shape_for_decode_flip_test_and_targets():
    cfg, model = _model(**{"encode.shape": "ltrb_dfl", "postprocess.flip_test": True})
    assert encoding.shape_channels("ltrb_dfl") == 4
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        a, b = flip_test.infer(model, x, cfg), flip_test.infer(model, x.flip(-1), cfg)
    back = b["shape"].flip(-1)[:, [2, 1, 0, 3]]  # the mirror's right edge is the image's left
    assert torch.allclose(a["shape"], back, atol=1e-5)
    assert decode(a, cfg)[0]["boxes"].shape[1] == 4
