"""engine/model/detector.py: shapes for every option, head norm, gradients, init, SPP, range_norm_act, devices."""

import pytest
import torch
from torch import nn

from nanxi_tune.engine.model import encoding
from nanxi_tune.engine.config import Config, load_preset, with_updates
from nanxi_tune.engine.model.detector import build_model, count_parameters, prior_bias, range_norm

S = 64
TINY = {"preprocess.input_size": S, "backbone.width": 8, "head.channels": 8, "head.depth": 1}


def cfg_with(**upd) -> Config:
    return with_updates(Config(), {**TINY, **upd})


def hand_targets(cfg: Config, b: int, c: int) -> dict:
    """One object per image at a fixed cell, in build_targets' format (built by hand)."""
    st = cfg.neck.out_stride
    h = S // st
    k = encoding.shape_channels(cfg.encode.shape)
    box = torch.tensor([[10.0, 12.0, 40.0, 50.0]])
    ctr = encoding.centres(box, st)
    cell = ctr.floor().long()
    cx, cy = cell[0].tolist()
    t = {"heatmap": torch.zeros(b, c, h, h), "offset": torch.zeros(b, 2, h, h), "shape": torch.zeros(b, k, h, h),
         "box": torch.zeros(b, 4, h, h), "mask": torch.zeros(b, 1, h, h), "num_pos": torch.tensor(float(b))}
    t["heatmap"][:, 0, cy, cx] = 1.0
    t["heatmap"][:, 0, cy, cx + 1] = 0.5
    t["offset"][:, :, cy, cx] = encoding.encode_offset(ctr, cell, cfg.encode.offset)[0]
    t["shape"][:, :, cy, cx] = encoding.encode_shape(box, ctr, st, cfg.encode.shape)[0]
    t["box"][:, :, cy, cx] = box[0]
    t["mask"][:, 0, cy, cx] = 1.0
    return t


SWEEP = [
    dict(),  # defaults: silu, trunc_normal, stride 4, wh, no head norm, sigmoid
    {"principles.act": "relu", "principles.weights_init": "kaiming", "neck.out_stride": 8,
     "encode.shape": "log_wh", "head.norm": "bn", "head.range_norm_act": "hsigmoid"},
    {"principles.act": "leaky_relu", "principles.weights_init": "xavier", "neck.out_stride": 16,
     "encode.shape": "ltrb", "head.range_norm_act": "softskim", "backbone.input_channels_bn": True},
    {"principles.act": "mish", "principles.weights_init": "torch_default", "neck.out_stride": 4,
     "encode.shape": "ltrb", "head.range_norm_act": "heatskim", "head.depth": 0},
    {"principles.act": "hardswish", "neck.out_stride": 8, "encode.shape": "wh", "head.norm": "bn",
     "backbone.input_channels_bn": True, "backbone.depth": 2, "encode.offset": "centered"},
    {"principles.act": "silu", "neck.out_stride": 16, "encode.shape": "log_wh", "head.range_norm_act": "heatskim",
     "preprocess.input_size": 96, "neck.spp_kernels": [3]},
]


@pytest.mark.parametrize("upd", SWEEP, ids=range(len(SWEEP)))
def test_output_shapes(upd):
    cfg = cfg_with(**upd)
    size = cfg.preprocess.input_size
    c = 3
    model = build_model(cfg, c)
    assert model.num_classes == c and model.cfg is cfg
    out = model(torch.randn(2, 3, size, size))
    h = size // cfg.neck.out_stride
    k = encoding.shape_channels(cfg.encode.shape)
    assert out["map"].shape == out["map_logits"].shape == (2, c, h, h)
    assert out["offset"].shape == (2, 2, h, h)
    assert out["shape"].shape == (2, k, h, h)
    if cfg.encode.shape != "log_wh":
        assert (out["shape"] > 0).all()
    assert all(torch.isfinite(v).all() for v in out.values())
    has_in_bn = isinstance(model.input_bn, nn.BatchNorm2d)
    assert has_in_bn == cfg.backbone.input_channels_bn


def _head_bns(model):
    return [m for br in (model.head_map, model.head_offset, model.head_shape) for m in br.modules()
            if isinstance(m, nn.BatchNorm2d)]


def test_head_batchnorm_only_when_asked():
    plain = build_model(cfg_with(**{"head.depth": 2}), 2)
    assert _head_bns(plain) == []
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.backbone.modules())
    bn = build_model(cfg_with(**{"head.depth": 2, "head.norm": "bn"}), 2)
    assert len(_head_bns(bn)) == 3 * 2
    convs = [m for m in bn.head_map.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].bias is None and convs[-1].bias is not None  # conv before BN has no bias


