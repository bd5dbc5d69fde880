"""后处理 NMS after training (§10.2: post-processing is tuned after the weights are trained).

The network runs once over the val data (the run's eval.val_data_mode) with the best checkpoint's EMA
weights; its raw head outputs (map / offset / shape) are cached in memory. Every grid point of
postprocess.nms_iou × score_threshold × top_k is then decoded (engine.model.decode) and scored with COCO mAP
(evaluate.to_coco_results + coco_map) from that cache, without rerunning the network. The run's own
values are always in the grid, so the chosen thresholds score at least as well as the defaults.

postprocess.flip_test is chosen first, at the run's own thresholds (the mirrored pass is cached beside the plain
one): kept on when it raises mAP; then, for a run with head.shape_quality, postprocess.quality_weight (how much the
predicted box quality counts in the score) the same way; then postprocess.shape_vote (the 3×3 cells around a peak
vote on its shape); then the grid is searched with those choices.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from ..run import recorder, rundir
from ..run.events import TunePostResult
from ..metric_keys import BRANCHES

KEYS = ("postprocess.nms_iou", "postprocess.score_threshold", "postprocess.top_k")
FLIP = "postprocess.flip_test"
QUALITY = "postprocess.quality_weight"
QUALITY_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
VOTE = "postprocess.shape_vote"
VOTE_POWERS = (0.0, 1.0, 2.0, 4.0, 8.0)
OUTPUTS = (*BRANCHES, "quality")  # what decode reads (quality: head.shape_quality only)
GRID: dict[str, tuple[float, ...]] = {
    "postprocess.nms_iou": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "postprocess.score_threshold": (0.001, 0.01, 0.05, 0.1, 0.2, 0.3),
    "postprocess.top_k": (20, 50, 100, 200),
}
Progress = Callable[[int, int], None]


@dataclass
class Cached:
    """Raw head outputs of one pass over the val data, on the CPU, batch by batch."""
    cfg: C.Config
    outputs: list[dict[str, Any]]
    targets: list[list[dict]]
    coco: Any
    cat_ids: list[int]
    img_ids: list[int]
    checkpoint: str
    seconds: float
    flipped: list[dict[str, Any]] | None = None  # the same batches with the mirror's map and shape averaged in


@dataclass
class PostResult:
    run_dir: str
    rows: list[dict[str, Any]]  # one per grid point: the three keys and flip_test, mAP, AP50, detections
    best: dict[str, Any]
    default: dict[str, Any]
    checkpoint: str
    mode: str
    images: int
    forward_seconds: float
    search_seconds: float
    applied_to: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def best_updates(self) -> dict[str, Any]:
        return {k: self.best[k] for k in (*KEYS, FLIP, QUALITY, VOTE) if k in self.best}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cache_outputs(run_dir: Path | str, which: str = "best", device: str | None = None,
                  updates: dict[str, Any] | None = None, flip: bool = True) -> Cached:
    """Run the checkpoint's EMA model once over the val data and keep map/offset/shape per batch (with ``flip``,
    the mirrored pass too, for postprocess.flip_test). ``updates`` change the run's config first (the autopilot
    points data.val at its held-out part)."""
    import torch

    from ..model import flip_test

    from ..data.loader import make_loader
    from ..evaluation.evaluate_run import load_ema_model
    from ..run.device import pick_device, place

    run_dir = Path(run_dir)
    cfg = C.load(run_dir / rundir.CONFIG)
    if updates:
        cfg = C.with_updates(cfg, updates, "tune-post")
    cfg, model, ds = load_ema_model(run_dir, which, cfg)
    dev = pick_device(device or cfg.train.device)
    place(model, dev, cfg.train.channels_last).eval()
    loader = make_loader(ds, range(len(ds)), cfg.data.batch_size, cfg.data.workers, dev.type, drop_last=False)
    outputs, flipped, targets, img_ids = [], [], [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for images, tg in loader:
            images = images.to(dev)
            out = model(images)
            outputs.append({k: out[k].float().cpu() for k in OUTPUTS if k in out})
            if flip:
                both = flip_test.mirrored(model, images, out, cfg.encode.shape)
                flipped.append({k: both[k].float().cpu() for k in OUTPUTS if k in both})
            targets.append(tg)
            img_ids += [int(t["image_id"]) for t in tg]
    ckpt = rundir.best_checkpoint(run_dir) if which == "best" else rundir.last_checkpoint(run_dir)
    if not ckpt.exists():
        ckpt = rundir.last_checkpoint(run_dir)
    return Cached(cfg, outputs, targets, ds.coco, ds.cat_ids, img_ids, str(ckpt), time.perf_counter() - t0,
                  flipped if flip else None)


def score(cache: Cached, updates: dict[str, Any]) -> dict[str, float]:
    """COCO metrics of the cached outputs decoded with ``updates`` to the postprocess keys."""
    from ..model.decode import decode
    from ..evaluation.evaluate import coco_map, to_coco_results

    cfg = C.with_updates(cache.cfg, updates, "tune-post")
    outputs = cache.outputs
    if cfg.postprocess.flip_test:
        if cache.flipped is None:
            raise ValueError("postprocess.flip_test = true needs the mirrored pass: cache_outputs(..., flip=True)")
        outputs = cache.flipped
    results: list[dict] = []
    for out, tg in zip(outputs, cache.targets):
        results.extend(to_coco_results(decode(out, cfg), tg, cache.cat_ids))
    m = coco_map(cache.coco, results, cache.img_ids)
    return {"mAP": m["mAP"], "AP50": m["AP50"], "AP75": m["AP75"], "detections": len(results)}


def make_grid(cfg: C.Config, grid: dict[str, tuple] | None = None) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the run's own values added to each axis."""
    grid = dict(grid or GRID)
    flat = C.flatten(cfg)
    axes = []
    for k in KEYS:
        vals = sorted(set(grid.get(k, ())) | {flat[k]})
        axes.append(vals)
    return [dict(zip(KEYS, combo)) for combo in itertools.product(*axes)]


