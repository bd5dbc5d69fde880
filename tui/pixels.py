"""Real pixels where the terminal draws them (Sixel or Kitty graphics, via textual-image), half blocks elsewhere.

A terminal says what it can draw only when asked, and it can be asked only before Textual owns stdin: ``detect``
runs once in ``run_app``, before the app starts (two queries, 0.1 s each at most). A plain SSH terminal, tmux
without Sixel, or no terminal at all (tests, pipes) keeps the half blocks, drawn here (``half_blocks``), which
any terminal with colours shows at 80×24. ``NANXI_TUNE_PIXELS=halfblocks`` skips the queries.
"""

from __future__ import annotations

import enum
import os
import sys
from typing import Any

from rich.text import Text

ENV = "NANXI_TUNE_PIXELS"


class Pixels(enum.Enum):
    HALF_BLOCKS = "halfblocks"
    SIXEL = "sixel"
    KITTY = "kitty"


_found = Pixels.HALF_BLOCKS


def detect() -> Pixels:
    """Ask the terminal once (before the app starts) whether it draws Sixel or Kitty graphics."""
    global _found
    if os.environ.get(ENV, "").lower() in (Pixels.HALF_BLOCKS.value, "off", "0", "no"):
        return _found
    if not (sys.__stdout__ and sys.__stdout__.isatty() and sys.__stdin__ and sys.__stdin__.isatty()):
        return _found
    try:
        import textual_image.widget  # noqa: F401 - importing it asks the terminal (and caches the cell size)
        from textual_image.renderable import Image, SixelImage, TGPImage
    except Exception:  # noqa: BLE001 - a terminal that answers oddly: half blocks, never a crash at start-up
        return _found
    _found = {SixelImage: Pixels.SIXEL, TGPImage: Pixels.KITTY}.get(Image, Pixels.HALF_BLOCKS)
    return _found


def set_found(p: Pixels) -> None:
    """For tests: pretend the terminal answered ``p``."""
    global _found
    _found = p


def cell_pixels() -> tuple[int, int]:
    """Pixels a cell holds: (1, 2) for half blocks; the terminal's cell size for real pixels."""
    if _found is Pixels.HALF_BLOCKS:
        return 1, 2
    from textual_image._terminal import get_cell_size

    size = get_cell_size()
    return size.width, size.height


def image_widget(id: str) -> Any:
    """The widget that shows a picture: textual-image's for real pixels, a Static for half blocks."""
    if _found is Pixels.HALF_BLOCKS:
        from textual.widgets import Static

        return Static("", id=id)
    from textual_image.widget import SixelImage, TGPImage

    return (SixelImage if _found is Pixels.SIXEL else TGPImage)(id=id)


def show(widget: Any, image: Any, cols: int, rows: int) -> None:
    """Put a PIL image (already ``cols × rows`` cells' pixels) in the widget ``image_widget`` made."""
    if _found is Pixels.HALF_BLOCKS:
        widget.update(half_blocks(image, cols, rows))
    else:
        widget.image = image


def half_blocks(image: Any, cols: int, rows: int) -> Text:
    """A PIL image as ``rows`` lines of ``cols`` half-block cells (aspect kept, centred on black)."""
    from PIL import Image

    w, h = image.size
    scale = min(cols / w, 2 * rows / h)
    small = image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    canvas = Image.new("RGB", (cols, 2 * rows))
    canvas.paste(small, ((cols - small.width) // 2, (2 * rows - small.height) // 2))
    px = canvas.load()
    out = Text()
    for y in range(rows):
        for x in range(cols):
            top, bottom = px[x, 2 * y], px[x, 2 * y + 1]
            out.append("▀", style=f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})")
        if y < rows - 1:
            out.append("\n")
    return out
