"""Preprocessing: geometry, intensity window, inversion, and boxes mapped back to the original pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radstack.ai.preprocess import Photometric, PreprocessSpec, preprocess, reduce_ahead


def _radiograph(height: int, width: int, dtype: type = np.uint16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(100, 4000, size=(height, width)).astype(dtype)


@pytest.mark.parametrize(
    ("height", "width", "content"),
    [(2500, 2048, (512, 419)), (2048, 2500, (419, 512)), (1760, 1760, (512, 512)), (300, 200, (512, 341))],
)
def test_letterbox_keeps_aspect_and_pads_right_or_bottom(
    height: int, width: int, content: tuple[int, int]
) -> None:
    spec = PreprocessSpec(size=512)
    pixels, letterbox = preprocess(_radiograph(height, width), spec)
    assert pixels.shape == (512, 512) and pixels.dtype == np.float32
    assert (letterbox.content_height, letterbox.content_width) == content
    assert np.all(pixels[content[0] :, :] == spec.pad_value)
    assert np.all(pixels[:, content[1] :] == spec.pad_value)
    assert abs(letterbox.scale_x - letterbox.scale_y) / letterbox.scale_y < 0.01


def test_a_box_drawn_in_the_original_lands_on_the_same_structure_in_the_input_and_back() -> None:
    # A bright square at known original pixels must appear at letterbox.to_input(box) in the model input.
    image = np.full((2500, 2048), 200, np.uint16)
    box = np.array([[800.0, 1200.0, 1200.0, 1800.0]])  # x0, y0, x1, y1 (pixel edges)
    image[1200:1800, 800:1200] = 3000
    pixels, letterbox = preprocess(image, PreprocessSpec(size=512))
    x0, y0, x1, y1 = letterbox.to_input(box)[0]
    assert pixels[int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2].min() > 0.9
    assert pixels[int(y0) - 3, int(x0) : int(x1)].max() < 0.1  # just above the square: background
    np.testing.assert_allclose(letterbox.to_original(letterbox.to_input(box)), box, atol=1e-3)


def test_boxes_mapped_back_are_clipped_to_the_image() -> None:
    _, letterbox = preprocess(_radiograph(400, 300), PreprocessSpec(size=256))
    back = letterbox.to_original(np.array([[-10.0, -10.0, 256.0, 256.0]]))
    np.testing.assert_array_equal(back, [[0, 0, 300, 400]])


def test_window_is_robust_to_bit_depth_and_monochrome1_is_inverted() -> None:
    spec = PreprocessSpec(size=128)
    base = _radiograph(256, 256).astype(np.float64) / 4000  # values in (0, 1]
    ten_bit, _ = preprocess((base * 1023).astype(np.uint16), spec)
    sixteen_bit, _ = preprocess((base * 65535).astype(np.uint16), spec)
    floats, _ = preprocess(base.astype(np.float32), spec)
    assert np.abs(ten_bit - sixteen_bit).max() < 0.01
    assert np.abs(floats - sixteen_bit).max() < 0.01
    assert sixteen_bit.min() >= 0.0 and sixteen_bit.max() <= 1.0
    inverted, _ = preprocess((base * 65535).astype(np.uint16), spec, Photometric.MONOCHROME1)
    np.testing.assert_allclose(inverted, 1.0 - sixteen_bit, atol=1e-6)


def test_a_flat_image_gives_zeros_and_a_3d_array_is_refused() -> None:
    pixels, _ = preprocess(np.full((64, 64), 7, np.uint16), PreprocessSpec(size=64))
    assert not pixels.any()
    with pytest.raises(ValueError, match="2-D"):
        preprocess(np.zeros((2, 64, 64), np.uint16), PreprocessSpec(size=64))


def test_spec_round_trips_through_json_and_refuses_bad_values() -> None:
    spec = PreprocessSpec(size=384, window_low_percentile=1.0, window_high_percentile=99.0)
    assert PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="multiple of 32"):
        PreprocessSpec(size=500)
    with pytest.raises(ValueError, match="percentiles"):
        PreprocessSpec(window_low_percentile=99, window_high_percentile=1)
    with pytest.raises(ValueError, match="unknown"):
        PreprocessSpec.from_dict({"size": 512, "colour": "blue"})


def test_an_image_reduced_ahead_preprocesses_to_the_same_input() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 4096, size=(2500, 2048)).astype(np.uint16)
    image[1000:1100, 800:900] = 4000  # a bright block whose box must land in the same place
    spec = PreprocessSpec(size=512)
    reduced, factor = reduce_ahead(image, spec.size)
    assert factor == 4 and reduced.dtype == np.uint16 and reduced.shape == (625, 512)
    direct, direct_box = preprocess(image, spec)
    ahead, ahead_box = preprocess(reduced, spec)
    assert np.abs(direct - ahead).max() < 2e-3  # the rounding to uint16 only
    box = np.array([[800, 1000, 900, 1100]], np.float32)
    assert np.allclose(direct_box.to_input(box), ahead_box.to_input(box / factor), atol=1e-3)
    # An image already small enough is returned as it is.
    small = image[:400, :300]
    assert reduce_ahead(small, spec.size)[0] is small
