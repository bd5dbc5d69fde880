"""postprocess.shape_vote (邻格投票): a peak's shape is the heat^p-weighted mean of the shapes at the 3×3 cells
around it — its class's heat, cells outside the map weigh nothing; p = 0 keeps the peak's own shape."""

import pytest
import torch

from conftest import tiny
from nanxi_tune.engine import config as C
from nanxi_tune.engine.config.edits import live_keys
from nanxi_tune.engine.model.decode import decode


def _outputs(peak=(3, 3), neighbour=(3, 4)):
    heat = torch.zeros(1, 2, 8, 8)
    heat[0, 0, peak[0], peak[1]], heat[0, 0, neighbour[0], neighbour[1]] = 0.8, 0.4
    heat[0, 1, peak[0] + 1, peak[1]] = 0.7  # another class beside the peak: no say in its shape
    shape = torch.full((1, 2, 8, 8), 100.0)  # cells with no heat weigh 0, whatever they say
    shape[0, :, peak[0], peak[1]], shape[0, :, neighbour[0], neighbour[1]] = 2.0, 4.0
    return {"map": heat, "offset": torch.full((1, 2, 8, 8), 0.5), "shape": shape}


def _width(out, p: float) -> float:
    cfg = C.with_updates(tiny(), {"neck.out_stride": 8, "postprocess.shape_vote": p, "postprocess.nms": False,
                                  "postprocess.pool_kernel": 3})
    det = decode(out, cfg)[0]
    first = det["labels"] == 0
    return (det["boxes"][first][0, 2] - det["boxes"][first][0, 0]).item() / 8


@pytest.mark.parametrize("p, width", [(0.0, 2.0), (1.0, (0.8 * 2 + 0.4 * 4) / 1.2),
                                      (2.0, (0.64 * 2 + 0.16 * 4) / 0.8)])
def test_the_neighbours_vote_on_the_peaks_shape_by_their_heat(p, width):
    assert _width(_outputs(), p) == pytest.approx(width)


def test_a_peak_at_the_maps_edge_votes_with_the_cells_inside_only():
    out = _outputs(peak=(0, 7), neighbour=(0, 6))
    assert _width(out, 1.0) == pytest.approx((0.8 * 2 + 0.4 * 4) / 1.2)


def test_the_vote_is_off_by_default_and_the_key_is_live():
    assert C.Config().postprocess.shape_vote == 0.0
    assert "postprocess.shape_vote" in live_keys()
    with pytest.raises(C.ConfigError, match="shape_vote"):
        C.with_updates(C.Config(), {"postprocess.shape_vote": -1.0})


def test_the_export_sidecar_says_how_to_vote():
    from nanxi_tune.engine.inference.export import sidecar

    off = sidecar(tiny(), ["a"], [1], "onnx", "last")["decode"]
    on = sidecar(tiny(**{"postprocess.shape_vote": 4.0}), ["a"], [1], "onnx", "last")["decode"]
    assert off["shape_vote"] == 0.0 and not any("3×3" in s for s in off["steps"])
    assert on["shape_vote"] == 4.0 and any(s.startswith("shape at a peak") and "map^4" in s for s in on["steps"])
