"""Predictions on screen: a run's val images with ground truth and predicted boxes, worst images first.

Real pixels where the terminal draws them (Sixel or Kitty graphics, ``tui/pixels.py``), half blocks elsewhere
(▀: the top pixel as foreground, the bottom one as background), so any SSH terminal with colours shows the
image at 80×24; the boxes are drawn on the pixels the terminal shows; their meaning is also listed in words beside it (✓ hit,
✗ false, ○ missed) so nothing depends on colour alone. ←/→ move through the images, +/− the score threshold.
Torch loads only in the worker thread that predicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from nanxi_tune.engine.evaluation.errors import match_image
from nanxi_tune.tui import pixels

GT_COLOUR = (255, 255, 255)  # ground truth: white, dotted; predictions: their class's colour, solid


def boxed(image: Any, px_w: int, px_h: int, gt: list, preds: list, classes: list[str]) -> Any:
    """The image scaled to fit ``px_w × px_h`` (the cells' pixels) with 1-pixel boxes on it (a box drawn before
    scaling would vanish)."""
    from PIL import Image, ImageDraw

    from nanxi_tune.engine.inference.draw import colour

    w, h = image.size
    scale = min(px_w / w, px_h / h)
    small = image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    d = ImageDraw.Draw(small)
    for box in gt:
        x1, y1, x2, y2 = (v * scale for v in box)
        for x in range(int(x1), int(x2) + 1, 2):  # dotted
            d.point([(x, y1), (x, y2)], fill=GT_COLOUR)
        for y in range(int(y1), int(y2) + 1, 2):
            d.point([(x1, y), (x2, y)], fill=GT_COLOUR)
    for box, name in preds:
        d.rectangle([v * scale for v in box], outline=colour(name, classes))
    return small


class PredictionsScreen(Screen):
    """``app.push_screen(PredictionsScreen(run_dir))``: predicts on the run's val set once, then browses."""

    BINDINGS = [
        Binding("right", "move(1)", "Next", key_display="→", tooltip="The next image (worst first)"),
        Binding("left", "move(-1)", "Prev", key_display="←", tooltip="The previous image"),
        Binding("plus,equals_sign", "threshold(0.05)", "Score+", key_display="+",
                tooltip="Raise the score threshold by 0.05"),
        Binding("minus", "threshold(-0.05)", "Score−", key_display="−", tooltip="Lower the score threshold by 0.05"),
        Binding("escape", "app.pop_screen", "Close", tooltip="Close the predictions"),
    ]

    def __init__(self, run_dir: Path | str, which: str = "best") -> None:
        super().__init__()
        self.run_dir, self.which = Path(run_dir), which
        self.items: list[dict[str, Any]] = []  # per image: prediction, gt, the PIL image
        self.class_names: list[str] = []
        self.index = 0
        self.threshold = 0.3

    def compose(self) -> ComposeResult:
        yield Label(f"[b]Predictions[/b] — {self.run_dir.name} ({self.which}.pt, val): worst images first", id="pred-title")
        yield Static("predicting on the val images…", id="pred-info")
        with Horizontal(id="pred-body"):
            yield pixels.image_widget("pred-image")
            yield Static("", id="pred-list")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.threshold = 0.3
        self._predict()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _predict(self) -> None:
        from PIL import Image

        from nanxi_tune.engine.inference.predict import Predictor

        try:
            p = Predictor(self.run_dir, self.which, {"postprocess.score_threshold": 0.05})
            preds = p.on_val()
            items = []
            for pr in preds:
                gt, gt_names = p.ground_truth(pr.image_id)
                items.append({"pred": pr, "gt": gt, "gt_names": gt_names,
                              "image": Image.open(p.image_path(pr)).convert("RGB")})
        except Exception as err:  # noqa: BLE001 - a run without weights, an unreadable image: said, not raised
            self.app.call_from_thread(self._info, Text(f"cannot predict: {err}", style="bold red"))
            return
        self.app.call_from_thread(self._loaded, items, p.class_names)

    def _info(self, text: Any) -> None:
        self.query_one("#pred-info", Static).update(text)

    def _loaded(self, items: list[dict[str, Any]], classes: list[str]) -> None:
        self.items, self.class_names = items, classes
        self._order()
        self.index = 0
        self._show()

    def _match(self, item: dict[str, Any]):
        pr = item["pred"]
        return match_image(item["gt"], item["gt_names"], pr.boxes, pr.names, pr.scores, self.threshold)

    def _order(self) -> None:
        self.items.sort(key=lambda it: -self._match(it).errors)  # stable: ties keep the val order

    def action_move(self, delta: int) -> None:
        if self.items:
            self.index = (self.index + int(delta)) % len(self.items)
            self._show()

    def action_threshold(self, delta: float) -> None:
        self.threshold = min(0.95, max(0.05, round(self.threshold + float(delta), 2)))
        if self.items:
            shown = self.items[self.index]
            self._order()
            self.index = self.items.index(shown)  # the same image, seen at the new threshold
            self._show()

    def _show(self) -> None:
        if not self.items:
            self._info("no val images to show")
            return
        item = self.items[self.index]
        pr, m = item["pred"], self._match(item)
        image_w = max(20, self.app.size.width - 34)
        image_h = max(6, self.app.size.height - 5)
        preds = [(pr.boxes[i], pr.names[i]) for i in m.kept]
        cw, ch = pixels.cell_pixels()
        small = boxed(item["image"], image_w * cw, image_h * ch, item["gt"], preds, self.class_names)
        pixels.show(self.query_one("#pred-image"), small, image_w, image_h)
        lines = Text()
        for i, ok in zip(m.kept, m.hit):
            lines.append(f"{'✓' if ok else '✗'} {pr.names[i]} {pr.scores[i]:.2f}\n",
                         style="" if ok else "bold")
        for j in m.missed:
            lines.append(f"○ gt {item['gt_names'][j]} missed\n", style="bold")
        lines.append("\n✓ hit  ✗ false  ○ missed\nsolid: prediction\ndotted: ground truth", style="dim")
        self.query_one("#pred-list", Static).update(lines)
        self._info(f"image {self.index + 1}/{len(self.items)} {pr.source} · score ≥ {self.threshold:.2f} · "
                   f"{len(m.kept)} predicted, {len(item['gt'])} labelled · {m.errors} errors")
