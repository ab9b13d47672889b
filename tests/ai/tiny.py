"""A tiny radiograph generator for the AI tests: a bright bar of "bone" on noise, a fracture a dark line.

Deliberately independent of :mod:`radstack.ai.synthetic`: these tests check the learning machinery, so
their data is small (64-128 px), quick to make and obviously learnable.
"""

from __future__ import annotations

import numpy as np

from radstack.ai.detector import DetectorConfig
from radstack.ai.samples import Sample

#: A detector small enough to learn the tiny images in a few epochs.
TINY_DETECTOR = DetectorConfig(
    widths=(8, 16, 24, 32, 48), blocks=(0, 0, 1, 1, 0), neck_width=16, max_detections=8
)


def tiny_sample(rng: np.random.Generator, size: int = 96, fracture: bool | None = None) -> Sample:
    """One image: uint16 (12-bit) noise, a horizontal or vertical bar, and maybe a dark gap across it."""
    if fracture is None:
        fracture = bool(rng.random() < 0.5)
    image = rng.normal(600, 60, size=(size, size))
    thickness = int(rng.integers(size // 8, size // 5))
    start = int(rng.integers(size // 6, size - size // 6 - thickness))
    vertical = bool(rng.random() < 0.5)
    bar = np.zeros((size, size), bool)
    if vertical:
        bar[:, start : start + thickness] = True
    else:
        bar[start : start + thickness, :] = True
    image[bar] += rng.normal(1800, 100)
    boxes: list[list[float]] = []
    kind = None
    if fracture:
        at = int(rng.integers(size // 5, size - size // 5))
        gap = int(rng.integers(2, 4))
        kind = "transverse" if gap == 2 else "displaced"
        lo, hi = at, at + gap
        if vertical:
            image[lo:hi, start : start + thickness] -= 1500
            boxes.append([start - 2, lo - 4, start + thickness + 2, hi + 4])
        else:
            image[start : start + thickness, lo:hi] -= 1500
            boxes.append([lo - 4, start - 2, hi + 4, start + thickness + 2])
    image += rng.normal(0, 40, size=(size, size))
    pixels = np.clip(image, 0, 4095).astype(np.uint16)
    return Sample(
        image=pixels,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        label=fracture,
        patient_id=f"P{int(rng.integers(1_000_000))}",
        fracture_type=kind,
    )


def tiny_dataset(n: int, seed: int, size: int = 96) -> list[Sample]:
    """``n`` samples, half with a fracture (alternating, so every split has both classes)."""
    rng = np.random.default_rng(seed)
    return [tiny_sample(rng, size, fracture=bool(i % 2)) for i in range(n)]
