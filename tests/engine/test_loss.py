"""engine/model/loss.py: focal heatmap loss, L1 / GIoU regressions, uncertainty-weighted total."""

import math

import pytest
import torch

from nanxi_tune.engine.model import encoding
from nanxi_tune.engine.config import Config, with_updates
from nanxi_tune.engine.model.loss import DetectionLoss, focal_loss

S = 64


def make_targets(boxes: list[torch.Tensor], labels: list[torch.Tensor], c: int, cfg: Config) -> dict:
    """build_targets' format, built by hand from encoding.py (independent of engine/model/targets.py)."""
    st = cfg.neck.out_stride
    h = w = S // st
    k = encoding.shape_channels(cfg.encode.shape)
    b = len(boxes)
    t = {"heatmap": torch.zeros(b, c, h, w), "offset": torch.zeros(b, 2, h, w), "shape": torch.zeros(b, k, h, w),
         "box": torch.zeros(b, 4, h, w), "mask": torch.zeros(b, 1, h, w)}
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    n = 0
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        ctr = encoding.centres(bx, st)
        cell = ctr.floor().long()
        off = encoding.encode_offset(ctr, cell, cfg.encode.offset)
        shp = encoding.encode_shape(bx, ctr, st, cfg.encode.shape)
        for j in range(len(bx)):
            cx, cy = cell[j].tolist()
            side = ((bx[j, 2:] - bx[j, :2]) / st).clamp(min=1)
            sig = cfg.encode.gaussian_alpha * side / 6
            g = torch.exp(-((xs - cx) ** 2 / (2 * sig[0] ** 2) + (ys - cy) ** 2 / (2 * sig[1] ** 2)))
            t["heatmap"][i, lb[j]] = torch.maximum(t["heatmap"][i, lb[j]], g)
            t["heatmap"][i, lb[j], cy, cx] = 1.0
            t["offset"][i, :, cy, cx] = off[j]
            t["shape"][i, :, cy, cx] = shp[j]
            t["box"][i, :, cy, cx] = bx[j]
            t["mask"][i, 0, cy, cx] = 1.0
            n += 1
    t["num_pos"] = torch.tensor(float(max(n, 1)))
    return t


BOXES = [torch.tensor([[4.0, 6.0, 30.0, 28.0], [33.0, 35.0, 60.0, 62.0]]), torch.tensor([[10.0, 20.0, 50.0, 40.0]])]
LABELS = [torch.tensor([0, 1]), torch.tensor([1])]


def cfg_with(**upd) -> Config:
    return with_updates(Config(), {"preprocess.input_size": S, **upd})


def perfect_outputs(t: dict, logit: float = 30.0) -> dict:
    """Outputs that match the targets exactly: map 1 at centres, 0 elsewhere."""
    onehot = (t["heatmap"] >= 1).float()
    logits = torch.where(onehot > 0, torch.tensor(logit), torch.tensor(-logit))
    return {"map": torch.sigmoid(logits), "map_logits": logits, "offset": t["offset"].clone(),
            "shape": t["shape"].clone()}


def test_focal_zero_for_perfect_and_grows_with_error():
    cfg = cfg_with()
    t = make_targets(BOXES, LABELS, 2, cfg)
    gt, n = t["heatmap"], t["num_pos"]
    onehot = (gt >= 1).float()
    perfect = focal_loss(onehot, gt, n)
    as_gt = focal_loss(gt, gt, n)  # the Gaussian itself: small penalty near peaks only
    flat = focal_loss(torch.full_like(gt, 0.1), gt, n)
    half = focal_loss(torch.full_like(gt, 0.5), gt, n)
    inverted = focal_loss(1 - onehot, gt, n)
    assert perfect.item() < 1e-3
    assert perfect < as_gt < flat < half < inverted
    assert as_gt.item() < 0.5 and inverted.item() > 10


