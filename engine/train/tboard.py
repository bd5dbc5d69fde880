"""TensorBoard beside the TUI: rank 0's trainer feeds its events to a Board, which writes RUN/tensorboard/.

Scalars at the trainer's global step (train/…, val/…, errors/dAP50_<kind>, classes/AP50_<id>) and, at each
evaluation, a few val images with the EMA model's boxes and the ground truth (engine.inference.draw) as val/predictions.
The record (metrics.jsonl) stays the source of truth; this is a view of it, so a Board that fails (a full disk,
a broken package) warns once and switches itself off, and training goes on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np

from ..run.events import EvalMetrics, Event, Log, StepMetrics
from ..metric_keys import COCO_METRICS, LOG_WEIGHTS, LOSSES

FOLDER = "tensorboard"
IMAGES = 4  # val images drawn per evaluation: the same first ones each time, so the slider shows them change
MAX_SIDE = 320  # larger images are shrunk: PNG encoding and the event file grow with the pixels
DRAW_SCORE = 0.3  # eval keeps boxes down to postprocess.score_threshold (0.01) for AP; a picture needs fewer
TRAIN_KEYS = (*LOSSES, "lr", "grad_norm", *LOG_WEIGHTS, "images_per_s", "ema_l2")
VAL_KEYS = (*LOSSES, *COCO_METRICS, "online_mAP", "online_AP50")


def folder(run_dir: Path | str) -> Path:
    return Path(run_dir) / FOLDER


def scalars(event: Event) -> dict[str, float]:
    """The TensorBoard tags and values of a metrics event (nothing for other events)."""
    if isinstance(event, StepMetrics):
        return {f"train/{k}": float(getattr(event, k)) for k in TRAIN_KEYS}
    if not isinstance(event, EvalMetrics):
        return {}
    out = {f"val/{k}": float(getattr(event, k)) for k in VAL_KEYS if getattr(event, k) is not None}
    errors = event.errors or {}
    out |= {f"errors/dAP50_{kind}": float(v) for kind, v in errors.get("delta", {}).items()}
    out |= {f"classes/AP50_{cid}": float(v) for cid, v in errors.get("per_class_ap50", {}).items()}
    return out


def open_board(trainer) -> Board | None:
    """Rank 0's Board for ``trainer`` after its setup (so a resume knows its step), or None when off."""
    if not trainer.dist.is_main or not trainer.cfg.train.tensorboard:
        return None
    return Board(trainer.run_dir, trainer.emit, trainer.step, lambda: _val_pictures(trainer))


class Board:
    """Writes scalars and pictures; ``say`` gets the one warning if the writer fails.

    A fresh run purges everything from step 0 (an earlier attempt in the same folder); a resume at step N
    everything after N, what a killed run wrote past its last checkpoint (SummaryWriter's purge_step)."""

    def __init__(self, run_dir: Path | str, say: Callable[[Event], None], start_step: int,
                 pictures: Callable[[], list[np.ndarray]] | None = None):
        self.say, self.pictures, self.writer = say, pictures, None
        self.on = True
        with self._guard("could not be opened"):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder(run_dir)), purge_step=start_step + 1 if start_step else 0)

    def feed(self, event: Event) -> None:
        values = scalars(event) if self.on else {}
        if not values:
            return
        with self._guard("failed"):
            for tag, v in values.items():
                self.writer.add_scalar(tag, v, event.step, walltime=event.time)
            if isinstance(event, EvalMetrics):
                images = self.pictures() if self.pictures else []
                if images:
                    self.writer.add_images("val/predictions", _same_size(images), event.step,
                                           walltime=event.time, dataformats="NHWC")
                self.writer.flush()

    def close(self) -> None:
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        with contextlib.suppress(Exception), self._guard("could not be closed"):  # in the trainer's finally
            writer.close()

    @contextlib.contextmanager
    def _guard(self, what: str):
        try:
            yield
        except Exception as err:  # noqa: BLE001 - TensorBoard is a view of the record: never a reason to stop
            if not self.on:
                return
            self.on = False
            self.say(Log(f"TensorBoard writer {what} ({type(err).__name__}: {err}); the run goes on without it "
                         "(metrics.jsonl keeps the whole record; train.tensorboard = false turns it off)", "warning"))


def _same_size(images: list[np.ndarray]) -> np.ndarray:
    """HWC uint8 images padded (black, bottom-right) to one size, as add_images wants."""
    h, w = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    out = np.zeros((len(images), h, w, 3), dtype=np.uint8)
    for k, im in enumerate(images):
        out[k, :im.shape[0], :im.shape[1]] = im
    return out


def _val_pictures(trainer) -> list[np.ndarray]:
    """The first val images with the EMA model's boxes (solid) and the ground truth (dashed), through
    engine.inference.predict's own resize → model → decode → original-pixel path, on the weights in memory."""
    from PIL import Image

    from ..data.loader import collate
    from ..inference.draw import draw
    from ..inference.predict import Predictor

    p = Predictor.of_model(trainer.run_dir, trainer.cfg, trainer.ema.module, trainer.eval_set, trainer.device)
    ds = p.val_set
    out = []
    for pred in p.on_batch(collate([ds[i] for i in range(min(IMAGES, len(ds)))])):
        i = pred.image_id
        keep = [k for k, s in enumerate(pred.scores) if s >= DRAW_SCORE]
        gt_boxes, gt_names = p.ground_truth(i)
        with Image.open(p.image_path(pred)) as im:
            f = min(1.0, MAX_SIDE / max(im.size))  # shrunk before drawing: labels keep their size
            im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))))
        pic = draw(im, _scaled([pred.boxes[k] for k in keep], f), [pred.names[k] for k in keep],
                   [pred.scores[k] for k in keep], _scaled(gt_boxes, f), gt_names, classes=p.class_names)
        out.append(np.asarray(pic, dtype=np.uint8))
    return out


def _scaled(boxes, f: float) -> list[tuple[float, ...]]:
    return [tuple(v * f for v in b) for b in boxes]