def _choose(cache: Cached, base: dict[str, Any], key: str, values: tuple, own: Any) -> tuple[Any, dict[str, Any]]:
    """Score ``key`` at each of ``values`` (and the run's ``own``) with the rest at ``base``: the value with the
    highest mAP (a tie keeps ``own``) and what the journal records, {"mAP": {value: mAP}, "chosen": value}."""
    vals = sorted(set(values) | {own})
    by = {v: score(cache, {**base, key: v})["mAP"] for v in vals}
    best = max(vals, key=lambda v: (round(by[v], 6), v == own))
    return best, {"mAP": {str(v): m for v, m in by.items()}, "chosen": best}


def tune(run_dir: Path | str, grid: dict[str, tuple] | None = None, which: str = "best",
         progress: Progress | None = None, stop: threading.Event | None = None,
         cache: Cached | None = None) -> PostResult:
    """Grid-search the post-processing keys on a trained run without rerunning the network."""
    run_dir = Path(run_dir)
    cache = cache or cache_outputs(run_dir, which)
    flat = C.flatten(cache.cfg)
    quality = bool(cache.outputs) and "quality" in cache.outputs[0]
    default_point = {k: flat[k] for k in (*KEYS, FLIP, VOTE, *((QUALITY,) if quality else ()))}
    flip, extra = flat[FLIP], {}
    if cache.flipped is not None:  # flip_test first, at the run's own thresholds; a tie keeps the run's own
        by = {on: score(cache, {**default_point, FLIP: on})["mAP"] for on in (False, True)}
        flip = max((False, True), key=lambda on: (round(by[on], 6), on == flat[FLIP]))
        extra["flip_test"] = {"off": by[False], "on": by[True], "chosen": flip}
    chosen = {FLIP: flip}
    if quality:  # then the quality's weight in the score, the same way
        chosen[QUALITY], extra["quality_weight"] = _choose(cache, {**default_point, **chosen}, QUALITY,
                                                           QUALITY_WEIGHTS, flat[QUALITY])
    # then the neighbours' vote on the shape
    chosen[VOTE], extra["shape_vote"] = _choose(cache, {**default_point, **chosen}, VOTE, VOTE_POWERS, flat[VOTE])
    points = [{**p, **chosen} for p in make_grid(cache.cfg, grid)]
    rows = []
    t0 = time.perf_counter()
    for i, p in enumerate(points):
        if stop is not None and stop.is_set():
            break
        rows.append({**p, **score(cache, p), "default": p == default_point})
        if progress:
            progress(i + 1, len(points))
    default = next((r for r in rows if r["default"]), None) or {**default_point, **score(cache, default_point),
                                                                "default": True}
    # best: highest mAP, then AP50; on a tie the run's own values stay (no change without a gain)
    best = max(rows or [default], key=lambda r: (round(r["mAP"], 6), round(r["AP50"], 6), r["default"]))
    return PostResult(str(run_dir), rows, best, default, cache.checkpoint, cache.cfg.eval.val_data_mode,
                      len(cache.img_ids), cache.seconds, time.perf_counter() - t0, extra=extra)