def test_focal_logits_path_matches_clamped_path():
    cfg = cfg_with()
    t = make_targets(BOXES, LABELS, 2, cfg)
    x = torch.randn_like(t["heatmap"]) * 2
    a = focal_loss(torch.sigmoid(x), t["heatmap"], t["num_pos"], logits=x)
    b = focal_loss(torch.sigmoid(x), t["heatmap"], t["num_pos"])
    assert a.item() > 0.1
    assert torch.allclose(a, b, rtol=1e-4)


@pytest.mark.parametrize("act", ["hsigmoid", "softskim", "heatskim"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.12, 1.08])
def test_no_nan_at_range_edges(act, value):
    cfg = cfg_with(**{"head.range_norm_act": act})
    crit = DetectionLoss(cfg)
    t = make_targets(BOXES, LABELS, 2, cfg)
    m = torch.full_like(t["heatmap"], value, requires_grad=True)
    out = crit({"map": m, "map_logits": torch.zeros_like(m), "offset": torch.zeros_like(t["offset"]),
                "shape": torch.ones_like(t["shape"])}, t)
    out["loss"].backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    assert torch.isfinite(m.grad).all()
    assert out["loss_map"].item() > 1.0  # a constant map is a bad prediction, not a free one


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_no_nan_with_saturated_logits(alpha):
    cfg = cfg_with(**{"loss.focal_alpha": alpha, "loss.focal_beta": 0.5})
    t = make_targets(BOXES, LABELS, 2, cfg)
    x = torch.where(t["heatmap"] >= 1, torch.tensor(200.0), torch.tensor(-200.0))
    x[0, 0, 0, 0] = 200.0  # a confident false positive
    x[1, 1] = -200.0  # a missed object
    x.requires_grad_(True)
    r = DetectionLoss(cfg)({"map": torch.sigmoid(x), "map_logits": x, "offset": t["offset"],
                            "shape": t["shape"]}, t)
    r["loss"].backward()
    assert torch.isfinite(r["loss"]) and torch.isfinite(x.grad).all()
    assert r["loss_map"].item() > 10


def test_combined_formula_is_exact():
    cfg = cfg_with(**{"loss.s_map": 0.5, "loss.s_offset": -1.0, "loss.s_shape": 2.0, "loss.loss_scale": 2.5})
    crit = DetectionLoss(cfg)
    t = make_targets(BOXES, LABELS, 2, cfg)
    torch.manual_seed(0)
    outs = {"map": torch.rand_like(t["heatmap"]), "offset": torch.rand_like(t["offset"]),
            "shape": torch.rand_like(t["shape"]) * 5}
    r = crit(outs, t)
    expected = 2.5 * (math.exp(-0.5) * r["loss_map"].item() + 0.5
                      + math.exp(1.0) * r["loss_offset"].item() - 1.0
                      + math.exp(-2.0) * r["loss_shape"].item() + 2.0)
    assert r["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert (r["s_map"].item(), r["s_offset"].item(), r["s_shape"].item()) == (0.5, -1.0, 2.0)
    assert not r["s_map"].requires_grad
    # the raw branch losses by hand
    m = t["mask"]
    assert r["loss_offset"].item() == pytest.approx(
        ((outs["offset"] - t["offset"]).abs() * m).sum().item() / 3, rel=1e-6)
    assert r["loss_shape"].item() == pytest.approx(
        ((outs["shape"] - t["shape"]).abs() * m).sum().item() / 3, rel=1e-6)


@pytest.mark.parametrize("shape", ["wh", "log_wh", "ltrb"])
@pytest.mark.parametrize("offset", ["subpixel", "centered"])
def test_giou_and_l1_zero_when_perfect_and_differ_otherwise(shape, offset):
    cfgs = {lf: cfg_with(**{"encode.shape": shape, "encode.offset": offset, "loss.shape_loss": lf,
                            "neck.out_stride": 8}) for lf in ("l1", "giou")}
    t = make_targets(BOXES, LABELS, 2, cfgs["l1"])
    out = perfect_outputs(t)
    for lf, cfg in cfgs.items():
        r = DetectionLoss(cfg)(out, t)
        assert r["loss_shape"].item() == pytest.approx(0.0, abs=1e-5), lf
        assert r["loss_offset"].item() == 0.0
        assert r["loss_map"].item() < 1e-3
    bad = {**out, "shape": out["shape"] * 1.5 + 0.3}
    l1 = DetectionLoss(cfgs["l1"])(bad, t)["loss_shape"].item()
    giou = DetectionLoss(cfgs["giou"])(bad, t)["loss_shape"].item()
    assert l1 > 0.1 and giou > 0.01
    assert abs(l1 - giou) > 1e-3
    assert giou <= 2.0  # GIoU loss per positive lies in [0, 2]


def test_giou_gradient_flows_to_shape():
    cfg = cfg_with(**{"loss.shape_loss": "giou", "encode.shape": "ltrb"})
    t = make_targets(BOXES, LABELS, 2, cfg)
    shp = (t["shape"] * 0.5 + 0.5).requires_grad_(True)
    r = DetectionLoss(cfg)({**perfect_outputs(t), "shape": shp}, t)
    r["loss_shape"].backward()
    cells = t["mask"].expand_as(shp) > 0
    assert shp.grad[cells].abs().sum() > 0
    assert shp.grad[~cells].abs().sum() == 0


def test_no_objects_is_finite():
    cfg = cfg_with(**{"loss.shape_loss": "giou"})
    t = make_targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], 2, cfg)
    out = perfect_outputs(t)
    r = DetectionLoss(cfg)(out, t)
    assert all(torch.isfinite(v) for v in r.values())
    assert r["loss_shape"].item() == 0.0


