"""导出 export: a run's EMA model as ONNX or TorchScript, checked against PyTorch, with a pre/post-processing sidecar.

The exported graph takes the normalised canvas (N, 3, S, S), S = preprocess.input_size, and returns the raw head
outputs ``map`` (head.range_norm_act already applied: scores in [0, 1] for sigmoid), ``offset`` and ``shape``
(softplus × 16/out_stride already applied for wh / ltrb), and ``quality`` with head.shape_quality. Peaks, top-k, NMS and the mapping back to the image
are left to the user; ``<file>.json`` beside the model says how (engine.model.decode does it in PyTorch).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import config as C
from ..run import rundir
from ..evaluation.evaluate_run import load_ema_model
from ..model import encoding, flip_test
from .predict import require_checkpoint
from ..files import write_atomic

FORMATS = ("onnx", "torchscript")
OUTPUTS = ("map", "offset", "shape")
QUALITY = "quality"  # head.shape_quality's output: the predicted IoU of each cell's box
OPSET = 18  # the ai.onnx opset written (torch.onnx's own default, pinned so the file does not change with torch)
TOLERANCE = 1e-4  # relative to each output's largest magnitude (at least 1)


class ExportError(RuntimeError):
    """Export or its check failed; the message says why and what to do."""


class Heads(nn.Module):
    """The detector with a tuple out: (map, offset, shape[, quality]); with postprocess.flip_test the file runs the
    mirror too and its map and shape are the averaged ones (engine.model.flip_test)."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.names = OUTPUTS + ((QUALITY,) if cfg.head.shape_quality else ())

    def forward(self, images: torch.Tensor):
        out = flip_test.infer(self.model, images, self.cfg)
        return tuple(out[k] for k in self.names)


@dataclass(frozen=True)
class Exported:
    path: Path
    sidecar: Path
    checked_with: str
    max_abs_diff: dict[str, float]  # per output, exported file vs PyTorch on the same random input
    input_shape: tuple[int, ...]


def default_path(run_dir: Path, fmt: str, which: str) -> Path:
    return Path(run_dir) / "export" / f"model-{which}.{'onnx' if fmt == 'onnx' else 'torchscript.pt'}"


def sidecar(cfg, class_names: list[str], cat_ids: list[int], fmt: str, which: str) -> dict:
    """What a user needs to feed the model and read its outputs without nanxi-tune."""
    S, pp, enc, stride = cfg.preprocess.input_size, cfg.postprocess, cfg.encode, cfg.neck.out_stride
    return {
        "format": fmt, "checkpoint": which, **({"opset": OPSET} if fmt == "onnx" else {}),
        "load": "onnxruntime.InferenceSession(path)" if fmt == "onnx" else "torch.jit.load(path)",
        "input": {"name": "images", "shape": ["N", 3, S, S], "dtype": "float32", "channel_order": "RGB",
                  "layout": "NCHW"},
        "preprocess": {
            "input_size": S, "resize": cfg.preprocess.resize,
            "value_range": "pixels / 255 → [0, 1], then (x - mean) / std per channel",
            "mean": list(cfg.normalize.mean), "std": list(cfg.normalize.std),
            "steps": ["decode to RGB uint8 (no EXIF rotation)",
                      "scale = min(S/h, S/w) for letterbox; min(1, S/h, S/w) for same_padding",
                      ("resize the uint8 image by scale: bilinear, align_corners=False, antialias when shrinking, "
                       "rounded to uint8; new side = floor(side × scale)"),
                      ("pad: letterbox centres the image (pad_x = (S - new_w) // 2, pad_y = (S - new_h) // 2); "
                       "same_padding puts it top-left (pad 0, 0)"),
                      "normalise, then fill the padding with 0 (the mean colour after normalisation)"]},
        "outputs": {
            "map": {"shape": ["N", len(class_names), S // stride, S // stride],
                    "activation": f"{cfg.head.range_norm_act} already applied (scores, not logits)"},
            "offset": {"shape": ["N", 2, S // stride, S // stride], "channels": ["dx", "dy"],
                       "meaning": "sub-pixel centre in cells: centre = (column, row) of the peak cell + offset"
                                  + (" + 0.5" if enc.offset == "centered" else "")},
            "shape": {"shape": ["N", 4 if enc.shape in encoding.LTRB else 2, S // stride, S // stride],
                      "meaning": {"wh": "box width, height in cells",
                                  "log_wh": "log of box width, height in cells (exp after clamp(max=12))",
                                  "ltrb": "distances in cells from the centre to the left, top, right, bottom "
                                          "edges",
                                  "ltrb_dfl": "distances in cells from the centre to the left, top, right, bottom "
                                              "edges (each its distribution's expectation, computed in the "
                                              "file)"}[enc.shape]},
            **({QUALITY: {"shape": ["N", 1, S // stride, S // stride],
                          "meaning": "the predicted IoU of the box decoded at each cell with its object's box"}}
               if cfg.head.shape_quality else {})},
        "decode": {
            "out_stride": stride, "offset_mode": enc.offset, "shape_mode": enc.shape,
            "pool_kernel": pp.pool_kernel, "top_k": pp.top_k, "score_threshold": pp.score_threshold,
            "nms": pp.nms, "nms_iou": pp.nms_iou, "flip_test": pp.flip_test,
            **({"quality_weight": pp.quality_weight} if cfg.head.shape_quality else {}), "shape_vote": pp.shape_vote,
            "steps": [*(["flip_test: the map and shape outputs already average the image's and its mirror's "
                         "(flipped back); nothing to do"] if pp.flip_test else []),
                      ("peaks: keep map cells equal to their pool_kernel × pool_kernel max-pool (stride 1, same "
                       "padding); others 0"),
                      "take the top_k cells over classes × H × W per image; class = index // (H×W)",
                      *(["score = map × quality^quality_weight at the cell"]
                        if cfg.head.shape_quality and pp.quality_weight > 0 else []),
                      *([f"shape at a peak = sum over its 3×3 cells (inside the map) of map^{pp.shape_vote:g} × "
                         "shape / sum of map^shape_vote (map: the peak's class)"] if pp.shape_vote > 0 else []),
                      ("centre (cells) from offset; box xyxy (cells) = centre ∓ w/2, h/2 (or ∓ l, t / ± r, b); "
                       "× out_stride → canvas pixels"),
                      "drop scores < score_threshold; if nms: class-wise NMS at IoU nms_iou",
                      "original pixels = (canvas - pad) / scale, clipped to the image"]},
        "classes": [{"index": i, "category_id": c, "name": n} for i, (c, n) in enumerate(zip(cat_ids, class_names))],
    }


def _write(fmt: str, heads: Heads, example: torch.Tensor, path: Path) -> None:
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trace warnings: shapes are fixed by design
            torch.jit.trace(heads, example).save(str(path))
        return
    try:
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it and onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx, onnxscript and onnxruntime packages: "
                          "pip install onnx onnxscript onnxruntime") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # dynamic batch; the example has 2 images so torch.export does not specialise the batch to 1
        torch.onnx.export(heads, (example,), str(path), input_names=["images"], output_names=list(heads.names),
                          dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=1024)}},
                          opset_version=OPSET, external_data=False, verbose=False, report=False)


