"""Mean/std after augmentation: the dataset's own train-mode samples, matched against a direct computation."""

import numpy as np
import pytest
import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.workflows import normalization as ST
from nanxi_tune.engine.data.dataset import train_dataset
from nanxi_tune.engine.data.loader import sample_seed
from nanxi_tune.engine.data.loader import EpochSampler
from nanxi_tune.engine.diagnosis.rules import RULES
from conftest import tiny as base_tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**updates):
    extra = {"data.synthetic_train": 16}
    return base_tiny(**(extra | updates))


def direct(cfg, samples):
    """Augment the same (epoch, index) keys by hand with the same seeds; pixel stats over the uint8 images."""
    ds = train_dataset(cfg, cfg.train.seed)
    keys, epoch = [], 0
    while len(keys) < samples:
        keys += list(EpochSampler(len(ds), cfg.train.seed, epoch))
        epoch += 1
    pixels = []
    for epoch, index in keys[:samples]:
        image_id = ds.ids[index]
        img = ds._read(image_id)
        h, w = img.shape[-2:]
        b, lab = ds._targets(image_id)
        boxes = torch.from_numpy(b.copy())
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(cfg.train.seed, epoch, index))
            img, _, _ = ds._augment(img, boxes, torch.from_numpy(lab.copy()))
        pixels.append(img.reshape(3, -1).numpy().astype(np.float64) / 255.0)
    px = np.concatenate(pixels, axis=1)
    return px.mean(1), px.std(1), px.shape[1]


def test_matches_direct_computation_over_the_same_augmented_samples():
    cfg = tiny()
    seen = []
    st = ST.compute(cfg, samples=24, progress=lambda d, n: seen.append((d, n)))  # 24 > 16: crosses into epoch 1
    mean, std, count = direct(cfg, 24)
    assert st.samples == 24 and st.pixels == count
    np.testing.assert_allclose(st.mean, mean, atol=1e-6)
    np.testing.assert_allclose(st.std, std, atol=1e-6)
    assert seen[-1] == (24, 24) and len(seen) == 24
    # augmentation changes the statistics (crops differ from the raw images)
    raw = ST.compute(C.with_updates(cfg, {"augment.min_iou_random_crop": False, "augment.random_flip": 0.0}), 24)
    assert raw.pixels != st.pixels


def test_letterbox_padding_is_left_out():
    cfg = tiny(**{"preprocess.resize": "letterbox", "augment.random_flip": 0.0})
    st = ST.compute(cfg, samples=6)
    assert st.pixels < 6 * 64 * 64 or st.pixels == 6 * 64 * 64  # crops are scaled up; pads are never counted
    for image, mask in ST.augmented_pixels(cfg, 3):
        assert image.min() >= 0 and image.max() <= 1
        if not mask.all():
            assert image[:, ~mask].abs().max() == 0


def test_apply_marks_computed_and_quiets_the_stale_rule():
    cfg = tiny()
    assert RULES["stale-normalization"].fn(cfg, []) is not None
    st = ST.compute(cfg, samples=4)
    new = ST.apply(cfg, st)
    assert new.normalize.source == "computed"
    assert list(new.normalize.mean) == [round(m, 4) for m in st.mean]
    assert RULES["stale-normalization"].fn(new, []) is None
    assert C.with_updates(cfg, C.parse_sets(ST.set_args(st).split())).normalize == new.normalize
