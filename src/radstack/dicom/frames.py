"""Pixel module checks and frame splitting (PS3.3 §C.7.6.3, PS3.5 §8.2 and Annex A.4)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from radstack.dicom.codecs import PixelInfo
from radstack.errors import DataSetMismatch

__all__ = ["encapsulated_frames", "native_frames", "pixel_info"]

_REQUIRED = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")


def pixel_info(ds: Dataset) -> PixelInfo:
    """The pixel module of ``ds``, checked for the attributes a frame needs.

    Raises
    ------
    DataSetMismatch
        When a required Image Pixel attribute is missing or out of range.
    """
    missing = [k for k in _REQUIRED if ds.get(k) in (None, "")]
    if missing:
        raise DataSetMismatch(f"PixelData is present but {', '.join(missing)} missing (PS3.3 §C.7.6.3)")
    rows, columns = int(ds.Rows), int(ds.Columns)
    bits_allocated = int(ds.BitsAllocated)
    samples = int(ds.SamplesPerPixel)
    frames_value = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames_value) if frames_value not in (None, "") else 1
    except (TypeError, ValueError):
        raise DataSetMismatch(f"NumberOfFrames {frames_value!r} is not an integer") from None
    if rows <= 0 or columns <= 0:
        raise DataSetMismatch(f"Rows {rows} and Columns {columns} must both be positive")
    if bits_allocated not in (1, 8, 16, 32):
        raise DataSetMismatch(f"BitsAllocated {bits_allocated} is not one of 1, 8, 16, 32")
    if samples not in (1, 3):
        raise DataSetMismatch(f"SamplesPerPixel {samples} is not 1 or 3")
    if frames <= 0:
        raise DataSetMismatch(f"NumberOfFrames {frames} must be positive")
    bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
    if not 0 < bits_stored <= bits_allocated:
        raise DataSetMismatch(
            f"BitsStored {bits_stored} must be between 1 and BitsAllocated {bits_allocated}"
        )
    return PixelInfo(
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        photometric_interpretation=str(ds.PhotometricInterpretation).strip(),
        planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
        number_of_frames=frames,
    )


def native_frames(
    pixel_data: bytes, info: PixelInfo, *, big_endian: bool, word_vr: bool = False
) -> Iterator[bytes]:
    """Split native pixel data into little-endian frames of :attr:`PixelInfo.frame_length` bytes.

    ``word_vr`` says the value was encoded as OW: in big endian, 8-bit samples in an OW value are
    byte-swapped in 16-bit words (PS3.5 §A.3), so the pairs are swapped back first.

    Raises
    ------
    DataSetMismatch
        When the pixel data is shorter than Rows × Columns × SamplesPerPixel × NumberOfFrames ×
        BitsAllocated / 8.
    """
    if info.bits_allocated == 1:
        needed = (info.rows * info.columns * info.samples_per_pixel * info.number_of_frames + 7) // 8
    else:
        needed = info.frame_length * info.number_of_frames
    if len(pixel_data) < needed:
        raise DataSetMismatch(
            f"PixelData holds {len(pixel_data)} bytes but Rows {info.rows} × Columns {info.columns} × "
            f"SamplesPerPixel {info.samples_per_pixel} × NumberOfFrames {info.number_of_frames} × "
            f"BitsAllocated {info.bits_allocated} / 8 ({info.photometric_interpretation}) needs {needed}"
        )
    if big_endian and word_vr and info.bits_allocated == 8:
        even = bytes(pixel_data) + (b"\0" if len(pixel_data) % 2 else b"")
        pixel_data = np.frombuffer(even, dtype=">u2").astype("<u2").tobytes()
    if info.bits_allocated == 1:
        # Bit-packed frames need not start on a byte boundary: keep the whole run as one blob.
        yield bytes(pixel_data[:needed])
        return
    size = info.frame_length
    for index in range(info.number_of_frames):
        chunk = pixel_data[index * size : (index + 1) * size]
        if big_endian and info.bits_allocated > 8:
            chunk = np.frombuffer(chunk, dtype=info.dtype.newbyteorder(">")).astype(info.dtype).tobytes()
        yield bytes(chunk)


def encapsulated_frames(pixel_data: bytes, info: PixelInfo) -> list[bytes]:
    """Split encapsulated pixel data into one byte string per frame (PS3.5 §A.4).

    Raises
    ------
    DataSetMismatch
        When the fragments cannot be split into NumberOfFrames frames.
    """
    try:
        frames = list(generate_frames(pixel_data, number_of_frames=info.number_of_frames))
    except (ValueError, EOFError, KeyError) as exc:
        raise DataSetMismatch(f"encapsulated PixelData cannot be split into frames: {exc}") from exc
    if len(frames) != info.number_of_frames:
        raise DataSetMismatch(
            f"encapsulated PixelData holds {len(frames)} frames but NumberOfFrames is {info.number_of_frames}"
        )
    return frames
