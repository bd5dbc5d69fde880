"""`nanxi-tune predict | export`: a run's model out of the tool — boxes drawn on images, or an ONNX / TorchScript
file.

Exit status 0 done, 1 failed (no checkpoint, unreadable data, an export that does not match PyTorch), 2 bad input
(not a run, a missing or unreadable image, the arguments).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

CHECKPOINTS = ["best", "last"]
SHOWN = 20  # images listed one per line; more are summed up


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="draw a run's detections on images (or its val set) and write COCO results")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="*", metavar="IMAGES", help="image files, or folders of images")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help="EMA weights of best.pt or last.pt")
    p.add_argument("--out", metavar="DIR", help="where the drawn images and results.json go "
                   "(default: RUN/predictions/val for --val, RUN/predictions/<time> for files)")
    p.add_argument("--draw-threshold", type=_score, default=DRAW_SCORE, metavar="X",
                   help=f"draw only boxes scoring at least X (default {DRAW_SCORE}; results.json keeps every "
                        "detection above --score-threshold)")
    p.add_argument("--score-threshold", type=_score, metavar="X",
                   help="drop detections scoring below X (default: the run's postprocess.score_threshold)")
    p.add_argument("--val", action="store_true", help="predict on the images `nanxi-tune eval` scores "
                   "(eval.val_data_mode) instead of files; ground truth drawn dashed")

    e = sub.add_parser("export", help="write a run's model as ONNX or TorchScript (raw head outputs), checked "
                       "against PyTorch, with a JSON of its pre- and post-processing")
    e.add_argument("run_dir")
    e.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    e.add_argument("--out", metavar="PATH", help="the model file (default: RUN/export/model-<checkpoint>.onnx or "
                   ".torchscript.pt); PATH.json beside it documents the pre/post-processing")
    e.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help="EMA weights of best.pt or last.pt")


DRAW_SCORE = 0.3  # what the Predictions view draws by default: below it a picture is boxes, not objects


def _score(text: str) -> float:
    """--score-threshold: a number in [0, 1), as postprocess.score_threshold allows."""
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not 0.0 <= x < 1.0:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r}: give a score from 0 up to (not including) 1, e.g. 0.3")
    return x


def _file_names(preds) -> list[str]:
    """One output name per image: its own name, numbered where two images share one."""
    seen: set[str] = set()
    out = []
    for i, p in enumerate(preds):
        name = Path(p.source).name
        if name in seen or name == "results.json":
            name = f"{i}-{name}"
        seen.add(name)
        out.append(name)
    return out


def predict(args) -> int:
    from nanxi_tune.cli.exitcodes import ExitCode

    if args.val == bool(args.images):
        what = "give image files or folders, or --val, not both" if args.val else \
            "give image files or folders to predict on, or --val for the run's val set"
        print(f"nanxi-tune predict: {what}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    from PIL import Image

    from nanxi_tune.engine.inference.draw import draw
    from nanxi_tune.engine.inference.predict import PredictError, Predictor, image_files

    try:
        files = None if args.val else image_files(args.images)  # before the model loads: a typo fails at once
        updates = {} if args.score_threshold is None else {"postprocess.score_threshold": args.score_threshold}
        predictor = Predictor(args.run_dir, args.checkpoint, updates)
        preds = predictor.on_val() if args.val else predictor.on_files(files)
        # one folder per kind of call: predicting on a file never overwrites the val set's results.json
        default = "val" if args.val else time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path(args.run_dir) / "predictions" / default
        out.mkdir(parents=True, exist_ok=True)
        names = _file_names(preds)
        for p, name in zip(preds, names):
            gt = predictor.ground_truth(p.image_id) if p.image_id is not None else (None, None)
            keep = [k for k, s in enumerate(p.scores) if s >= args.draw_threshold]  # a readable picture
            with Image.open(predictor.image_path(p)) as im:
                draw(im, [p.boxes[k] for k in keep], [p.names[k] for k in keep], [p.scores[k] for k in keep], *gt,
                     classes=predictor.class_names).save(out / name)
    except PredictError as err:
        print(f"nanxi-tune: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    results = [r for p in preds for r in p.coco_results()]
    (out / "results.json").write_text(json.dumps(results) + "\n")
    for p, name in list(zip(preds, names))[:SHOWN]:
        top = ", ".join(f"{n} {s:.2f}" for n, s in zip(p.names[:3], p.scores[:3]))
        print(f"{name}: {len(p.boxes)} boxes" + (f" ({top}{', …' if len(p.boxes) > 3 else ''})" if top else ""))
    if len(preds) > SHOWN:
        print(f"… and {len(preds) - SHOWN} more images")
    threshold = predictor.cfg.postprocess.score_threshold
    print(f"wrote {len(preds)} drawn image{'s' * (len(preds) != 1)} (boxes scoring ≥ {args.draw_threshold:g}) and "
          f"results.json ({len(results)} detections, score ≥ {threshold:g}, {args.checkpoint}.pt) to {out}")
    return ExitCode.FINISHED


def export(args) -> int:
    from nanxi_tune.cli.exitcodes import ExitCode
    from nanxi_tune.engine.inference.export import ExportError
    from nanxi_tune.engine.inference.export import export as write

    try:
        done = write(args.run_dir, args.format, args.out, args.checkpoint)
    except ExportError as err:
        print(f"nanxi-tune: {err}", file=sys.stderr)
        return ExitCode.FAILED
    diff = ", ".join(f"{k} {v:.2e}" for k, v in done.max_abs_diff.items())
    print(f"wrote {done.path} ({args.format}, {args.checkpoint}.pt; input images (N, 3, {done.input_shape[-2]}, "
          f"{done.input_shape[-1]}), outputs map (scores, activation applied), "
          f"{', '.join(k for k in done.max_abs_diff if k != 'map')})")
    print(f"checked with {done.checked_with} against PyTorch on a random input: max abs difference {diff}")
    print(f"pre- and post-processing to reimplement: {done.sidecar}")
    return ExitCode.FINISHED


COMMANDS = {"predict": predict, "export": export}