@pytest.mark.parametrize("shape_loss", ["l1", "giou"])
def test_gradient_reaches_every_parameter(shape_loss):
    cfg = cfg_with(**{"loss.shape_loss": shape_loss, "backbone.input_channels_bn": True, "head.depth": 2,
                      "encode.shape": "ltrb"})
    torch.manual_seed(0)
    model = build_model(cfg, 2)
    losses = model(torch.randn(2, 3, S, S), hand_targets(cfg, 2, 2))
    assert set(losses) == {"loss", "loss_map", "loss_offset", "loss_shape", "s_map", "s_offset", "s_shape"}
    losses["loss"].backward()
    names = [n for n, _ in model.named_parameters()]
    assert {"criterion.s_map", "criterion.s_offset", "criterion.s_shape"} <= set(names)
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def test_log_weights_not_learned_when_off():
    cfg = cfg_with(**{"loss.learn_log_weights": False, "loss.s_map": 1.5})
    model = build_model(cfg, 2)
    losses = model(torch.randn(2, 3, S, S), hand_targets(cfg, 2, 2))
    losses["loss"].backward()
    for name in ("s_map", "s_offset", "s_shape"):
        p = getattr(model.criterion, name)
        assert not p.requires_grad and p.grad is None
    assert model.criterion.s_map.item() == 1.5
    assert model.backbone.stem[0].weight.grad is not None
    learned = build_model(cfg_with(), 2)
    assert learned.state_dict().keys() == model.state_dict().keys()


def _conv_weight(kind: str) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(cfg_with(**{"principles.weights_init": kind}), 2)
    return model.backbone.stages[3][0][0].weight.detach()  # 32 → 64, 3×3: 18432 weights


def test_weights_init_distributions_differ():
    w = {k: _conv_weight(k) for k in ("trunc_normal", "kaiming", "xavier", "torch_default")}
    fan_in, fan_out = 32 * 9, 64 * 9
    stds = {k: v.std().item() for k, v in w.items()}
    assert w["trunc_normal"].abs().max() <= 0.04 + 1e-6
    assert stds["trunc_normal"] == pytest.approx(0.02 * 0.88, rel=0.05)
    assert stds["kaiming"] == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    assert w["xavier"].abs().max() <= (6 / (fan_in + fan_out)) ** 0.5 + 1e-6
    assert stds["xavier"] == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.05)
    assert w["torch_default"].abs().max() <= 1 / fan_in ** 0.5 + 1e-6  # kaiming_uniform(a=√5)
    vals = sorted(stds.values())
    assert all(b / a > 1.1 for a, b in zip(vals, vals[1:])), stds


def test_spp_kernels_change_the_module():
    a = build_model(cfg_with(), 2)
    b = build_model(cfg_with(**{"neck.spp_kernels": [3, 7]}), 2)
    assert [p.kernel_size for p in a.neck.spp.pools] == [5, 9, 13]
    assert [p.kernel_size for p in b.neck.spp.pools] == [3, 7]
    assert count_parameters(a) != count_parameters(b)
    # same parameter count, different kernels: different outputs from the same weights
    c = build_model(cfg_with(**{"neck.spp_kernels": [3]}), 2)
    d = build_model(cfg_with(**{"neck.spp_kernels": [9]}), 2)
    d.load_state_dict(c.state_dict())
    f = torch.randn(2, c.backbone.channels[32], 8, 8)  # the stride-32 feature of a 256-px input
    fc, fd = c.neck.spp(f), d.neck.spp(f)
    assert fc.shape == fd.shape == f.shape
    assert fc.std() > 0.1 and not torch.allclose(fc, fd)


def test_range_norm_act_ranges():
    x = torch.linspace(-20, 20, 401)
    sig, hs, soft, heat = (range_norm(x, k) for k in ("sigmoid", "hsigmoid", "softskim", "heatskim"))
    assert 0 < sig.min() and sig.max() < 1 + 1e-6
    assert hs.min() == 0 and hs.max() == 1
    assert soft.min() < -0.1 and soft.max() > 1.07
    assert heat.min() == 0 and heat.max() == 1
    for kind in ("sigmoid", "hsigmoid", "softskim", "heatskim"):
        assert range_norm(torch.tensor(prior_bias(kind)), kind).item() == pytest.approx(0.1, abs=1e-5)
    assert prior_bias("sigmoid") == pytest.approx(-2.197, abs=1e-3)


@pytest.mark.parametrize("kind", ["softskim", "heatskim"])
def test_range_norm_act_in_model(kind):
    model = build_model(cfg_with(**{"head.range_norm_act": kind}), 2).eval()
    x = torch.randn(1, 3, S, S)
    # at init the map sits at the 0.1 prior
    assert model(x)["map"].mean().item() == pytest.approx(0.1, abs=0.03)
    with torch.no_grad():
        model.head_map.out_conv.weight.zero_()
        model.head_map.out_conv.bias.fill_(-20.0)
    low = model(x)["map"]
    if kind == "softskim":
        assert low.max() < 0  # softskim can go below 0
    else:
        assert low.min() == 0  # heatskim cannot


def test_runs_on_cpu_and_moves_with_to():
    cfg = cfg_with()
    model = build_model(cfg, 2).to(torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in model.parameters())
    model = model.to(torch.float64)
    out = model(torch.randn(1, 3, S, S, dtype=torch.float64))
    assert out["map"].dtype == torch.float64 and out["map"].device.type == "cpu"
    assert model.criterion.s_map.dtype == torch.float64
    if torch.cuda.is_available():
        m = build_model(cfg, 2).to("cuda")
        t = {k: v.cuda() for k, v in hand_targets(cfg, 2, 2).items()}
        losses = m(torch.randn(2, 3, S, S, device="cuda"), t)
        losses["loss"].backward()
        assert losses["loss"].device.type == "cuda"


def test_demo_preset_model():
    cfg = load_preset("demo")
    model = build_model(cfg, 3)
    out = model(torch.randn(2, 3, 128, 128))
    assert out["map"].shape == (2, 3, 32, 32)
    assert 100_000 < count_parameters(model) < 2_000_000
