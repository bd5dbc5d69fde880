"""TensorBoard beside the record (engine.train.tboard): the same values as metrics.jsonl at the same steps, pictures at
evaluations, no folder when off, no duplicate steps across resumes, and a failing writer never stops a run."""

import io
import shutil
import sys

import pytest
from PIL import Image

from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.train import tboard
from nanxi_tune.engine.evaluation.errors import ERROR_KINDS
from nanxi_tune.engine.inference.predict import Predictor
from nanxi_tune.engine.train.trainer import Trainer

from conftest import tiny as base_tiny

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

BRANCHES = ("train/loss_map", "train/loss_offset", "train/loss_shape", "train/loss")


def tiny(**updates):  # 6 steps an epoch, an evaluation at each epoch's end
    return base_tiny(**({"train.epochs": 2, "eval.interval": 1} | updates))


def board(run_dir) -> EventAccumulator:
    ea = EventAccumulator(str(tboard.folder(run_dir)), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def points(ea, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def lines(run_dir, split, key) -> list[tuple[int, float]]:
    return [(m["step"], m[key]) for m in rundir.read_metrics(run_dir) if m["split"] == split]


def same(tb, record):
    assert [s for s, _ in tb] == [s for s, _ in record]
    assert [v for _, v in tb] == pytest.approx([v for _, v in record], rel=1e-6, abs=1e-7)  # float32 in TB


def test_a_run_writes_the_records_values_and_pictures(tmp_path, one_thread, monkeypatch):
    from nanxi_tune.engine.inference import draw

    drawn = []
    real_draw = draw.draw
    monkeypatch.setattr(draw, "draw", lambda im, *a, **k: drawn.append(a) or real_draw(im, *a, **k))
    monkeypatch.setattr(tboard, "DRAW_SCORE", 0.0)  # every box: a 12-step model scores low
    monkeypatch.setattr(tboard, "MAX_SIDE", 48)  # the synthetic images (~60 px) are shrunk, their boxes too
    run = tmp_path / "r"
    assert Trainer(tiny(), run).run() == "finished"
    ea = board(run)
    tags = set(ea.Tags()["scalars"])
    for key in ("loss", "loss_map", "loss_offset", "loss_shape", "lr", "grad_norm", "s_map", "s_offset", "s_shape",
                "images_per_s"):
        assert f"train/{key}" in tags
        if key != "images_per_s":  # measured, not trained: the record's value is what TB holds all the same
            same(points(ea, f"train/{key}"), lines(run, "train", key))
    assert [s for s, _ in points(ea, "train/loss")] == list(range(1, 13))
    for key in ("mAP", "AP50", "AP75", "APs", "APm", "APl", "loss", "loss_map", "loss_offset", "loss_shape"):
        same(points(ea, f"val/{key}"), lines(run, "val", key))
    evals = [m for m in rundir.read_metrics(run) if m["split"] == "val"]
    assert [m["step"] for m in evals] == [6, 12]
    for kind in ERROR_KINDS:
        same(points(ea, f"errors/dAP50_{kind}"), [(m["step"], m["errors"]["delta"][kind]) for m in evals])
    classes = evals[-1]["errors"]["per_class_ap50"]
    assert classes and {f"classes/AP50_{c}" for c in classes} <= tags
    for c in classes:
        same(points(ea, f"classes/AP50_{c}"), [(m["step"], m["errors"]["per_class_ap50"][c]) for m in evals])
    pictures = ea.Images("val/predictions")
    assert [p.step for p in pictures] == [6, 12]
    grid = Image.open(io.BytesIO(pictures[-1].encoded_image_string)).convert("RGB")
    assert grid.width > 2 * grid.height > 0 and grid.height <= 48 + 4  # several val images side by side
    assert len(grid.getcolors(1 << 16) or []) > 50  # drawn images, not a blank canvas
    # the last pictures are the boxes `nanxi-tune predict --val` finds with the checkpoint of that evaluation
    predictor = Predictor(run, "last")
    expected = predictor.on_val()[:tboard.IMAGES]
    assert len(drawn) == 2 * len(expected) and any(p.boxes for p in expected)
    for (boxes, names, scores, gt_boxes, gt_names), p in zip(drawn[-len(expected):], expected):
        f = 48 / max(p.width, p.height)
        assert f < 1 and names == p.names and scores == pytest.approx(p.scores, abs=1e-5)
        assert [v for b in boxes for v in b] == pytest.approx([v * f for b in p.boxes for v in b], abs=1e-3)
        gt, gt_expected = predictor.ground_truth(p.image_id)
        assert gt_names == gt_expected and gt_boxes
        assert [v for b in gt_boxes for v in b] == pytest.approx([v * f for b in gt for v in b])


def test_off_writes_no_folder(tmp_path, one_thread):
    run = tmp_path / "r"
    assert Trainer(tiny(**{"train.epochs": 1, "train.tensorboard": False}), run).run() == "finished"
    assert not tboard.folder(run).exists() and rundir.read_metrics(run)


def test_resumes_leave_each_step_once(tmp_path, one_thread):
    """A stop at step 9 and its resume; then a rewind to step 6 (a kill after step 14 whose last good checkpoint
    was step 6): TensorBoard holds steps 1-18 once each, with the record's values."""
    run, cfg = tmp_path / "r", tiny(**{"train.epochs": 3})
    assert Trainer(cfg, run, max_steps=9).run() == "stopped"
    assert Trainer.resume(run, max_steps=14).run() == "stopped"
    assert [s for s, _ in points(board(run), "train/loss")] == list(range(1, 15))
    shutil.copyfile(rundir.ring_checkpoint(run, 6), rundir.last_checkpoint(run))
    assert Trainer.resume(run).run() == "finished"
    ea = board(run)
    same(points(ea, "train/loss"), lines(run, "train", "loss"))
    assert [s for s, _ in points(ea, "train/loss")] == list(range(1, 19))
    assert [s for s, _ in points(ea, "val/mAP")] == [6, 12, 18]
    assert [p.step for p in ea.Images("val/predictions")] == [6, 12, 18]
    assert len(list(tboard.folder(run).glob("events.out.tfevents.*"))) == 3  # one file a process, as TB expects


@pytest.mark.parametrize("where", ["import", "__init__", "add_scalar", "add_images", "flush", "close"])
def test_a_failing_writer_warns_once_and_the_run_finishes(tmp_path, one_thread, monkeypatch, where):
    from torch.utils.tensorboard import SummaryWriter

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if where == "import":  # the package broken or gone
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    else:
        monkeypatch.setattr(SummaryWriter, where, boom)
    run = tmp_path / "r"
    assert Trainer(tiny(**{"train.epochs": 1}), run).run() == "finished"
    warned = [e for e in rundir.read_events(run) if e["kind"] == "log" and "TensorBoard" in e["message"]]
    assert len(warned) == 1 and warned[0]["level"] == "warning", warned
    assert ("No space left" in warned[0]["message"]) == (where != "import")
    assert [s for s, _ in lines(run, "train", "loss")] == list(range(1, 7)) and lines(run, "val", "mAP")


def test_the_key_is_a_switch_that_needs_a_new_run():
    from nanxi_tune.engine import config as C

    assert C.Config().train.tensorboard is True and not C.is_live("train.tensorboard")
    assert C.Config.model_fields["train"].annotation.model_fields["tensorboard"].annotation is bool  # a Switch
    with pytest.raises(C.ConfigError, match="train.tensorboard"):
        C.with_updates(C.Config(), {"train.tensorboard": 1})
