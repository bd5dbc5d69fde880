"""train.init_from: a run starts from every layer of another run's detector (its EMA weights, the ones its
evaluations scored); a file that does not fit is refused naming the layer and the fix."""

import pytest
import torch

from nanxi_tune.engine.model.state_file import WeightsError
from nanxi_tune.engine.model.detector import build_model
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.train.trainer import Trainer
from tests.conftest import tiny

FAST = {"train.epochs": 1, "data.synthetic_train": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("warm") / "run"
    assert Trainer(tiny(**FAST), run, max_steps=2).run() in ("stopped", "finished")
    assert (run / "checkpoints" / "last.pt").is_file()
    return run


def test_a_run_folder_starts_every_layer_from_its_ema_weights(trained):
    ema = torch.load(trained / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["ema"]
    model = build_model(tiny(**FAST, **{"train.init_from": str(trained)}), 3)
    state = model.state_dict()
    assert model.weights_source == str(trained / "checkpoints" / "last.pt")
    for k, v in state.items():
        assert torch.equal(v, ema["module." + k]), k
    fresh = build_model(tiny(**FAST), 3).state_dict()
    assert any(not torch.equal(fresh[k], state[k]) for k in state if state[k].is_floating_point())


def test_a_plain_state_dict_file_works_too_and_a_resume_skips_it(tmp_path):
    path = tmp_path / "detector.pt"
    torch.save(build_model(tiny(), 3).state_dict(), path)
    assert build_model(tiny(**{"train.init_from": str(path)}), 3).weights_source == str(path)
    resumed = build_model(tiny(**{"train.init_from": str(tmp_path / "gone.pt")}), 3, load_weights=False)
    assert resumed.weights_source == ""  # a resumed run's weights come from its own checkpoint


def test_a_detector_that_does_not_fit_is_refused_naming_the_first_layer_and_the_fix(trained, tmp_path):
    wider = tiny(**FAST, **{"train.init_from": str(trained), "backbone.width": 2 * tiny().backbone.width})
    with pytest.raises(WeightsError) as err:
        build_model(wider, 3)
    text = str(err.value)
    assert "does not fit this config's detector" in text and "first mismatching layer" in text
    assert "train.init_from" in text and "same backbone, neck, head and classes" in text
    with pytest.raises(WeightsError, match=r"nope\.pt: train\.init_from file not found"):
        build_model(tiny(**{"train.init_from": str(tmp_path / "nope.pt")}), 3)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a tensor file")
    with pytest.raises(WeightsError, match=r"bad\.pt: cannot read a state dict"):
        build_model(tiny(**{"train.init_from": str(bad)}), 3)
    nan = tmp_path / "nan.pt"
    state = build_model(tiny(), 3).state_dict()
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(state, nan)
    with pytest.raises(WeightsError, match="not finite"):
        build_model(tiny(**{"train.init_from": str(nan)}), 3)


def test_a_run_started_from_another_says_so_and_fails_cleanly_when_the_file_is_gone(trained, tmp_path, one_thread):
    run = tmp_path / "child"
    assert Trainer(tiny(**FAST, **{"train.init_from": str(trained)}), run, max_steps=1).run() == "stopped"
    logs = [e.get("message", "") for e in rundir.read_events(run) if e.get("kind") == "log"]
    assert any("train.init_from: every layer starts from" in m for m in logs)
    gone = tmp_path / "failed"
    assert Trainer(tiny(**FAST, **{"train.init_from": str(tmp_path / "x.pt")}), gone).run() == "failed"
    err = next(e for e in rundir.read_events(gone) if e.get("kind") == "error")
    assert "x.pt: train.init_from file not found" in err["error"] and "Traceback" not in err["error"]
