"""Training targets: vectorised == per-object loop, peak values per encode option, round trips."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nanxi_tune.engine.model import encoding
from nanxi_tune.engine.config import Config, with_updates
from nanxi_tune.engine.model.targets import MIN_SIGMA, build_targets_loop, sparsify
from nanxi_tune.engine.model.targets import build_targets as build_sparse


def dense_heatmap_of(sparse, like):
    heat = torch.zeros_like(like["heatmap"])
    heat.view(-1)[sparse["heat_index"]] = sparse["heat_value"]
    return heat


def build_targets(*a):
    """The vectorised targets with the dense heatmap beside the sparse one the loss reads."""
    return build_sparse(*a, dense=True)

ENCODINGS = list(itertools.product(["subpixel", "centered"], ["wh", "log_wh", "ltrb"]))


def _cfg(size=64, stride=4, offset="subpixel", shape="wh", alpha=0.54):
    return with_updates(Config(), {"preprocess.input_size": size, "neck.out_stride": stride,
                                   "encode.offset": offset, "encode.shape": shape,
                                   "encode.gaussian_alpha": alpha})


def _random_batch(g, B, S, C, max_n=8):
    out = []
    for b in range(B):
        n = 0 if b == 1 else int(torch.randint(1, max_n + 1, (1,), generator=g))  # image 1 is empty
        wh = torch.exp(torch.empty(n, 2).uniform_(math.log(2), math.log(S * 0.8), generator=g))
        xy = torch.rand(n, 2, generator=g) * (S - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        if n >= 3:  # a shared centre cell (a smaller box around the same centre) and a border box
            c = (boxes[0, :2] + boxes[0, 2:]) / 2
            boxes[1] = torch.cat([c - 1.5, c + 1.5])
            boxes[2] = torch.tensor([S - 5.0, S - 3.0, float(S), float(S)])
        if n >= 4:
            boxes[3] = torch.tensor([0.0, 0.0, 3.0, 7.0])
        out.append({"boxes": boxes, "labels": torch.randint(0, C, (n,), generator=g)})
    return out


@pytest.mark.parametrize("offset,shape", ENCODINGS)
@pytest.mark.parametrize("stride", [4, 8])
def test_vectorised_equals_loop(offset, shape, stride):
    cfg = _cfg(64, stride, offset, shape)
    g = torch.Generator().manual_seed(stride * 7 + len(shape))
    for trial in range(3):
        batch = _random_batch(g, 4, 64, 5)
        fast = build_targets(batch, 5, cfg, "cpu")
        slow = build_targets_loop(batch, 5, cfg, "cpu")
        assert set(slow) == {"heatmap", "offset", "shape", "box", "mask", "num_pos"}
        assert set(fast) == set(slow) | {"heat_index", "heat_value", "pos_index", "pos_offset", "pos_shape",
                                         "pos_box"}
        back = sparsify(slow)  # the loop's dense maps read back sparse: the same cells and values
        assert torch.equal(back["pos_index"].sort().values, fast["pos_index"].sort().values)
        assert torch.allclose(dense_heatmap_of(back, slow), slow["heatmap"])
        idx = fast["heat_index"]  # sparse: unique sorted cells, every non-zero cell of the dense map among them
        assert (idx[1:] > idx[:-1]).all() and set((slow["heatmap"].view(-1) > 0).nonzero()[:, 0].tolist()) \
            <= set(idx.tolist())
        for k in slow:
            assert fast[k].shape == slow[k].shape, k
            assert torch.allclose(fast[k], slow[k], atol=1e-6), k
        assert fast["mask"].sum() > 0 and fast["mask"][1].sum() == 0 and fast["heatmap"][1].max() == 0


def test_shapes_and_counts():
    cfg = _cfg(64, 4, shape="ltrb")
    batch = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 12.0], [30.0, 30.0, 60.0, 62.0]]),
              "labels": torch.tensor([0, 2])}, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    t = build_targets(batch, 3, cfg, "cpu")
    assert t["heatmap"].shape == (2, 3, 16, 16)
    assert t["offset"].shape == (2, 2, 16, 16) and t["shape"].shape == (2, 4, 16, 16)
    assert t["box"].shape == (2, 4, 16, 16) and t["mask"].shape == (2, 1, 16, 16)
    assert t["num_pos"].item() == 2.0 and t["num_pos"].dtype == torch.float32
    assert 0 <= t["heatmap"].min() and t["heatmap"].max() == 1.0


def test_empty_batch_has_num_pos_one():
    cfg = _cfg()
    batch = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    for f in (build_targets, build_targets_loop):
        t = f(batch, 3, cfg, "cpu")
        assert t["num_pos"].item() == 1.0 and t["heatmap"].sum() == 0 and t["mask"].sum() == 0


@pytest.mark.parametrize("offset,shape", ENCODINGS)
def test_values_at_the_peak(offset, shape):
    stride = 4
    cfg = _cfg(64, stride, offset, shape)
    box = torch.tensor([[10.0, 21.0, 31.0, 29.0]])  # centre (20.5, 25) px = (5.125, 6.25) cells
    t = build_targets([{"boxes": box, "labels": torch.tensor([1])}], 2, cfg, "cpu")
    cx, cy = 5, 6
    assert t["heatmap"][0, 1, cy, cx] == 1.0 and t["heatmap"][0, 0].max() == 0
    assert t["mask"][0, 0, cy, cx] == 1.0 and t["mask"].sum() == 1
    frac = torch.tensor([0.125, 0.25])
    want_off = frac - 0.5 if offset == "centered" else frac
    assert torch.allclose(t["offset"][0, :, cy, cx], want_off)
    w, h = 21 / stride, 8 / stride
    want_shape = {"wh": [w, h], "log_wh": [math.log(w), math.log(h)],
                  "ltrb": [5.125 - 2.5, 6.25 - 5.25, 7.75 - 5.125, 7.25 - 6.25]}[shape]
    assert torch.allclose(t["shape"][0, :, cy, cx], torch.tensor(want_shape), atol=1e-6)
    assert torch.equal(t["box"][0, :, cy, cx], box[0])
    # only the peak cell carries regression targets
    assert (t["offset"].abs().sum(1) > 0).sum() <= 1 and (t["box"].abs().sum(1) > 0).sum() == 1


@pytest.mark.parametrize("offset,shape", ENCODINGS)
def test_encode_decode_round_trip(offset, shape):
    cfg = _cfg(128, 4, offset, shape)
    g = torch.Generator().manual_seed(1)
    batch = _random_batch(g, 3, 128, 4)
    t = build_targets(batch, 4, cfg, "cpu")
    for b, tgt in enumerate(batch):
        ys, xs = torch.nonzero(t["mask"][b, 0], as_tuple=True)
        cell = torch.stack([xs, ys], 1)
        centre = encoding.decode_offset(cell, t["offset"][b, :, ys, xs].T, offset)
        boxes = encoding.decode_shape(centre, t["shape"][b, :, ys, xs].T, 4, shape)
        assert torch.allclose(boxes, t["box"][b, :, ys, xs].T, atol=1e-3)
        # every decoded box is one of the image's boxes
        for bx in boxes:
            assert (tgt["boxes"] - bx).abs().amax(1).min() < 1e-3
    assert t["mask"].sum() > 5


def test_shared_cell_smaller_box_wins():
    cfg = _cfg()
    big = [8.0, 8.0, 40.0, 40.0]
    small = [22.0, 22.0, 26.0, 26.0]  # same centre (24, 24) px → cell (6, 6)
    for order in ([big, small], [small, big]):
        batch = [{"boxes": torch.tensor(order), "labels": torch.tensor([0, 1])}]
        for f in (build_targets, build_targets_loop):
            t = f(batch, 2, cfg, "cpu")
            assert torch.equal(t["box"][0, :, 6, 6], torch.tensor(small))
            assert t["num_pos"].item() == 1.0
            assert t["heatmap"][0, 0, 6, 6] == 1.0 and t["heatmap"][0, 1, 6, 6] == 1.0


def test_gaussian_is_elliptical_and_same_class_uses_max():
    cfg = _cfg(128, 4, alpha=0.54)
    wide = torch.tensor([[4.0, 56.0, 124.0, 72.0]])  # 30 × 4 cells, centre cell (16, 16)
    t = build_targets([{"boxes": wide, "labels": torch.tensor([0])}], 1, cfg, "cpu")["heatmap"][0, 0]
    sx, sy = 0.54 * 30 / 6, max(0.54 * 4 / 6, MIN_SIGMA)
    assert torch.isclose(t[16, 19], torch.tensor(math.exp(-9 / (2 * sx * sx))), atol=1e-6)
    assert torch.isclose(t[17, 16], torch.tensor(math.exp(-1 / (2 * sy * sy))), atol=1e-6)
    assert t[16, 19] > t[19, 16]
    a = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    b = torch.tensor([[30.0, 28.0, 70.0, 60.0]])
    one = lambda boxes: build_targets([{"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.long)}],
                                      1, cfg, "cpu")["heatmap"]
    both = one(torch.cat([a, b]))
    assert torch.equal(both, torch.maximum(one(a), one(b)))
    assert (one(a) > 0).sum() > 9 and ((one(a) > 0) & (one(b) > 0)).any()


def test_targets_move_to_device_and_keep_inputs():
    cfg = _cfg()
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    batch = [{"boxes": boxes.clone(), "labels": torch.tensor([0])}]
    t = build_targets(batch, 1, cfg, torch.device("cpu"))
    assert all(v.device.type == "cpu" for v in t.values())
    assert torch.equal(batch[0]["boxes"], boxes)


def test_gaussian_samples_cover_each_window_once_smaller_object_first():
    """loss.shape_samples = gaussian (TTFNet): every window cell is a sample of one object, the smaller one where
    windows meet; each object's weights sum to 1; its centre cell is one of its samples."""
    cfg = with_updates(_cfg(128, 4), {"loss.shape_samples": "gaussian"})
    big, small = [8.0, 8.0, 120.0, 100.0], [40.0, 40.0, 56.0, 52.0]  # small sits inside big's window
    t = build_sparse([{"boxes": torch.tensor([big, small]), "labels": torch.tensor([0, 1])}], 2, cfg, "cpu")
    assert len(torch.unique(t["reg_index"])) == len(t["reg_index"])
    heat_cells = torch.unique(t["heat_index"] % (32 * 32))
    assert torch.equal(torch.sort(t["reg_index"]).values, heat_cells)  # one image: the union of the windows
    for box in (big, small):
        mine = (t["reg_box"] == torch.tensor(box)).all(1)
        assert t["reg_weight"][mine].sum().item() == pytest.approx(1.0, abs=1e-5)
        centre = ((box[0] + box[2]) / 8, (box[1] + box[3]) / 8)
        assert torch.allclose(t["reg_centre"][mine], torch.tensor(centre))
        cell = int(centre[1]) * 32 + int(centre[0])
        assert cell in t["reg_index"][mine].tolist()
    small_cells = set(t["reg_index"][(t["reg_box"] == torch.tensor(small)).all(1)].tolist())
    small_window = {int(i) for i in t["heat_index"] if i // (32 * 32) == 1}  # class 1 is the small one's
    assert small_cells == {i % (32 * 32) for i in small_window}
    # the centre-only targets are unchanged, and carry no reg_* samples
    plain = build_sparse([{"boxes": torch.tensor([big, small]), "labels": torch.tensor([0, 1])}], 2, _cfg(128, 4), "cpu")
    assert "reg_index" not in plain and torch.equal(plain["pos_index"], t["pos_index"])
