"""Out of the tool (issue 21, part 4): `predict` gives evaluation's own detections, drawn and as COCO results;
`export` writes ONNX / TorchScript files that compute what PyTorch computes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny, train_one_thread
from nanxi_tune.cli.main import main
from nanxi_tune.engine import config as C
from nanxi_tune.engine.run import rundir

pytestmark = pytest.mark.usefixtures("one_thread")

# letterbox: the synthetic images are not square (e.g. 52×60), so boxes map back through a real pad and scale
TRAIN = {"train.epochs": 5, "train.base_lr": 0.01, "eval.online": False, "preprocess.resize": "letterbox"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("predict") / "run"
    assert train_one_thread(run, tiny(**TRAIN), max_steps=30) in ("finished", "stopped")
    return run


def evaluation(run):
    """The detections and metrics of `nanxi-tune eval RUN --checkpoint last`, through engine.evaluation.evaluate itself."""
    from nanxi_tune.engine.data.loader import make_loader
    from nanxi_tune.engine.model.decode import decode
    from nanxi_tune.engine.evaluation.evaluate import evaluate, to_coco_results
    from nanxi_tune.engine.evaluation.evaluate_run import load_ema_model

    cfg, model, ds = load_ema_model(run, "last", C.load(run / rundir.CONFIG))
    model.eval()
    loader = make_loader(ds, range(len(ds)), cfg.data.batch_size, cfg.data.workers, "cpu", drop_last=False)
    dets, pads = [], []
    with torch.inference_mode():
        for images, targets in loader:
            dets += to_coco_results(decode(model(images), cfg), targets, ds.cat_ids)
            pads += [t["pad"] for t in targets]
    metrics = evaluate(model, loader, cfg, torch.device("cpu"), ds.coco, ds.cat_ids)
    return dets, metrics, pads, ds


def same(got: list[dict], ref: list[dict], key: str = "image_id", tol: float = 1e-5) -> None:
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a[key] == b[key] and a["category_id"] == b["category_id"]
        assert abs(a["score"] - b["score"]) <= tol
        assert np.allclose(a["bbox"], b["bbox"], atol=tol, rtol=0), (a, b)


def test_predict_on_val_is_evaluations_detections(run):
    from nanxi_tune.engine.evaluation.evaluate import coco_map
    from nanxi_tune.engine.inference.predict import Predictor

    ref, metrics, pads, ds = evaluation(run)
    assert ref, "the tiny run detects nothing: the comparison would be empty"
    assert any(p != (0.0, 0.0) for p in pads)  # the letterbox pad is really undone
    predictor = Predictor(run, "last")
    preds = predictor.on_val()
    assert [p.image_id for p in preds] == ds.ids
    got = [r for p in preds for r in p.coco_results()]
    same(got, ref)
    # evaluate() scores exactly these detections
    assert metrics["mAP"] > 0 and coco_map(ds.coco, got, ds.ids)["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9)
    for p in preds:
        assert len(p.boxes) == len(p.scores) == len(p.names) == len(p.category_ids)
        assert all(0 <= x1 < x2 <= p.width and 0 <= y1 < y2 <= p.height for x1, y1, x2, y2 in p.boxes)
        assert p.names == [ds.coco.cats[c]["name"] for c in p.category_ids]

    # the same images given as files (a folder, then one file) go through the same pre-processing
    files = predictor.on_files([ds.img_dir])
    assert [f.source for f in files] == [str(ds.img_dir / ds.coco.imgs[i]["file_name"]) for i in ds.ids]
    same([r for p in files for r in p.coco_results()],
         [{**r, "file_name": str(ds.img_dir / ds.coco.imgs[r["image_id"]]["file_name"])} for r in ref], "file_name")
    one = predictor.on_files([ds.img_dir / ds.coco.imgs[ds.ids[1]]["file_name"]])[0]
    assert (one.boxes, one.category_ids) == (files[1].boxes, files[1].category_ids)


def test_predict_command_writes_drawn_images_and_results(run, tmp_path, capsys):
    from nanxi_tune.engine.data.dataset import eval_dataset

    ds = eval_dataset(C.load(run / rundir.CONFIG), 0)
    src = tmp_path / "wide.png"  # a user's image: another size and shape than the training canvas
    Image.open(ds.img_dir / ds.coco.imgs[ds.ids[0]]["file_name"]).convert("RGB").resize((150, 90)).save(src)
    out = tmp_path / "out"
    # drawn at the default 0.3, this short run's low scores leave the picture as it was; results.json has them all
    assert main(["predict", str(run), str(src), "--out", str(tmp_path / "plain"), "--checkpoint", "last",
                 "--score-threshold", "0.02"]) == 0
    assert "wrote 1 drawn image (boxes scoring ≥ 0.3)" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(tmp_path / "plain" / "wide.png")), np.asarray(Image.open(src)))
    assert json.loads((tmp_path / "plain" / "results.json").read_text())
    assert main(["predict", str(run), str(src), "--out", str(out), "--checkpoint", "last",
                 "--score-threshold", "0.02", "--draw-threshold", "0.02"]) == 0
    assert "wrote 1 drawn image (boxes scoring ≥ 0.02)" in capsys.readouterr().out
    drawn = Image.open(out / "wide.png")
    assert drawn.size == (150, 90)
    assert not np.array_equal(np.asarray(drawn), np.asarray(Image.open(src)))  # boxes were drawn
    results = json.loads((out / "results.json").read_text())
    assert results and {r["file_name"] for r in results} == {str(src)}
    for r in results:
        x, y, w, h = r["bbox"]
        assert r["score"] >= 0.02 and 0 <= x and x + w <= 150 + 1e-3 and 0 <= y and y + h <= 90 + 1e-3
        assert r["category_id"] in ds.cat_ids

    assert main(["predict", str(run), "--val", "--checkpoint", "last"]) == 0  # default: RUN/predictions
    val = json.loads((run / "predictions" / "val" / "results.json").read_text())
    assert {r["image_id"] for r in val} <= set(ds.ids) and val
    assert len(list((run / "predictions" / "val").glob("*.png"))) == len(ds)


def test_predict_refuses_missing_or_bad_images_by_name(run, tmp_path, capsys):
    assert main(["predict", str(run), str(tmp_path / "no-such.jpg")]) == 2
    err = capsys.readouterr().err
    assert "no-such.jpg" in err and "no such image" in err and "Traceback" not in err
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    assert main(["predict", str(run), str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "cannot read" in err and "Traceback" not in err
    assert main(["predict", str(run)]) == 2  # neither files nor --val
    assert "--val" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    C.save(tiny(), empty / rundir.CONFIG)
    assert main(["predict", str(empty), "--val"]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "Traceback" not in err
    assert main(["predict", str(tmp_path / "no-run"), "--val"]) == 2


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_runs_outside_torch_like_pytorch(run, tmp_path, capsys, fmt):
    from nanxi_tune.engine.model.decode import decode
    from nanxi_tune.engine.evaluation.evaluate import to_coco_results
    from nanxi_tune.engine.evaluation.evaluate_run import load_ema_model

    path = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    assert main(["export", str(run), "--format", fmt, "--out", str(path), "--checkpoint", "last"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["preprocess"]["input_size"] == 64 and side["preprocess"]["resize"] == "letterbox"
    assert side["decode"]["out_stride"] == 4 and "score_threshold" in side["decode"]
    assert max(side["check"]["max_abs_diff"].values()) < 1e-4

    # real val canvases, another batch size than the export's example: the file's outputs decode to the same boxes
    # the file computes in float32: its reference is the float32 detector (the run's own evaluations may be bf16)
    cfg = C.with_updates(C.load(run / rundir.CONFIG), {"train.precision": "fp32"})
    cfg, model, ds = load_ema_model(run, "last", cfg)
    images, targets = zip(*(ds[i] for i in range(3)))
    x = torch.stack(images)
    with torch.inference_mode():
        ref = model.eval()(x)
    if fmt == "onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
        got = [torch.from_numpy(g) for g in got]
    else:
        got = list(torch.jit.load(str(path))(x))
    outs = dict(zip(["map", "offset", "shape"], got))
    for k, g in outs.items():
        assert g.shape == ref[k].shape
        assert (g - ref[k]).abs().max().item() <= 1e-4 * max(1.0, ref[k].abs().max().item()), k
    dets = to_coco_results(decode(ref, cfg), list(targets), ds.cat_ids)
    assert dets
    same(to_coco_results(decode(outs, cfg), list(targets), ds.cat_ids), dets, tol=1e-3)


def test_export_with_flip_test_carries_the_mirror_pass(run, tmp_path):
    """postprocess.flip_test on: the ONNX file's map and shape are the image's and its mirror's averaged."""
    import shutil

    from nanxi_tune.engine.evaluation.evaluate_run import load_ema_model
    from nanxi_tune.engine.model import flip_test

    flipped = tmp_path / "run"
    shutil.copytree(run, flipped)
    C.save(C.with_updates(C.load(flipped / rundir.CONFIG), {"postprocess.flip_test": True}), flipped / rundir.CONFIG)
    path = tmp_path / "m.onnx"
    assert main(["export", str(flipped), "--format", "onnx", "--out", str(path), "--checkpoint", "last"]) == 0
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["decode"]["flip_test"] is True and side["decode"]["steps"][0].startswith("flip_test")
    cfg = C.with_updates(C.load(flipped / rundir.CONFIG), {"train.precision": "fp32"})
    cfg, model, ds = load_ema_model(flipped, "last", cfg)
    x = torch.stack([ds[i][0] for i in range(2)])
    with torch.inference_mode():
        ref, plain = flip_test.infer(model.eval(), x, cfg), model(x)
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    for k, g in zip(["map", "offset", "shape"], got):
        assert (torch.from_numpy(g) - ref[k]).abs().max().item() <= 1e-4 * max(1.0, ref[k].abs().max().item()), k
    assert not torch.allclose(ref["map"], plain["map"])
