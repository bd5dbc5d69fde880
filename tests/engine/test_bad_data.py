"""Dataset faults end to end through the Trainer (tests/engine/test_data.py covers them at the dataset level): a truncated
JPEG, a non-image file, a missing image, a zero-size box, a box outside the image, an unknown category, an empty
annotation file. Without data.skip_bad the run fails with an error event naming the file and the fix (no
traceback in the message); with it the run finishes and a warning carries the count. A full disk while
checkpointing keeps the previous checkpoint and says so."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nanxi_tune.engine.run import checkpoint as ck
from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir
from nanxi_tune.engine.train.trainer import Trainer

N_IMAGES = 16


def make_set(root: Path, fault: str) -> tuple[Path, Path]:
    """A 16-image COCO folder (instances_train.json with ``fault`` in it, a clean instances_val.json).
    Returns (folder, the file the error must name)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, N_IMAGES + 1):
        name = f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images_dir / name, quality=90)
        images.append({"id": i, "file_name": name, "width": 64, "height": 48})
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [8, 6, 20, 16], "area": 320,
                     "iscrowd": 0})
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    val = {"images": images[:8], "annotations": anns[:8], "categories": cats}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    train_json = root / "annotations" / "instances_train.json"
    bad_image = images_dir / "005.jpg"
    named = train_json
    if fault == "truncated_jpeg":
        bad_image.write_bytes(bad_image.read_bytes()[:200])
        named = bad_image
    elif fault == "not_an_image":
        bad_image.write_text("<html>404 not found</html>")
        named = bad_image
    elif fault == "missing_image":
        bad_image.unlink()
        named = bad_image
    elif fault == "zero_size_box":
        anns[4]["bbox"] = [8, 6, 0, 16]
    elif fault == "box_outside":
        anns[4]["bbox"] = [60, 40, 30, 30]
    elif fault == "unknown_category":
        anns[4]["category_id"] = 99
    elif fault == "nan_box":  # json writes NaN and reads it back: a box that passed every comparison
        anns[4]["bbox"] = [float("nan"), 6, 20, 16]
    elif fault == "annotation_not_an_object":
        anns[4] = "oops"
    if fault == "empty_annotations":
        train_json.write_text("")
    else:
        train_json.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root, named


def cfg_for(folder: Path, **updates):
    base = {"preprocess.input_size": 64, "data.train": str(folder), "data.val": str(folder), "data.batch_size": 4,
            "backbone.width": 8, "head.channels": 16, "train.max_steps": 4, "eval.interval": 100,
            "eval.val_data_mode": "full", "eval.online": False, "diagnose.enabled": False}
    return C.with_updates(C.load_preset("demo"), base | updates)


IMAGE_FAULTS = ["truncated_jpeg", "not_an_image", "missing_image"]
ANN_FAULTS = ["zero_size_box", "box_outside", "unknown_category", "nan_box", "annotation_not_an_object"]


def run(tmp_path, fault, **updates):
    folder, named = make_set(tmp_path / "data", fault)
    events = []
    state = Trainer(cfg_for(folder, **updates), tmp_path / "run", events.append).run()
    return state, events, named


# annotation faults are found before any loader worker starts: workers matter for image faults only
CASES = [(f, 0) for f in IMAGE_FAULTS + ANN_FAULTS] + [(f, 2) for f in IMAGE_FAULTS]


@pytest.mark.parametrize("fault,workers", CASES + [("empty_annotations", 0)])
def test_fault_fails_with_the_file_and_the_fix(tmp_path, fault, workers):
    state, events, named = run(tmp_path, fault, **{"data.workers": workers})
    assert state == "failed"
    errors = [e for e in events if e.kind == "error"]
    assert len(errors) == 1
    text = f"{errors[0].error} {errors[0].hint}"
    assert str(named) in errors[0].error
    assert "Traceback" not in text and "DataLoader worker" not in text
    if fault == "empty_annotations":
        assert "empty" in text and "COCO instances JSON" in text
    else:
        assert "data.skip_bad = true" in text and ("remove it" in text or "fix" in text)
    # the event is in events.jsonl too, so a TUI or a later `nanxi-tune open` shows it
    assert any(e.get("kind") == "error" and str(named) in e.get("error", "")
               for e in rundir.read_events(tmp_path / "run"))


