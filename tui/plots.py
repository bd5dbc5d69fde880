"""Curves for the monitor: a capped series, thinning to what a plot can show, log scale when it helps, and the
plotext widget class (imported once, late: it is slow to import)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    pass

MAX_PLOT_POINTS = 240  # points per series on screen; a plot is at most ~80 braille columns wide


_CACHED_PLOT: Any = None


def cached_plot_class() -> Any:
    """PlotextPlot that rebuilds its figure only when the data (``version``), size or theme changed.

    The stock widget runs plotext's build (~50 ms of pure Python) on every render, e.g. each time
    the Monitor tab is shown again; this one keeps the last Text.
    """
    global _CACHED_PLOT
    if _CACHED_PLOT is None:
        from textual_plotext import PlotextPlot

        class CachedPlot(PlotextPlot):
            version = 0
            _cache: tuple[Any, Any] | None = None

            cost = 0.0  # seconds the last build took (the Monitor paces redraws by it)

            def render(self) -> Any:
                key = (self.version, self.size, self.app.theme)
                if self._cache is None or self._cache[0] != key:
                    t0 = time.perf_counter()
                    self._cache = (key, super().render())
                    CachedPlot.cost = time.perf_counter() - t0
                return self._cache[1]

        _CACHED_PLOT = CachedPlot
    return _CACHED_PLOT


def wants_log(series: Any) -> bool:
    """A log y-axis only for a curve that spans a real range of positive values (a decay, a warmup).

    plotext's log scale breaks on a flat curve: the degenerate range comes out inverted (small values at
    the top) and the line lands on the wrong label. A flat or nearly flat lr reads right on a linear axis.
    """
    if series is None:
        return False
    ys = series[1]
    if not ys:
        return False
    lo, hi = min(ys), max(ys)
    return lo > 0 and hi / lo >= 2.0


def visible(widget: Any) -> bool:
    """Whether any of the widget is inside its scrolling parent's viewport (narrow layouts scroll plots)."""
    try:
        geo = widget.screen.find_widget(widget)
    except Exception:  # noqa: BLE001 - not laid out yet / not on the compositor's map
        return False
    return bool(geo.region.intersection(geo.clip))


class Series:
    """A curve's history in bounded memory: past ``cap`` points it keeps every other one and from then on
    samples every ``stride``-th new point (doubling as it fills), so a million logged steps cost what a few
    thousand do. The newest point is always kept. Reads as (xs, ys): ``series[0]``, ``series[1]``, ``*series``."""

    __slots__ = ("_xs", "_ys", "_stride", "_seen", "_last", "cap")

    def __init__(self, cap: int = 4096):
        self._xs: list[float] = []
        self._ys: list[float] = []
        self._stride, self._seen, self._last = 1, 0, None
        self.cap = cap

    def add(self, x: float, y: float) -> None:
        self._seen += 1
        self._last = (x, y)
        if self._seen % self._stride:
            return
        self._xs.append(x)
        self._ys.append(y)
        if len(self._xs) > self.cap:
            self._xs, self._ys = self._xs[::2], self._ys[::2]
            self._stride *= 2

    def _with_last(self, seq: list[float], i: int) -> list[float]:
        if self._last is None or (self._xs and self._xs[-1] == self._last[0]):
            return seq
        return seq + [self._last[i]]

    def __getitem__(self, i: int) -> list[float]:
        return self._with_last(self._xs if i == 0 else self._ys, i)

    def __iter__(self):
        return iter((self[0], self[1]))

    def __len__(self) -> int:
        return len(self[0])


def thin(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    n = len(xs)
    if n <= MAX_PLOT_POINTS:
        return xs, ys
    stride = n / MAX_PLOT_POINTS
    idx = [int(i * stride) for i in range(MAX_PLOT_POINTS)] + [n - 1]
    return [xs[i] for i in idx], [ys[i] for i in idx]
