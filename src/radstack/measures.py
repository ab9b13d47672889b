"""Small measures that both the AI package and labeling use (neither may import the other).

Pure functions over numbers and arrays: no I/O, nothing of radstack's imported.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Z95", "box_iou", "wilson_interval"]

#: The standard normal quantile of a two-sided 95 % interval.
Z95 = 1.959963984540054


def box_iou(a: NDArray[Any], b: NDArray[Any]) -> NDArray[np.float64]:
    """IoU matrix ``(len(a), len(b))`` of ``[x0, y0, x1, y1]`` boxes (0 where the union is empty)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        result: NDArray[np.float64] = np.where(union > 0, inter / union, 0.0)
    return result


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95% by default).

    ``(p̂ + z²/2n ± z √(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)`` (Wilson 1927, "Probable inference, the law
    of succession, and statistical inference", JASA 22:209-212); it stays inside ``[0, 1]`` and keeps
    its coverage at 0 and n successes, unlike the Wald interval (Newcombe 1998, Stat. Med. 17:857-872).

    Raises
    ------
    ValueError
        ``n < 1`` or ``successes`` outside ``[0, n]``.
    """
    if n < 1 or not (0 <= successes <= n):
        raise ValueError(f"wilson_interval: {successes} successes of {n}; need n ≥ 1 and 0 ≤ successes ≤ n")
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