def test_log_weights_frozen_or_learned_same_state_dict():
    learned = DetectionLoss(cfg_with())
    frozen = DetectionLoss(cfg_with(**{"loss.learn_log_weights": False}))
    assert learned.state_dict().keys() == frozen.state_dict().keys() == {"s_map", "s_offset", "s_shape"}
    assert all(p.requires_grad for p in learned.parameters())
    assert not any(p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("use_logits", [True, False])
def test_sparse_focal_equals_dense_in_value_and_gradient(use_logits):
    """build_targets hands the loss a sparse heatmap; the sparse focal loss must be the dense one."""
    from nanxi_tune.engine.model.loss import focal_loss_sparse

    t = make_targets(BOXES, LABELS, 3, cfg_with())
    gt = t["heatmap"]
    gt[0, 2, 0, 0] = 1e-30  # a touched cell whose value underflows: weight ~1, like an untouched one
    index = (gt.view(-1) > 0).nonzero()[:, 0]
    grads = []
    for sparse in (False, True):
        x = (torch.randn(gt.shape, generator=torch.Generator().manual_seed(3)) * 3).requires_grad_()
        logits = x if use_logits else None
        loss = (focal_loss_sparse(torch.sigmoid(x), index, gt.view(-1)[index], t["num_pos"], logits=logits)
                if sparse else focal_loss(torch.sigmoid(x), gt, t["num_pos"], logits=logits))
        loss.backward()
        grads.append((loss.detach(), x.grad))
    (a, ga), (b, gb) = grads
    assert a.item() > 1.0 and torch.allclose(a, b, rtol=1e-5)
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)


def test_detection_loss_reads_build_targets_sparse_heatmap():
    from nanxi_tune.engine.model.targets import build_targets

    cfg = cfg_with()
    batch = [{"boxes": b, "labels": lb} for b, lb in zip(BOXES, LABELS)]
    sparse = build_targets(batch, 2, cfg, "cpu")
    assert "heatmap" not in sparse
    dense = build_targets(batch, 2, cfg, "cpu", dense=True)
    out = perfect_outputs(dense, logit=1.0)
    crit = DetectionLoss(cfg)
    a, b = crit(out, sparse), crit(out, dense)
    assert a["loss_map"].item() > 0.1 and torch.allclose(a["loss_map"], b["loss_map"], rtol=1e-5)


