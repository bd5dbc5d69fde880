"""train.precision: the rule that picks bfloat16 (engine.run.device.compute_dtype), and the detector's autocast —
its convolutions in bfloat16, everything it returns (outputs, losses) in float32."""

import pytest
import torch
from torch import nn

from nanxi_tune.engine.config import ConfigError, with_updates
from nanxi_tune.engine.model.detector import build_model
from nanxi_tune.engine.run import device as D

from test_model import cfg_with, hand_targets


@pytest.fixture
def fresh_rule():
    D.compute_dtype.cache_clear()
    yield
    D.compute_dtype.cache_clear()


@pytest.mark.parametrize("native", [True, False])
def test_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch, fresh_rule, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert D.compute_dtype("auto", "cpu") is (torch.bfloat16 if native else None)
    assert D.compute_dtype("bf16", "cpu") is torch.bfloat16  # asked for: honoured, even emulated
    assert D.compute_dtype("fp32", "cpu") is None
    assert D.compute_dtype("auto", "mps") is None  # no autocast there in this product


def test_a_wrong_precision_names_the_key():
    with pytest.raises(ConfigError, match="train.precision"):
        with_updates(cfg_with(), {"train.precision": "fp16"})


def conv_dtypes(model: nn.Module, x: torch.Tensor, targets=None) -> tuple[set, dict]:
    seen: set = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype)) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    out = model(x, targets)
    for h in hooks:
        h.remove()
    return seen, out


@pytest.mark.parametrize("precision, inner", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_the_detector_computes_in_its_precision_and_returns_float32(precision, inner):
    cfg = cfg_with(**{"train.precision": precision})
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    x = torch.randn(2, 3, 64, 64)
    seen, out = conv_dtypes(model.eval(), x)
    assert seen == {inner}
    assert {k: v.dtype for k, v in out.items()} == dict.fromkeys(out, torch.float32)
    _, losses = conv_dtypes(model.train(), x, hand_targets(cfg, 2, 3))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())  # weights stay float32


def test_bf16_and_fp32_losses_agree_to_bf16_rounding():
    torch.manual_seed(0)
    fp32 = build_model(cfg_with(**{"train.precision": "fp32"}), 3)
    bf16 = build_model(cfg_with(**{"train.precision": "bf16"}), 3)
    bf16.load_state_dict(fp32.state_dict())
    x, t = torch.randn(2, 3, 64, 64), hand_targets(cfg_with(), 2, 3)
    a, b = fp32(x, t), bf16(x, t)
    for k in ("loss_map", "loss_offset", "loss_shape"):
        assert b[k].item() == pytest.approx(a[k].item(), rel=5e-2), k
        assert b[k].item() != a[k].item(), k  # it did compute in another precision
