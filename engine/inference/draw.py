"""Boxes drawn onto an image: predictions solid with "name 0.87", ground truth dashed and thinner with "gt name".

GT and predictions differ by line style, width and label text, never by colour alone (the colour follows the
class, the same in both). A pure function: the image given is left as it was.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

# strong hues that read on photos (no white, no black); a class keeps its colour from its name
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (255, 99, 71), (60, 180, 75), (145, 30, 180), (70, 240, 240), (240, 50, 230),
           (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]

Box = Sequence[float]


def colour(name: str, classes: Sequence[str] | None = None) -> tuple[int, int, int]:
    """A class's colour: by its index in ``classes`` (distinct for up to 16 classes), else from its name; stable
    across images either way."""
    if classes and name in classes:
        return PALETTE[list(classes).index(name) % len(PALETTE)]
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def _dashed_rect(d: ImageDraw.ImageDraw, box: Box, fill, width: int, dash: int) -> None:
    x1, y1, x2, y2 = box
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
        n = max(1, int(length // dash))
        for i in range(0, n, 2):  # every other segment
            t0, t1 = i / n, min(i + 1, n) / n
            d.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                    (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=fill, width=width)


def _label(d: ImageDraw.ImageDraw, font, xy: tuple[float, float], text: str, fill, size) -> None:
    """Text on a filled tab whose bottom-left corner is ``xy`` (moved inside the image where it would leave it)."""
    left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 2
    x = min(max(xy[0], 0), max(size[0] - tw, 0))
    y = min(max(xy[1] - th, 0), max(size[1] - th, 0))
    d.rectangle([x, y, x + tw, y + th], fill=fill)
    ink = (0, 0, 0) if sum(fill) > 300 else (255, 255, 255)
    d.text((x + 2 - left, y + 1 - top), text, fill=ink, font=font)


def draw(image: Image.Image, boxes: Sequence[Box], labels: list[str], scores: Sequence[float],
         gt_boxes: Sequence[Box] | None = None, gt_labels: list[str] | None = None,
         classes: Sequence[str] | None = None) -> Image.Image:
    """A copy of ``image`` (RGB) with the predicted boxes (xyxy pixels) solid and labelled "name score", and the
    ground-truth boxes, if given, dashed and thinner, labelled "gt name" at their bottom edge. ``classes`` (all the
    model's class names) gives each class its own colour."""
    out = image.convert("RGB")  # always a copy
    d = ImageDraw.Draw(out)
    side = min(out.size)
    width = max(2, round(side / 250))
    font = ImageFont.load_default(size=max(10, round(side / 40)))
    for box, name in zip(gt_boxes or [], gt_labels or [""] * len(gt_boxes or [])):
        c = colour(name, classes)
        _dashed_rect(d, box, c, max(1, width // 2), dash=max(4, 3 * width))
        _label(d, font, (box[0], box[3]), f"gt {name}".strip(), c, out.size)
    # lowest score first, so the best box and its label end up on top
    for box, name, score in sorted(zip(boxes, labels, scores), key=lambda t: t[2]):
        c = colour(name, classes)
        d.rectangle(list(box), outline=c, width=width)
        _label(d, font, (box[0], box[1]), f"{name} {score:.2f}", c, out.size)
    return out