def _run_file(fmt: str, path: Path, x: torch.Tensor, names: tuple[str, ...]) -> list:
    if fmt == "torchscript":
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice: the file still loads
            return [t.numpy() for t in torch.jit.load(str(path), map_location="cpu")(x)]
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(f"{path} written, but not checked: pip install onnxruntime to check it") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(names), {"images": x.numpy()})


def export(run_dir: Path | str, fmt: str = "onnx", out: Path | str | None = None, which: str = "best") -> Exported:
    """Write the run's model as ``fmt`` and its sidecar; run the file on a random input and compare it to PyTorch
    (raises ExportError past TOLERANCE)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    require_checkpoint(run_dir)
    cfg, model, dataset = load_ema_model(run_dir, which, C.load(run_dir / rundir.CONFIG))
    model.reconfigure(C.with_updates(cfg, {"train.precision": "fp32"}))  # the file computes in float32
    heads = Heads(model.cpu().eval(), cfg).eval()
    S = cfg.preprocess.input_size
    path = Path(out) if out else default_path(run_dir, fmt, which)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, S, S, generator=gen)
    try:
        _write(fmt, heads, example, path)
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - the exporter's own failures, said in one line
        raise ExportError(f"{path}: {fmt} export failed: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    x = torch.randn(3, 3, S, S, generator=gen)  # another batch size than the example: the batch stays free
    with torch.inference_mode():
        ref = [t.numpy() for t in heads(x)]
    got = _run_file(fmt, path, x, heads.names)
    diff = {k: float(abs(g - r).max()) for k, g, r in zip(heads.names, got, ref)}
    bad = {k: d for k, (d, r) in zip(heads.names, zip(diff.values(), ref)) if d > TOLERANCE * max(1.0, float(abs(r).max()))}
    side = path.with_name(path.name + ".json")
    doc = sidecar(cfg, dataset.class_names, dataset.cat_ids, fmt, which)
    doc["check"] = {"checked_with": _checker(fmt), "max_abs_diff": diff, "tolerance": TOLERANCE}
    write_atomic(side, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    if bad:
        raise ExportError(f"{path}: the exported model differs from PyTorch beyond {TOLERANCE:g} × scale ("
                          + ", ".join(f"{k} {d:.3g}" for k, d in bad.items()) + "); do not use this file")
    return Exported(path, side, _checker(fmt), diff, tuple(x.shape))


def _checker(fmt: str) -> str:
    return "ONNX Runtime (CPU)" if fmt == "onnx" else "torch.jit.load"
