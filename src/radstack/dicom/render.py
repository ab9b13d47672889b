"""Rendering a frame for display (PS3.18 §8.3.5 rendered resources, PS3.3 §C.11 LUTs).

Pure functions: samples in, JPEG, PNG or GIF bytes out. The caller picks a reduced HTJ2K resolution
that still covers the viewport, so a preview of a large radiograph decodes only a fraction of it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = [
    "DEFAULT_RENDERED_MEDIA_TYPE",
    "RENDERED_MEDIA_TYPES",
    "RenderParams",
    "VoiFunctionValues",
    "encode_image",
    "fit_size",
    "parse_viewport",
    "parse_window",
    "to_display",
]


class VoiFunctionValues(Enum):
    """VOI LUT Function (0028,1056), PS3.3 §C.11.2.1.3."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


#: The Default rendered media type of a Single Frame Image (PS3.18 Table 8.7.4-1, "D"): what a
#: rendered request gets when it accepts nothing that is offered (PS3.18 §8.3.3.1).
DEFAULT_RENDERED_MEDIA_TYPE = "image/jpeg"
#: The rendered media types offered, default first: image/gif and image/png are Required for a
#: Single Frame Image (PS3.18 Table 8.7.4-1, "R").
RENDERED_MEDIA_TYPES = (DEFAULT_RENDERED_MEDIA_TYPE, "image/png", "image/gif")


@dataclass(frozen=True, slots=True)
class RenderParams:
    """What a rendered request asks for (PS3.18 Table 8.3.5-1)."""

    media_type: str = "image/jpeg"
    quality: int = 75
    window: tuple[float, float, VoiFunctionValues] | None = None
    viewport: tuple[int, int] | None = None


def parse_window(value: str | None) -> tuple[float, float, VoiFunctionValues] | None:
    """``window=center,width,function`` (PS3.18 §8.3.5.1.4); ``None`` when absent.

    Raises
    ------
    ValueError
        With a message naming the bad value.
    """
    if not value:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError(f"window {value!r} must be center,width[,function]")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"window {value!r} must start with two numbers") from None
    if not math.isfinite(center) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"window {value!r} needs a finite center and a positive width")
    function = VoiFunctionValues.LINEAR
    if len(parts) == 3:
        try:
            function = VoiFunctionValues(parts[2].upper().replace("-", "_"))
        except ValueError:
            raise ValueError(
                f"window function {parts[2]!r} must be linear, linear-exact or sigmoid"
            ) from None
    return center, width, function


def parse_viewport(value: str | None) -> tuple[int, int] | None:
    """``viewport=vw,vh`` (PS3.18 §8.3.5.1.3; source-region parameters are not supported)."""
    if not value:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"viewport {value!r} must be two positive integers vw,vh")
    width, height = int(parts[0]), int(parts[1])
    if not 0 < width <= 8192 or not 0 < height <= 8192:
        raise ValueError(f"viewport {value!r} must be between 1 and 8192 pixels each way")
    return width, height


def fit_size(columns: int, rows: int, viewport: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of the image scaled to fit ``viewport``, aspect ratio kept, never enlarged."""
    if viewport is None:
        return columns, rows
    scale = min(viewport[0] / columns, viewport[1] / rows, 1.0)
    return max(1, round(columns * scale)), max(1, round(rows * scale))


def to_display(
    frame: NDArray[np.integer],
    *,
    photometric: str,
    slope: float,
    intercept: float,
    window: tuple[float, float, VoiFunctionValues] | None,
) -> NDArray[np.uint8]:
    """Map stored samples to 8-bit display values.

    Grayscale: modality LUT (rescale), then the VOI window (PS3.3 §C.11.2.1.2: linear,
    linear-exact, sigmoid), falling back to the data's range; MONOCHROME1 is inverted. Colour
    samples are scaled to 8 bits. Samples of up to 16 bits go through one lookup table built for
    every possible stored value (cached), so the per-pixel work is a single gather.
    """
    if frame.ndim == 3:
        if frame.dtype == np.uint8:
            return frame.astype(np.uint8, copy=False)
        top = float(frame.max()) or 1.0
        scaled: NDArray[np.uint8] = np.clip(frame.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
        return scaled
    if window is None:
        low, high = float(frame.min()) * slope + intercept, float(frame.max()) * slope + intercept
        low, high = min(low, high), max(low, high)
        window = ((low + high) / 2, max(high - low, 1.0), VoiFunctionValues.LINEAR_EXACT)
    invert = photometric == "MONOCHROME1"
    if frame.dtype.itemsize <= 2 and frame.dtype.kind in "ui":
        lut = _display_lut(frame.dtype.str, slope, intercept, window, invert)
        unsigned = frame.view(np.dtype(f"<u{frame.dtype.itemsize}"))
        result: NDArray[np.uint8] = lut[unsigned]
        return result
    return _display_values(frame.astype(np.float64) * slope + intercept, window, invert)


@lru_cache(maxsize=64)
def _display_lut(
    dtype: str, slope: float, intercept: float, window: tuple[float, float, VoiFunctionValues], invert: bool
) -> NDArray[np.uint8]:
    """Display value of every bit pattern of ``dtype`` (indexed by the pattern read as unsigned)."""
    size = np.dtype(dtype).itemsize
    stored = np.arange(1 << (8 * size), dtype=f"<u{size}").view(dtype).astype(np.float64)
    return _display_values(stored * slope + intercept, window, invert)


def _display_values(
    values: NDArray[np.floating], window: tuple[float, float, VoiFunctionValues], invert: bool
) -> NDArray[np.uint8]:
    center, width, function = window
    if function is VoiFunctionValues.SIGMOID:
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function is VoiFunctionValues.LINEAR_EXACT:
        out = ((values - (center - width / 2)) / width) * 255.0
    else:
        out = ((values - (center - 0.5)) / (width - 1 if width > 1 else 1) + 0.5) * 255.0
    display: NDArray[np.uint8] = np.clip(out, 0, 255).astype(np.uint8)
    if invert:
        display = (255 - display).astype(np.uint8)
    return display


def encode_image(pixels: NDArray[np.uint8], size: tuple[int, int], media_type: str, quality: int) -> bytes:
    """Resize ``pixels`` to ``size`` and encode as one of :data:`RENDERED_MEDIA_TYPES`.

    JPEG is baseline 8-bit (PS3.18 §8.7.4). GIF holds 256 palette entries: a grey image keeps
    every one of its 8-bit levels; a colour image is reduced to an adaptive palette.
    """
    image = Image.fromarray(pixels)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    if media_type == "image/png":
        image.save(buffer, format="PNG", compress_level=1)
    elif media_type == "image/gif":
        if image.mode != "L":
            image = image.quantize(256)
        image.save(buffer, format="GIF")
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
