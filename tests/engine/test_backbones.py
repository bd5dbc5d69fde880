"""backbone.name / backbone.weights: every torchvision trunk builds and trains a step at toy size; weights
files load, and a missing or mismatched one is refused naming the file and the layer."""

import copy

import pytest
import torch

from nanxi_tune.engine import config as C
from nanxi_tune.engine.model.backbones import TORCHVISION
from nanxi_tune.engine.model.state_file import WeightsError
from nanxi_tune.engine.model.detector import build_model
from nanxi_tune.engine.model.targets import build_targets
from nanxi_tune.engine.train.optim import param_groups

S = 64
# torch_default: trunc_normal's sampler costs ~0.1 µs a parameter, seconds on a ResNet
TOY = {"preprocess.input_size": S, "head.channels": 8, "head.depth": 1, "backbone.width": 8,
       "principles.weights_init": "torch_default"}


def cfg_of(**upd) -> C.Config:
    return C.with_updates(C.Config(), TOY | {k.replace("__", "."): v for k, v in upd.items()})


def toy_batch():
    boxes = [torch.tensor([[8.0, 10.0, 40.0, 44.0]]), torch.tensor([[20.0, 4.0, 30.0, 18.0], [2, 30, 60, 62]])]
    labels = [torch.tensor([0]), torch.tensor([1, 2])]
    return torch.randn(2, 3, S, S), [{"boxes": b, "labels": l} for b, l in zip(boxes, labels)]


@pytest.mark.parametrize("name", TORCHVISION)
def test_builds_and_trains_one_step(name, one_thread):
    torch.manual_seed(0)
    cfg = cfg_of(backbone__name=name)
    model = build_model(cfg, 3)
    strides = sorted(model.backbone.channels)
    assert strides == [4, 8, 16, 32] and all(c > 0 for c in model.backbone.channels.values())
    images, targets = toy_batch()
    feats = model.backbone(images)
    assert {s: f.shape[1] for s, f in feats.items()} == model.backbone.channels  # read from the model
    assert {s: f.shape[-1] for s, f in feats.items()} == {s: S // s for s in strides}
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    losses = model(images, build_targets(targets, 3, cfg, torch.device("cpu")))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.backbone.parameters()))
    ema = copy.deepcopy(model)  # AveragedModel deep-copies: the trunk's run order must follow the copy
    own = {id(m) for m in ema.backbone.net.modules()}
    assert all(id(m) in own for m in ema.backbone._seq)


def test_default_is_the_notes_backbone():
    cfg = C.Config()
    assert cfg.backbone.name == "nanxi" and cfg.backbone.weights == ""
    assert type(build_model(cfg_of(principles__weights_init="trunc_normal"), 3).backbone).__name__ == "Backbone"


def test_weights_file_loads(tmp_path):
    torch.manual_seed(1)
    src = build_model(cfg_of(backbone__name="regnet_y_400mf"), 3).backbone.net
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 440)  # a classifier in the file is ignored
    path = tmp_path / "regnet.pth"
    torch.save(state, path)
    model = build_model(cfg_of(backbone__name="regnet_y_400mf", backbone__weights=str(path)), 3)
    assert model.weights_source == str(path)
    for k, v in model.backbone.net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weights_from_a_run_checkpoint_of_the_notes_backbone(tmp_path):
    src = build_model(cfg_of(), 3)
    path = tmp_path / "last.pt"
    torch.save({"model": src.state_dict(), "step": 3}, path)
    model = build_model(cfg_of(backbone__weights=str(path)), 3)
    assert all(torch.equal(a, b) for a, b in zip(model.backbone.state_dict().values(),
                                                 src.backbone.state_dict().values()))


def test_mismatched_weights_name_the_file_and_layer(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(build_model(cfg_of(backbone__name="resnet18"), 3).backbone.net.state_dict(), path)
    with pytest.raises(WeightsError) as err:
        build_model(cfg_of(backbone__name="resnet34", backbone__weights=str(path)), 3)
    msg = str(err.value)
    assert str(path) in msg and "'layer1.2.conv1.weight'" in msg and "backbone.name" in msg

    state = torch.load(path, weights_only=True)
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"first mismatching layer 'conv1.weight' \(shape \(64, 3, 5, 5\)"):
        build_model(cfg_of(backbone__name="resnet18", backbone__weights=str(path)), 3)


def test_weights_with_nan_name_the_file_and_layer(tmp_path):
    """Backbone weights full of NaN used to train into a NaN loss diagnosed as "lr too large" (issue 22)."""
    path = tmp_path / "r18.pt"
    state = build_model(cfg_of(backbone__name="resnet18"), 3).backbone.net.state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        build_model(cfg_of(backbone__name="resnet18", backbone__weights=str(path)), 3)
    assert str(path) in str(err.value) and "'layer2.0.conv1.weight'" in str(err.value) and "not finite" in str(err.value)


def test_missing_or_unreadable_weights_file(tmp_path):
    with pytest.raises(WeightsError, match=r"nope\.pth: backbone\.weights file not found"):
        build_model(cfg_of(backbone__name="resnet18", backbone__weights=str(tmp_path / "nope.pth")), 3)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a tensor file")
    with pytest.raises(WeightsError, match=r"bad\.pt: cannot read a state dict"):
        build_model(cfg_of(backbone__weights=str(bad)), 3)
    with pytest.raises(WeightsError, match="no such torchvision weights"):
        build_model(cfg_of(backbone__name="resnet18", backbone__weights="IMAGENET9K_V9"), 3)
    with pytest.raises(WeightsError, match="only for torchvision backbones"):
        build_model(cfg_of(backbone__weights="IMAGENET1K_V1"), 3)


def test_resume_build_skips_the_weights_file(tmp_path):
    cfg = cfg_of(backbone__weights=str(tmp_path / "gone.pt"))
    assert build_model(cfg, 3, load_weights=False).weights_source == ""


def test_unknown_backbone_name_is_refused():
    with pytest.raises(C.ConfigError, match="backbone.name"):
        C.with_updates(C.Config(), {"backbone.name": "resnet19"})


def test_trainer_runs_and_resumes_a_torchvision_backbone(tmp_path, one_thread):
    from conftest import tiny

    from nanxi_tune.engine.train.trainer import Trainer

    cfg = tiny(**{"backbone.name": "mobilenet_v3_large", "train.epochs": 1, "data.synthetic_train": 16})
    assert Trainer(cfg, tmp_path / "run", max_steps=1).run() == "stopped"
    assert Trainer.resume(tmp_path / "run").run() == "finished"


def test_a_run_with_a_missing_weights_file_fails_naming_it_and_resumes_without_it(tmp_path, one_thread):
    from nanxi_tune.engine.run import rundir
    from nanxi_tune.engine.train.trainer import Trainer
    from conftest import tiny

    gone = tmp_path / "imagenet.pt"
    run = tmp_path / "r"
    assert Trainer(tiny(**{"backbone.weights": str(gone)}), run).run() == "failed"
    err = next(e for e in rundir.read_events(run) if e.get("kind") == "error")
    assert str(gone) in err["error"] and "Traceback" not in err["error"]
    assert not any(e.get("kind") == "traceback" for e in rundir.read_events(run))
    weights = tmp_path / "w.pt"
    torch.save(build_model(tiny(), 3).backbone.state_dict(), weights)
    run2 = tmp_path / "r2"
    assert Trainer(tiny(**{"backbone.weights": str(weights)}), run2, max_steps=1).run() == "stopped"
    weights.unlink()  # a resumed run reads its weights from the checkpoint
    assert Trainer.resume(run2, max_steps=2).run() == "stopped"