@pytest.mark.parametrize("fault,workers", CASES)
def test_skip_bad_continues_with_a_counted_warning(tmp_path, fault, workers):
    state, events, named = run(tmp_path, fault, **{"data.skip_bad": True, "data.workers": workers})
    assert state == "finished", [e for e in events if e.kind == "error"]
    warnings = [e.message for e in events if e.kind == "log" and e.level == "warning"]
    what = "image" if fault in IMAGE_FAULTS else "annotation"
    counted = [w for w in warnings if re.search(rf"data\.skip_bad: skipped 1 bad {what}", w)]
    assert counted, warnings
    assert str(named) in " ".join(warnings)
    steps = [m["step"] for m in rundir.read_metrics(tmp_path / "run") if m.get("split") == "train"]
    assert steps == [1, 2, 3, 4]


def test_empty_annotation_file_fails_even_with_skip_bad(tmp_path):
    state, events, named = run(tmp_path, "empty_annotations", **{"data.skip_bad": True})
    assert state == "failed"
    assert str(named) in [e for e in events if e.kind == "error"][0].error


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC on the second checkpoint (from torch.save, then from the rename): the run stops with an error that
    says the previous checkpoint is intact, last.pt still loads at the first checkpoint's step, no temp file
    is left, and once there is space again the run resumes from it."""
    folder, _ = make_set(tmp_path / "data", "none")
    cfg = cfg_for(folder, **{"train.checkpoint_every": 2, "train.max_steps": 8})
    for where in ("torch.save", "os.replace"):
        run_dir = tmp_path / f"run-{where}"
        calls = {"n": 0}
        real_save, real_replace = torch.save, os.replace

        def full_save(obj, f, *a, **k):
            calls["n"] += 1
            if calls["n"] >= 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_save(obj, f, *a, **k)

        def full_replace(src, dst, *a, **k):
            if str(dst).endswith(".pt"):
                calls["n"] += 1
                if calls["n"] >= 2:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst, *a, **k)

        if where == "torch.save":
            monkeypatch.setattr(torch, "save", full_save)
        else:
            monkeypatch.setattr(os, "replace", full_replace)
        events = []
        state = Trainer(cfg, run_dir, events.append).run()
        monkeypatch.undo()
        assert state == "failed"
        err = [e for e in events if e.kind == "error"][0]
        text = f"{err.error} {err.hint}"
        assert "No space left on device" in text and "the previous checkpoint (step 2) is intact" in text
        assert "Free disk space" in text and "resume" in text
        assert ck.load(rundir.last_checkpoint(run_dir))["step"] == 2
        assert not [p.name for p in (run_dir / "checkpoints").iterdir() if ".tmp-" in p.name]
        resumed = Trainer.resume(run_dir, max_steps=6)
        assert resumed.run() == "stopped" and resumed.step == 6
        steps = [m["step"] for m in rundir.read_metrics(run_dir) if m.get("split") == "train"]
        assert steps == list(range(1, 7))


def test_an_image_entry_that_is_not_an_object_names_the_file_and_the_item(tmp_path):
    folder, named = make_set(tmp_path / "data", "none")
    data = json.loads(named.read_text())
    data["images"].insert(3, 7)
    named.write_text(json.dumps(data))
    events = []
    assert Trainer(cfg_for(folder), tmp_path / "run", events.append).run() == "failed"
    (err,) = [e for e in events if e.kind == "error"]
    assert str(named) in err.error and "image entry #4" in err.error and "AttributeError" not in err.error
