"""Every option of the cheat-sheet changes what it should: one row per key, two values, one probe.

A probe computes the cheapest observable the key is meant to change (a sample, the targets, the model,
the loss, the lr schedule, the decoded boxes, the eval set…). Each row asserts the two values give
different observations — and, where the direction is known, the right one.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.diagnosis.watcher import run_rules
from nanxi_tune.engine.data.dataset import eval_dataset, resolve, train_dataset
from nanxi_tune.engine.data.loader import make_loader
from nanxi_tune.engine.model.decode import decode
from nanxi_tune.engine.model.detector import build_model, count_parameters
from nanxi_tune.engine.model.targets import build_targets
from nanxi_tune.engine.train.lr_plan import lr_at
from nanxi_tune.engine.run.device import pick_device
from nanxi_tune.engine.train.optim import ema_avg_fn
from nanxi_tune.engine.train.trainer import Trainer

BASE = {"preprocess.input_size": 64, "data.synthetic_train": 24, "data.synthetic_val": 12, "data.batch_size": 4,
        "backbone.width": 8, "head.channels": 16}


def cfg_with(**updates) -> C.Config:
    return C.with_updates(C.load_preset("demo"), BASE | {k.replace("__", "."): v for k, v in updates.items()})


def sample(cfg, key=(0, 3), train=True):
    ds = train_dataset(cfg, 0) if train else eval_dataset(cfg, 0)
    return ds[key]


def targets(cfg):
    images, tgts = zip(*(sample(cfg, (0, i)) for i in range(4)))
    return build_targets(list(tgts), 3, cfg, torch.device("cpu"), dense=True)


def model_out(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, 3)(torch.randn(2, 3, cfg.preprocess.input_size, cfg.preprocess.input_size))


def losses(cfg):
    torch.manual_seed(0)
    images, tgts = zip(*(sample(cfg, (0, i)) for i in range(4)))
    model = build_model(cfg, 3)
    return model(torch.stack(images), build_targets(list(tgts), 3, cfg, torch.device("cpu")))


def fixed_outputs(cfg):
    g = torch.Generator().manual_seed(0)
    H = cfg.preprocess.input_size // cfg.neck.out_stride
    return {"map": torch.rand(2, 3, H, H, generator=g), "offset": torch.rand(2, 2, H, H, generator=g),
            "shape": torch.rand(2, 2, H, H, generator=g) * 6 + 6}  # big boxes overlap: NMS has work


def n_dets(cfg):
    return sum(len(d["boxes"]) for d in decode(fixed_outputs(cfg), cfg))


def lrs(cfg, total=100):
    return [lr_at(cfg, s, total) for s in range(total)]


def plan_text(cfg):
    from nanxi_tune.engine.train.lr_plan import LrPlan

    return LrPlan(cfg, 10).describe()


def seeded_init(cfg):
    torch.manual_seed(cfg.train.seed)  # as the trainer seeds before building the model
    return build_model(cfg, 3).backbone.stem[0].weight.sum().item()


def trainer_setup(cfg, tmp_path):
    t = Trainer(cfg, tmp_path / "t")
    t.run_dir.mkdir(parents=True, exist_ok=True)
    t._setup()
    return t


# key, value a, value b, probe(cfg) -> observation; equal observations fail the row
ROWS = [
    ("preprocess.input_size", 64, 96, lambda c: sample(c)[0].shape),
    ("preprocess.resize", "same_padding", "letterbox", lambda c: sample(c, 3, train=False)[1]["boxes"].tolist()),
    ("normalize.mean", [0.5, 0.5, 0.5], [0.1, 0.2, 0.3], lambda c: sample(c)[0].mean().item()),
    ("normalize.std", [0.2, 0.2, 0.2], [0.5, 0.5, 0.5], lambda c: sample(c)[0].std().item()),
    ("encode.offset", "subpixel", "centered", lambda c: targets(c)["offset"].sum().item()),
    ("encode.shape", "wh", "ltrb", lambda c: targets(c)["shape"].shape),
    ("encode.shape", "wh", "log_wh", lambda c: targets(c)["shape"].sum().item()),
    ("encode.gaussian_alpha", 0.54, 1.5, lambda c: targets(c)["heatmap"].sum().item()),
    ("data.synthetic_train", 24, 28, lambda c: len(train_dataset(c, 0))),
    ("data.synthetic_seed", 0, 1, lambda c: sample(c)[1]["boxes"].tolist()),
    ("data.val", "synthetic", "TINY_COCO", lambda c: len(eval_dataset(c, 0))),
    ("data.batch_size", 4, 8, lambda c: c.lr),
    ("data.workers", 0, 2, lambda c: make_loader(train_dataset(c, 0), range(4), 2, c.data.workers, "cpu",
                                                   False).num_workers),
    ("data.cache_mb", 0, 64, lambda c: (lambda ds: (ds[0], len(ds._cache))[1])(train_dataset(c, 0))),
    ("principles.act", "relu", "mish", lambda c: model_out(c)["map"].sum().item()),
    ("principles.weights_init", "trunc_normal", "kaiming",
     lambda c: build_model(c, 3).backbone.stem[0].weight.std().item()),
    ("backbone.name", "nanxi", "regnet_y_400mf", lambda c: count_parameters(build_model(c, 3))),
    ("backbone.width", 8, 16, lambda c: count_parameters(build_model(c, 3))),
    ("backbone.depth", 1, 2, lambda c: count_parameters(build_model(c, 3))),
    ("backbone.input_channels_bn", False, True, lambda c: type(build_model(c, 3).input_bn).__name__),
    ("neck.spp_kernels", [5, 9, 13], [3, 5], lambda c: build_model(c, 3).neck.spp.kernels),
    ("neck.out_stride", 4, 8, lambda c: model_out(c)["map"].shape),
    ("head.channels", 16, 32, lambda c: count_parameters(build_model(c, 3).head_map)),
    ("head.depth", 1, 2, lambda c: count_parameters(build_model(c, 3).head_shape)),
    ("head.norm", "none", "bn", lambda c: sum(isinstance(m, torch.nn.BatchNorm2d)
                                             for m in build_model(c, 3).head_map.modules())),
    ("head.range_norm_act", "sigmoid", "softskim", lambda c: model_out(c)["map"].min().item()),
    ("loss.loss_scale", 1.0, 2.0, lambda c: losses(c)["loss"].item()),
    ("loss.s_map", 0.0, 1.0, lambda c: losses(c)["loss"].item()),
    ("loss.s_offset", 0.0, 1.0, lambda c: losses(c)["loss"].item()),
    ("loss.s_shape", 0.0, 1.0, lambda c: losses(c)["loss"].item()),
    ("loss.learn_log_weights", True, False, lambda c: build_model(c, 3).criterion.s_map.requires_grad),
    ("loss.shape_loss", "l1", "giou", lambda c: losses(c)["loss_shape"].item()),
    ("loss.focal_alpha", 2.0, 3.0, lambda c: losses(c)["loss_map"].item()),
    ("train.base_lr", 0.001, 0.003, lambda c: lrs(c)[0]),
    ("train.base_batch_size", 16, 32, lambda c: lrs(c)[0]),
    ("train.schedule", "piecewise", "constant", lambda c: lrs(c)[-1]),
    ("train.milestones", [0.5], [0.9], lambda c: lrs(c)[60]),
    ("train.gamma", 0.1, 0.5, lambda c: lrs(c)[-1]),
    ("train.warmup_steps", 0, 10, lambda c: lrs(c)[0]),
    ("train.time_budget_min", 0.0, 1.0, plan_text),
    ("train.seed", 0, 1, lambda c: seeded_init(c)),
    ("postprocess.nms", True, False, n_dets),
    ("postprocess.nms_iou", 0.3, 0.9, n_dets),
    ("postprocess.score_threshold", 0.01, 0.5, n_dets),
    ("postprocess.top_k", 100, 10, n_dets),
    ("postprocess.pool_kernel", 3, 7, n_dets),
    ("augment.min_iou_random_crop", True, False, lambda c: [sample(c, (0, i))[1]["boxes"].tolist() for i in range(6)]),
    ("augment.min_iou_set", [0.1], [0.9], lambda c: [sample(c, (0, i))[1]["boxes"].tolist() for i in range(6)]),
    ("augment.random_flip", 0.0, 1.0, lambda c: sample(c)[1]["boxes"].tolist()),
    ("eval.val_data_mode", "full", "rsr", lambda c: len(eval_dataset(c, 0))),
    ("eval.qmv", 100, 5, lambda c: len(eval_dataset(c, 0))),
    ("eval.rsr", 3000, 7, lambda c: len(eval_dataset(c, 0))),
]


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> str:
    """A second, real COCO folder (5 val images) to point data.val at."""
    import json

    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    images, anns = [], []
    for i in range(1, 6):
        Image.new("RGB", (50, 40), (i * 40, 80, 120)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 50, "height": 40})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 15], "area": 300, "iscrowd": 0})
    (root / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "blob"}]}))
    return str(root)


@pytest.mark.parametrize("key,a,b,probe", ROWS, ids=[f"{r[0]}={r[2]}" for r in ROWS])
def test_option_changes_what_it_should(key, a, b, probe, tiny_coco):
    extra = {"eval.val_data_mode": "qmv"} if key == "eval.qmv" else {}
    extra |= {"eval.val_data_mode": "rsr"} if key == "eval.rsr" else {}
    b = tiny_coco if b == "TINY_COCO" else b
    obs_a = probe(C.with_updates(cfg_with(), {key: a} | extra))
    obs_b = probe(C.with_updates(cfg_with(), {key: b} | extra))
    assert obs_a != obs_b, f"{key}: {a!r} and {b!r} gave the same {obs_a!r}"


def test_directions():
    """Where the notes say which way a knob goes, it goes that way."""
    c = cfg_with()
    assert cfg_with(data__batch_size=8).lr == pytest.approx(2 * c.lr)  # linear scaling
    assert lrs(cfg_with(train__warmup_steps=10))[0] < lrs(c)[0]
    assert lrs(c)[-1] < lrs(c)[0]  # piecewise decay decays
    assert model_out(cfg_with(head__range_norm_act="heatskim"))["map"].min() >= 0
    assert n_dets(cfg_with(postprocess__score_threshold=0.5)) < n_dets(c)
    assert n_dets(cfg_with(postprocess__top_k=10)) <= 2 * 10
    assert losses(cfg_with(loss__loss_scale=2.0))["loss"].item() == pytest.approx(2 * losses(c)["loss"].item(),
                                                                                   rel=1e-5)
    assert len(eval_dataset(cfg_with(eval__val_data_mode="qmv", eval__qmv=5), 0)) == 5
    assert len(eval_dataset(cfg_with(eval__val_data_mode="rsr", eval__rsr=7), 0)) == 7


def test_optimiser_and_ema_options(tmp_path):
    t = trainer_setup(cfg_with(train__weight_decay=0.3, train__beta1=0.8, train__beta2=0.95), tmp_path)
    group = t.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.3 and group["betas"] == (0.8, 0.95)
    assert t.optimizer.param_groups[1]["weight_decay"] == 0.0  # biases, norms, s_* are not decayed
    assert t.total_steps == t.cfg.train.epochs * 6
    assert trainer_setup(cfg_with(train__epochs=2), tmp_path / "e").total_steps == 12
    assert trainer_setup(cfg_with(train__max_steps=5), tmp_path / "m").total_steps == 5
    for decay, expected in ((0.99, 0.01), (0.5, 0.5)):
        e, p = [torch.zeros(3)], [torch.ones(3)]
        ema_avg_fn(decay, ramp=False)(e, p, torch.tensor(1))
        assert e[0][0].item() == pytest.approx(expected)
    e = [torch.zeros(1)]
    ema_avg_fn(0.99, ramp=True)(e, [torch.ones(1)], torch.tensor(0))
    assert e[0].item() == pytest.approx(0.9)  # the ramp starts fast: 1 − (1 + 0) / (10 + 0)


def test_device_option():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        from nanxi_tune.engine.run.stop import StopRun

        assert pick_device("auto").type == "cpu"
        with pytest.raises(StopRun, match="CUDA is not available"):
            pick_device("cuda")


def test_budget_option_moves_the_over_time_rule():
    cfg = cfg_with(train__epochs=100000)
    hist = [{"split": "train", "step": s, "epoch": 0, "time": 1000.0 + 2.0 * s, "loss": 1.0, "loss_map": 0.5,
             "loss_offset": 0.2, "loss_shape": 0.3, "images_per_s": 2.0, "total_steps": 600000, "grad_norm": 1.0,
             "lr": 0.001} for s in range(1, 60)]
    fired = run_rules(C.with_updates(cfg, {"budget.max_days": 4}), hist)
    calm = run_rules(C.with_updates(cfg, {"budget.max_days": 365}), hist)
    assert "over-time-budget" in {f.rule for f in fired}
    assert "over-time-budget" not in {f.rule for f in calm}


def test_data_paths_resolve_to_real_coco(tiny_coco):
    images, ann = resolve(tiny_coco, "val", cfg_with())
    assert Path(ann).name == "instances_val.json" and Path(images).name == "images"
    assert math.isfinite(len(eval_dataset(cfg_with(data__val=tiny_coco, eval__val_data_mode="full"), 0)))
