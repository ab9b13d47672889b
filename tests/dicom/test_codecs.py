"""HTJ2K as stored: lossless, RPCL, TLM markers, one tile-part per resolution (PS3.5 §8.2.14)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from radstack.dicom.codecs import decode_htj2k, encode_htj2k, htj2k_resolution_prefixes

COD, TLM, SOT = b"\xff\x52", b"\xff\x55", b"\xff\x90"


@pytest.mark.parametrize(
    "frame",
    [
        np.random.default_rng(1).integers(0, 256, (61, 47)).astype(np.uint8),
        np.random.default_rng(2).integers(0, 4096, (128, 96)).astype(np.uint16),
        np.random.default_rng(3).integers(-2000, 3000, (128, 96)).astype(np.int16),
        np.random.default_rng(4).integers(0, 256, (40, 30, 3)).astype(np.uint8),
    ],
    ids=["uint8", "uint16-12bit", "int16", "rgb"],
)
def test_lossless_round_trip(frame: np.ndarray) -> None:
    data = encode_htj2k(frame)
    back = decode_htj2k(data)
    assert back.dtype == frame.dtype and np.array_equal(back, frame)


def test_codestream_layout_allows_progressive_decoding() -> None:
    frame = np.random.default_rng(5).integers(0, 4096, (256, 256)).astype(np.uint16)
    data = encode_htj2k(frame)
    cod = data.index(COD)
    assert data[cod + 5] == 2, "progression order RPCL (PS15444-1 Table A.16)"
    decompositions = data[cod + 9]  # marker(2) Lcod(2) Scod(1) SGcod(4), then SPcod starts with the levels
    assert TLM in data[: data.index(SOT)], "TLM marker in the main header"
    prefixes = htj2k_resolution_prefixes(data)
    assert len(prefixes) == decompositions + 1, "one tile-part per resolution level"
    assert prefixes[-1] == len(data) - 2 or prefixes[-1] == len(data)
    first = data.index(SOT)
    _lsot, _isot, _psot, tpsot, tnsot = struct.unpack(">HHIBB", data[first + 2 : first + 12])
    assert (tpsot, tnsot) == (0, decompositions + 1)
