"""Rendering maths: the cached lookup table gives what the PS3.3 §C.11.2.1.2 formulas give."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from radstack.dicom.codecs import encode_htj2k, htj2k_prefix, htj2k_read_levels
from radstack.dicom.render import (
    RENDERED_MEDIA_TYPES,
    VoiFunctionValues,
    _display_values,
    encode_image,
    fit_size,
    parse_viewport,
    parse_window,
    to_display,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
@pytest.mark.parametrize("function", list(VoiFunctionValues))
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_lookup_table_matches_direct_formula(
    dtype: type[np.integer[Any]], function: VoiFunctionValues, photometric: str
) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    frame = rng.integers(info.min, info.max, size=(37, 41), endpoint=True).astype(dtype)
    values = frame.astype(np.float64) * 1.5 - 1024.0
    window = (float(values.mean()), float(np.ptp(values)) / 2, function)
    got = to_display(frame, photometric=photometric, slope=1.5, intercept=-1024.0, window=window)
    expected = _display_values(frame.astype(np.float64) * 1.5 - 1024.0, window, photometric == "MONOCHROME1")
    assert got.dtype == np.uint8 and got.shape == frame.shape
    assert np.array_equal(got, expected)
    assert len(np.unique(got)) > 2, "a window over this range must produce a grey ramp"


def test_without_window_the_data_range_fills_the_display() -> None:
    frame = np.linspace(100, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    shown = to_display(frame, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None)
    assert shown.min() == 0 and shown.max() >= 254


def test_parse_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="'40'"):
        parse_window("40")
    with pytest.raises(ValueError, match="'0,10'"):
        parse_viewport("0,10")
    assert fit_size(2048, 2500, (512, 512)) == (419, 512)
    assert fit_size(64, 64, (512, 512)) == (64, 64), "never enlarged"


@pytest.mark.parametrize("media_type", RENDERED_MEDIA_TYPES)
def test_each_rendered_media_type_decodes_to_the_asked_size(media_type: str) -> None:
    grey = np.tile(np.arange(256, dtype=np.uint8), (40, 1))
    colour = np.stack([grey, grey[:, ::-1], np.full_like(grey, 90)], axis=-1)
    for pixels in (grey, colour):
        image = Image.open(io.BytesIO(encode_image(pixels, (128, 20), media_type, 90)))
        assert Image.MIME[image.format or ""] == media_type
        assert image.size == (128, 20)
    lossless = Image.open(io.BytesIO(encode_image(grey, (256, 40), media_type, 90))).convert("L")
    if media_type != "image/jpeg":
        assert np.array_equal(np.asarray(lossless), grey), "every 8-bit grey level is kept"


@pytest.mark.parametrize("skipres", [0, 1, 2, 3])
def test_reading_only_the_needed_levels(skipres: int) -> None:
    frame = np.random.default_rng(3).integers(0, 4096, size=(512, 384)).astype(np.uint16)
    data = encode_htj2k(frame)
    read = 0

    def read_at(start: int, length: int) -> bytes:
        nonlocal read
        chunk = data[start : start + length]
        read += len(chunk)
        return chunk

    levels = 6  # imagecodecs' default: 5 decompositions
    prefix = htj2k_read_levels(read_at, skipres)
    assert prefix == htj2k_prefix(data, levels - 1 - skipres)
    if skipres:
        assert read < len(data) / 2, "a reduced resolution must not read the whole frame"
