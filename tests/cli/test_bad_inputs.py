"""Malformed presets and annotation files get one clear line, never a traceback: arrays nested thousands deep,
a 10 MB preset name, a non-numeric bbox, a category without an id; and a box outside its image is caught
even when the image entry lacks width/height (the size is read from the image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nanxi_tune.engine import config as C
from nanxi_tune.engine.data import dataset as D
from nanxi_tune.cli.exitcodes import ExitCode
from nanxi_tune.cli.main import main

from conftest import tiny

SMALL = ["preprocess.input_size=64", "data.synthetic_train=16", "data.synthetic_val=8", "data.batch_size=8",
         "backbone.width=8", "head.channels=16", "eval.online=false", "diagnose.enabled=false"]


def said(capsys) -> str:
    out = capsys.readouterr()
    return out.err + out.out


@pytest.mark.parametrize("depth", [300, 5000])
def test_deeply_nested_arrays_are_refused(tmp_path, capsys, depth):
    preset = tmp_path / "deep.toml"
    preset.write_text((C.PRESETS_DIR / "demo.toml").read_text() + "\n[extra]\nx = " + "[" * depth + "]" * depth)
    with pytest.raises(C.ConfigError) as info:
        C.load_preset(str(preset))
    assert len(str(info.value)) < 2000
    assert main(["train", "--preset", str(preset), "--run-dir", str(tmp_path / "r")]) == ExitCode.BAD_INPUT
    text = said(capsys)
    assert "Traceback" not in text and "RecursionError" not in text and str(preset) in text
    deep = "[" * depth + "]" * depth
    assert main(["train", "--set", f"train.milestones={deep}", "--run-dir", str(tmp_path / "r")]) == ExitCode.BAD_INPUT
    text = said(capsys)
    assert "train.milestones" in text and "RecursionError" not in text and len(text) < 2000


def test_a_10mb_preset_name(tmp_path, capsys, one_thread):
    huge = "p" * (10 << 20)
    preset = tmp_path / "named.toml"
    preset.write_text((C.PRESETS_DIR / "demo.toml").read_text().replace('preset = "demo"', f'preset = "{huge}"'))
    runs = tmp_path / "runs"
    code = main(["--runs", str(runs), "train", "--preset", str(preset), "--quiet", "--max-steps", "1",
                 "--set", *SMALL])
    text = said(capsys)
    assert code == ExitCode.STOPPED, text[-2000:]
    assert "File name too long" not in text
    (run,) = runs.iterdir()
    assert len(run.name) < 80
    assert main(["train", "--preset", huge]) == ExitCode.BAD_INPUT
    text = said(capsys)
    assert "no such preset" in text and len(text) < 2000


# --- annotation files ---------------------------------------------------------------------------------

def coco(root: Path, fault: str) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 5):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [8, 6, 20, 16], "area": 320, "iscrowd": 0})
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    if fault == "text_bbox":
        anns[2]["bbox"] = [8, "a", 20, 16]
    elif fault == "category_without_id":
        cats[1] = {"name": "b"}
    elif fault == "outside_no_size":
        del images[2]["width"], images[2]["height"]
        anns[2]["bbox"] = [60, 40, 30, 30]
    path = root / "instances_train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.mark.parametrize("fault,expect", [("text_bbox", "annotation 3 (image 3)"),
                                          ("category_without_id", "category"),
                                          ("outside_no_size", "annotation 3 (image 3)")])
def test_annotation_faults_name_the_file_and_item(tmp_path, fault, expect):
    ann = coco(tmp_path, fault)
    cfg = tiny(**{"data.train": str(ann)})
    with pytest.raises(D.DataError) as info:
        D.CocoDetection(ann, tmp_path / "images", cfg, train=True)
    msg = str(info.value)
    assert str(ann) in msg and expect in msg, msg
    if fault != "category_without_id":
        skipped = D.CocoDetection(ann, tmp_path / "images", C.with_updates(cfg, {"data.skip_bad": True}),
                                  train=True)
        assert skipped.skipped == 1 and len(skipped.coco.anns) == 3
    if fault == "outside_no_size":
        assert "64x48" in msg


def test_a_relative_data_path_from_another_folder_says_so(tmp_path, monkeypatch, capsys):
    """`train --preset bccd` outside the project folder: the preset's relative data path is named as relative to
    the current folder, with no hint about data.skip_bad (which has nothing to do with a missing file)."""
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--preset", "bccd", "--quiet", "--run-dir", str(tmp_path / "r")])
    text = " ".join(said(capsys).split())
    assert code == ExitCode.FAILED
    assert f"relative to the current folder {tmp_path}" in text, text
    assert "skip_bad" not in text and "absolute" in text
