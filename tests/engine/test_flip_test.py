"""postprocess.flip_test (engine.model.flip_test): the merged outputs of an image and of its mirror are each
other's mirror exactly — map, shape (ltrb with left and right swapped) — and the key is off by default."""

import pytest
import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.model.detector import build_model
from nanxi_tune.engine.model import flip_test


@pytest.mark.parametrize("shape", ["wh", "ltrb"])
def test_flip_test_outputs_of_an_image_and_its_mirror_mirror_each_other(shape):
    torch.manual_seed(0)
    cfg = C.with_updates(C.load_preset("demo"), {"preprocess.input_size": 64, "backbone.width": 8,
                                                  "head.channels": 16, "encode.shape": shape,
                                                  "train.precision": "fp32", "postprocess.flip_test": True})
    model = build_model(cfg, 3).eval()
    with torch.no_grad():  # a fresh head's map is its constant prior: weights that see the image
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        a, b = flip_test.infer(model, x, cfg), flip_test.infer(model, x.flip(-1), cfg)
        plain = model(x)
    back = b["shape"].flip(-1)
    if shape == "ltrb":  # the mirror's right edge is the image's left edge
        back = torch.stack([back[:, 2], back[:, 1], back[:, 0], back[:, 3]], dim=1)
    assert torch.allclose(a["map"], b["map"].flip(-1), atol=1e-6)
    assert torch.allclose(a["shape"], back, atol=1e-5)
    assert torch.equal(a["offset"], plain["offset"])  # the image's own offset
    assert not torch.allclose(a["map"], plain["map"])  # the mirror did change the map
    off = C.with_updates(cfg, {"postprocess.flip_test": False})
    with torch.inference_mode():
        assert torch.equal(flip_test.infer(model, x, off)["map"], plain["map"])
    assert C.Config().postprocess.flip_test is False
