"""The notes' half-decade grid — 0.001 0.003 0.01 0.03 0.1 0.3 1 3 10 — and the seven-stars window on it."""

from __future__ import annotations

import math

STARS = 7


def grid_value(i: int) -> float:
    """The i-th value of the grid …, 0.1 (i=-2), 0.3 (-1), 1 (0), 3 (1), 10 (2), 30 (3), …"""
    k, odd = divmod(i, 2)
    return float(f"{(3.0 if odd else 1.0) * 10.0 ** k:.12g}")


def grid_index(value: float) -> int:
    """Index of the grid value nearest to ``value`` on a log scale (0.002 → 0.003's index)."""
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"a seven-stars sweep needs a positive start value, got {value!r}")
    guess = round(2 * math.log10(value))
    return min(range(guess - 2, guess + 3), key=lambda i: abs(math.log(value / grid_value(i))))


def lower(value: float) -> float:
    """One step down the grid: the largest grid value strictly below ``value`` (0.01 → 0.003, 0.003 → 0.001; an
    off-grid value snaps to the grid below: 0.002 → 0.001)."""
    i = grid_index(value)
    while grid_value(i) >= value * (1 - 1e-9):
        i -= 1
    return grid_value(i)


def window(start: float, n: int = STARS) -> list[float]:
    """``n`` consecutive grid values from ``start`` (snapped to the grid) upward."""
    i = grid_index(start)
    return [grid_value(i + j) for j in range(n)]


def slid_window(values: list[float], best: float) -> list[float] | None:
    """The next window when ``best`` sits at an edge of ``values`` (centred on it), else None."""
    if not values or best not in (values[0], values[-1]) or len(values) < 2:
        return None
    n = len(values)
    return [grid_value(grid_index(best) - n // 2 + j) for j in range(n)]
