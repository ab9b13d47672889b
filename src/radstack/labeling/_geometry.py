"""Validation and geometry shared by :mod:`.agreement` and :mod:`.consensus` (numpy only, no I/O).

Boxes are ``[x0, y0, x1, y1]`` in pixel-edge coordinates (DICOM's convention: ``(0, 0)`` is the first
pixel's outer corner), so a one-pixel box is ``[0, 0, 1, 1]`` and its area is ``(x1 - x0) * (y1 - y0)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: One reader's boxes: a sequence of ``[x0, y0, x1, y1]`` or an ``(n, 4)`` array.
BoxesLike = Sequence[Sequence[float]] | NDArray[Any]
#: A box as returned: ``(x0, y0, x1, y1)``.
Box = tuple[float, float, float, float]


def is_missing(value: object) -> bool:
    """Whether a rating is absent: ``None`` or a floating NaN."""
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def as_boxes(boxes: BoxesLike, what: str) -> NDArray[np.float64]:
    """``boxes`` as a validated ``(n, 4)`` float array.

    Raises
    ------
    ValueError
        A box that is not four finite numbers, or whose edges are inverted or equal (zero area).
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{what}: boxes must be [x0, y0, x1, y1] rows, got an array of shape {array.shape}")
    for i, (x0, y0, x1, y1) in enumerate(array.tolist()):
        if not all(math.isfinite(c) for c in (x0, y0, x1, y1)):
            raise ValueError(f"{what}: box {i} {[x0, y0, x1, y1]} has a non-finite coordinate")
        if not (x0 < x1 and y0 < y1):
            raise ValueError(
                f"{what}: box {i} {[x0, y0, x1, y1]} is inverted or empty; x0 < x1 and y0 < y1 are required"
            )
    return array


def check_iou_threshold(iou_threshold: float) -> None:
    """Refuse an IoU threshold outside ``(0, 1]`` (at 0 every pair of boxes would match).

    Raises
    ------
    ValueError
        The threshold is not in ``(0, 1]``.
    """
    if not (0.0 < iou_threshold <= 1.0):
        raise ValueError(f"iou_threshold {iou_threshold} must be in (0, 1]")


def min_cost_assignment(cost: NDArray[np.float64]) -> list[tuple[int, int]]:
    """An exact minimum-cost one-to-one assignment of rows to columns (``min(n, m)`` pairs).

    The Hungarian method (Kuhn 1955; Munkres 1957) in its shortest-augmenting-path form with dual
    potentials (Jonker and Volgenant 1987), ``O(n² m)`` for ``n ≤ m``: rows are added one at a time and
    each is given a column along the cheapest alternating path under the reduced costs.
    """
    if cost.shape[0] > cost.shape[1]:
        return [(i, j) for j, i in min_cost_assignment(cost.T)]
    n, m = cost.shape
    inf = math.inf
    u = np.zeros(n + 1)  # row potentials (index 0 unused)
    v = np.zeros(m + 1)  # column potentials; column 0 is the virtual start
    row_of = np.zeros(m + 1, dtype=np.int64)  # row (1-based) assigned to each column, 0 = free
    way = np.zeros(m + 1, dtype=np.int64)  # previous column on the shortest path
    for i in range(1, n + 1):
        row_of[0] = i
        j0 = 0
        min_slack = np.full(m + 1, inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = int(row_of[j0])
            free = ~used
            free[0] = False
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free[1:] & (reduced < min_slack[1:])
            min_slack[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free, min_slack, inf)
            j1 = int(np.argmin(candidates))
            delta = candidates[j1]
            u[row_of[used]] += delta
            v[used] -= delta
            min_slack[free] -= delta
            j0 = j1
            if row_of[j0] == 0:
                break
        while j0 != 0:  # flip the augmenting path
            j1 = int(way[j0])
            row_of[j0] = row_of[j1]
            j0 = j1
    return sorted((int(row_of[j]) - 1, j - 1) for j in range(1, m + 1) if row_of[j] != 0)


def as_masks(masks: Sequence[Any] | NDArray[Any], what: str) -> NDArray[np.bool_]:
    """Binary masks of one shape stacked as ``(raters, ...)`` booleans.

    Raises
    ------
    ValueError
        No masks, masks of different shapes, or values other than booleans / 0 / 1.
    """
    arrays = [np.asarray(mask) for mask in masks]
    if not arrays:
        raise ValueError(f"{what}: no masks given")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{what}: masks of different shapes {sorted(shapes)}; all must have one shape")
    for i, a in enumerate(arrays):
        if a.size == 0:
            raise ValueError(f"{what}: mask {i} has no pixels (shape {a.shape})")
        if a.dtype != np.bool_ and not np.isin(a, (0, 1)).all():
            raise ValueError(
                f"{what}: mask {i} holds values other than 0/1 (dtype {a.dtype}); masks are binary"
            )
    return np.stack([a.astype(bool) for a in arrays])