def test_a_live_edit_of_the_shape_loss_reaches_the_model_and_its_ema(tmp_path, one_thread):
    """loss.shape_loss is live: the layers fit either loss, so the localisation remedy continues a run with GIoU."""
    from conftest import tiny
    from nanxi_tune.engine import config as C
    from nanxi_tune.engine.run import rundir
    from nanxi_tune.engine.train.trainer import Trainer

    assert C.is_live("loss.shape_loss")
    t = Trainer(tiny(), tmp_path / "run")
    t.run_dir.mkdir()
    t._setup()
    images = torch.rand(2, 3, t.cfg.preprocess.input_size, t.cfg.preprocess.input_size)
    boxes = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([0])}] * 2
    from nanxi_tune.engine.model.targets import build_targets

    targets = build_targets(boxes, t.model.num_classes, t.cfg, t.device)
    with torch.no_grad():
        before = float(t.model(images, targets)["loss_shape"])
    assert t.commands.live_edit({"loss.shape_loss": "giou"}) == [["loss.shape_loss", "l1", "giou"]]
    with torch.no_grad():
        after = float(t.model(images, targets)["loss_shape"])
    assert after != before and 0 <= after <= 2  # a GIoU loss per object lies in [0, 2]
    assert t.ema.module.criterion.cfg.loss.shape_loss == "giou"  # val losses follow too
    assert C.load(t.run_dir / rundir.CONFIG).loss.shape_loss == "giou"  # a resume continues with it


@pytest.mark.parametrize("shape_loss", ["l1", "giou"])
def test_gaussian_samples_zero_when_every_cell_is_right_and_scale_of_centre_loss(shape_loss):
    """With loss.shape_samples = gaussian the shape loss reads each object's window cells: zero when every
    cell predicts its object's shape, a Gaussian-weighted mean over objects otherwise (the centre loss's scale)."""
    from nanxi_tune.engine.model.targets import build_targets

    boxes = [torch.tensor([[4.0, 4.0, 60.0, 56.0]])]
    cfgs = {s: cfg_with(**{"loss.shape_loss": shape_loss, "loss.shape_samples": s, "encode.shape": "wh"})
            for s in ("centre", "gaussian")}
    batch = [{"boxes": boxes[0], "labels": torch.tensor([0])}]
    t = {s: build_targets(batch, 2, c, "cpu") for s, c in cfgs.items()}
    H = cfgs["centre"].preprocess.input_size // cfgs["centre"].neck.out_stride
    wh = t["centre"]["pos_shape"][0]
    right = torch.zeros(1, 2, H, H) + wh.view(1, 2, 1, 1)  # every cell predicts the object's size
    outs = {"map": torch.full((1, 2, H, H), 0.5), "offset": torch.zeros(1, 2, H, H), "shape": right}
    for s, c in cfgs.items():
        assert DetectionLoss(c)(outs, t[s])["loss_shape"].item() == pytest.approx(0.0, abs=1e-5)
    # only the centre cell right: the centre loss is zero, the Gaussian one is not
    wrong = right * 0.5
    cell = t["centre"]["pos_index"][0]
    wrong.view(1, 2, -1)[0, :, cell] = wh
    out2 = {**outs, "shape": wrong}
    assert DetectionLoss(cfgs["centre"])(out2, t["centre"])["loss_shape"].item() == pytest.approx(0.0, abs=1e-5)
    g = DetectionLoss(cfgs["gaussian"])(out2, t["gaussian"])["loss_shape"].item()
    half = DetectionLoss(cfgs["centre"])({**outs, "shape": right * 0.5}, t["centre"])["loss_shape"].item()
    assert 0 < g < half  # a weighted mean of zero (centre) and the half-size error elsewhere