def apply(result: PostResult, target: Path | str | None = None) -> Path:
    """Write the best values into the run's config.toml (the keys are live) or into a preset/config file
    at ``target``; the run's events record it (its journal shows it)."""
    run_dir = Path(result.run_dir)
    path = Path(target) if target else run_dir / rundir.CONFIG
    cfg = C.load(path) if path.exists() else C.load(run_dir / rundir.CONFIG)
    C.save(C.with_updates(cfg, result.best_updates(), "tune-post"), path)
    result.applied_to = str(path)
    record(result)
    return path


def record(result: PostResult) -> None:
    """Log the search in the run's events.jsonl (a "tune_post" log line) and refresh its journal."""
    from ..run import journal

    run_dir = Path(result.run_dir)
    recorder.append(run_dir, TunePostResult(
        f"tune-post: best {fmt_point(result.best)} mAP {result.best['mAP']:.4f} vs defaults "
        f"{fmt_point(result.default)} mAP {result.default['mAP']:.4f}"
        + (f"; {fmt_choices(result)}" if fmt_choices(result) else "")
        + (f"; applied to {result.applied_to}" if result.applied_to else ""),
        tune_post={"best": result.best, "default": result.default, "applied_to": result.applied_to,
                   "points": len(result.rows), "mode": result.mode, "images": result.images,
                   "checkpoint": result.checkpoint, **result.extra}))
    try:
        journal.write(run_dir)
    except Exception:  # noqa: BLE001 - the journal is a courtesy
        pass


def fmt_point(p: dict[str, Any]) -> str:
    return f"nms_iou {p['postprocess.nms_iou']:g}, score_threshold {p['postprocess.score_threshold']:g}, " \
           f"top_k {p['postprocess.top_k']}" + (", flip test" if p.get(FLIP) else "") \
        + (f", quality_weight {p[QUALITY]:g}" if QUALITY in p else "") \
        + (f", shape_vote {p[VOTE]:g}" if p.get(VOTE) else "")


def fmt_choices(result: PostResult) -> str:
    """The choices made before the grid, in words: the flip test, the box quality's weight ("" when neither)."""
    said = []
    f = result.extra.get("flip_test")
    if f:
        said.append(f"flip test (翻转测试) at the run's thresholds: mAP {f['on']:.4f} on vs {f['off']:.4f} off → "
                    + ("on" if f["chosen"] else "off"))
    for key, name, zero in (("quality_weight", "box quality (框质量) weight", "at 0"),
                            ("shape_vote", "neighbours' shape vote (邻格投票) p =", "off")):
        c = result.extra.get(key)
        if c:
            said.append(f"{name} {c['chosen']:g}: mAP {c['mAP'][str(c['chosen'])]:.4f} vs {c['mAP'][str(0.0)]:.4f} "
                        f"{zero} (tried {', '.join(f'{float(v):g}' for v in c['mAP'])})")
    return "; ".join(said)
