"""Pixel codecs: HTJ2K lossless encode/decode and decoding of stored frames in any syntax.

radstack never hand-writes a codec: HTJ2K goes through imagecodecs (OpenJPH), every other syntax
through pydicom's decoders (pylibjpeg, pyjpegls). Frames are HTJ2K lossless with RPCL progression
(PS3.5 §8.2.14, transfer syntax 1.2.840.10008.1.2.4.202), TLM markers and one tile-part per
resolution, so that a byte prefix of a frame is itself a decodable lower-resolution image.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
from numpy.typing import NDArray
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder

from radstack.dicom.transfer_syntax import HTJ2K_RPCL, NATIVE_SYNTAXES, name_of
from radstack.errors import CannotUnderstand, TransferSyntaxNotSupported

__all__ = [
    "HTJ2K_PHOTOMETRIC",
    "PixelInfo",
    "decode_frame",
    "decode_htj2k",
    "encode_htj2k",
    "htj2k_resolution_prefixes",
]

#: Photometric interpretations radstack stores as HTJ2K: RGB uses the reversible colour transform, so
#: an HTJ2K Part-10 file of it says YBR_RCT (PS3.5 §8.2.14); other colour spaces stay native.
HTJ2K_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB"})
#: Tile-parts split by resolution (imagecodecs' ``tilepart`` flag 1 = R, 2 = C).
_TILEPART_BY_RESOLUTION = 1
_SOT = b"\xff\x90"
_EOC = b"\xff\xd9"


@dataclass(frozen=True, slots=True)
class PixelInfo:
    """The Image Pixel module attributes that shape a frame (PS3.3 §C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int

    @property
    def frame_length(self) -> int:
        """Bytes of one native frame (bit-packed for BitsAllocated 1).

        Native YBR_FULL_422 holds two chroma samples per two pixels (PS3.3 §C.7.6.3.1.2): two
        samples' worth of bytes per pixel instead of three.
        """
        samples = 2 if self.photometric_interpretation == "YBR_FULL_422" else self.samples_per_pixel
        bits = self.rows * self.columns * samples * self.bits_allocated
        return (bits + 7) // 8

    @property
    def dtype(self) -> np.dtype[np.integer]:
        """Little-endian numpy dtype that holds one sample exactly as stored."""
        size = {8: 1, 16: 2, 32: 4}[self.bits_allocated]
        kind = "i" if self.pixel_representation else "u"
        return np.dtype(f"<{kind}{size}")

    @property
    def shape(self) -> tuple[int, ...]:
        if self.samples_per_pixel == 1:
            return (self.rows, self.columns)
        return (self.rows, self.columns, self.samples_per_pixel)

    def decoder_options(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "planar_configuration": self.planar_configuration,
            "number_of_frames": 1,
        }


def encode_htj2k(frame: NDArray[np.integer]) -> bytes:
    """Encode one frame as HTJ2K lossless, RPCL, TLM, one tile-part per resolution.

    Three-sample frames use the reversible colour transform, so the stored codestream's
    photometric interpretation is YBR_RCT (PS3.5 §8.2.14); decoding gives the samples back.
    """
    color = frame.ndim == 3
    data = imagecodecs.htj2k_encode(
        np.ascontiguousarray(frame), reversible=True, tlm=True, tilepart=_TILEPART_BY_RESOLUTION, rgb=color
    )
    return bytes(data)


def decode_htj2k(data: bytes, *, skipres: int = 0) -> NDArray[np.integer]:
    """Decode an HTJ2K codestream, optionally skipping the ``skipres`` highest resolution levels."""
    frame = imagecodecs.htj2k_decode(data, skipres=skipres or None)
    array: NDArray[np.integer] = np.asarray(frame)
    return array


def htj2k_resolution_prefixes(data: bytes) -> list[int]:
    """Byte lengths of the prefixes that hold resolution levels 0..k (lowest first).

    Walks the SOT markers (PS15444-1 §A.4.2) of a codestream written with one tile-part per
    resolution. A prefix plus an EOC marker decodes, with ``skipres``, to that resolution.
    """
    prefixes: list[int] = []
    pos = data.find(_SOT)
    while pos >= 0 and data[pos : pos + 2] == _SOT and pos + 12 <= len(data):
        _lsot, _isot, psot, _tpsot, _tnsot = struct.unpack(">HHIBB", data[pos + 2 : pos + 12])
        if psot == 0:  # last tile-part runs to EOC
            prefixes.append(len(data))
            break
        pos += psot
        prefixes.append(pos)
    return prefixes


def htj2k_read_levels(read_at: Callable[[int, int], bytes], skipres: int) -> bytes:
    """Read just enough of a stored codestream to decode it with ``skipres`` levels skipped.

    ``read_at(offset, length)`` reads from the stored frame. The SOT marker of each tile-part says
    its length and how many tile-parts (resolutions) there are, so a handful of 12-byte reads find
    where the wanted resolution ends; a preview of a large radiograph reads a few percent of it.
    """
    head = read_at(0, 4096)
    pos = head.find(_SOT)
    if pos < 0:
        return head + read_at(len(head), 1 << 62)
    end = pos
    wanted: int | None = None
    index = 0
    while True:
        sot = head[end : end + 12] if end + 12 <= len(head) else read_at(end, 12)
        if len(sot) < 12 or sot[:2] != _SOT:
            break
        _lsot, _isot, psot, _tpsot, tnsot = struct.unpack(">HHIBB", sot[2:12])
        if wanted is None:
            wanted = max(0, tnsot - 1 - skipres) if tnsot else None
        if psot == 0 or wanted is None:
            end = -1
            break
        end += psot
        if index == wanted:
            break
        index += 1
    if end < 0:
        return head + read_at(len(head), 1 << 62)
    prefix = head[:end] if end <= len(head) else head + read_at(len(head), end - len(head))
    return prefix + _EOC


def htj2k_prefix(data: bytes, level: int) -> bytes:
    """A self-contained codestream holding resolution levels ``0..level`` of ``data``."""
    prefixes = htj2k_resolution_prefixes(data)
    if level >= len(prefixes) - 1:
        return data
    return data[: prefixes[level]] + _EOC


def decode_frame(
    data: bytes, transfer_syntax: str, info: PixelInfo, *, skipres: int = 0
) -> NDArray[np.integer]:
    """Decode one stored frame to an array of samples (no colour conversion).

    Raises
    ------
    TransferSyntaxNotSupported
        When no installed decoder handles ``transfer_syntax``.
    """
    if transfer_syntax == HTJ2K_RPCL:
        array = decode_htj2k(data, skipres=skipres)
        if skipres and info.pixel_representation == 0 and array.dtype == np.uint16:
            # OpenJPH wraps small negative low-pass values of unsigned data to 65535.
            array[array > (1 << info.bits_stored) - 1] = 0
        return array
    if transfer_syntax in NATIVE_SYNTAXES:
        return native_frame_to_array(data, info)
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise TransferSyntaxNotSupported(f"no decoder for {name_of(transfer_syntax)}: {exc}") from exc
    if not decoder.is_available:
        raise TransferSyntaxNotSupported(f"no installed decoder plugin for {name_of(transfer_syntax)}")
    try:
        array, _meta = decoder.as_array(encapsulate([data]), raw=True, **info.decoder_options())
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise CannotUnderstand(f"frame data cannot be decoded as {name_of(transfer_syntax)}: {exc}") from exc
    result: NDArray[np.integer] = array
    return result


def native_frame_to_array(data: bytes, info: PixelInfo) -> NDArray[np.integer]:
    """View little-endian native frame bytes as samples, exactly as stored (no masking, no sign fix)."""
    flat = np.frombuffer(data, dtype=info.dtype, count=info.rows * info.columns * info.samples_per_pixel)
    if info.samples_per_pixel > 1 and info.planar_configuration == 1:
        return flat.reshape(info.samples_per_pixel, info.rows, info.columns).transpose(1, 2, 0)
    return flat.reshape(info.shape)


def array_to_native_frame(array: NDArray[np.integer], info: PixelInfo) -> bytes:
    """Inverse of :func:`native_frame_to_array`: samples back to little-endian native bytes."""
    out = array.astype(info.dtype, copy=False)
    if info.samples_per_pixel > 1 and info.planar_configuration == 1:
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out).tobytes()
