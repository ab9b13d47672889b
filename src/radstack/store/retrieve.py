"""Reading stored instances back: frames in a chosen transfer syntax, the header, the Part-10 file.

Every reader stands on this module: WADO-RS (:mod:`radstack.dicomweb.wado`), C-GET and C-MOVE
sub-operations and C-STORE to peers (:mod:`radstack.dimse`), and routing's STOW-RS forwarding.
An instance is stored as its header (every attribute but Pixel Data, explicit VR little endian)
and one blob per frame; the Part-10 file is rebuilt from them in any transfer syntax that
:func:`can_produce` allows. Frames go out as stored whenever the reader accepts that syntax;
otherwise they are decoded and re-encoded losslessly. Lossy frames are never re-encoded lossily.
"""

from __future__ import annotations

import io
from dataclasses import replace

import imagecodecs
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import unpack_bits
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from radstack.dicom.codecs import (
    HTJ2K_PHOTOMETRIC,
    PixelInfo,
    array_to_native_frame,
    decode_frame,
    encode_htj2k,
    htj2k_read_levels,
)
from radstack.dicom.transfer_syntax import (
    HTJ2K_RPCL,
    NATIVE_SYNTAXES,
    SyntaxKindValues,
    kind_of,
    syntaxes_of_media_type,
)
from radstack.store.records import InstanceRecord
from radstack.store.studies import StudyStore

__all__ = [
    "can_produce",
    "decoded_frame",
    "frame_in",
    "header_dataset",
    "native_info",
    "part10",
    "served_as_stored",
    "stored_frame",
    "stored_syntax",
]

_EXPLICIT_LE = str(ExplicitVRLittleEndian)
_IMPLICIT_LE = str(ImplicitVRLittleEndian)
_HTJ2K_FAMILY = syntaxes_of_media_type("image/jphc")
_J2K_FAMILY = syntaxes_of_media_type("image/jp2")
#: What the samples of a decoded lossy frame are, given the stored photometric interpretation.
_DECODED_PHOTOMETRIC = {"YBR_FULL_422": "YBR_FULL", "YBR_ICT": "RGB", "YBR_RCT": "RGB"}


# --------------------------------------------------------------------------- transcoding choice
def stored_syntax(record: InstanceRecord) -> str:
    """The syntax the frames are stored in (explicit VR little endian for objects without pixels)."""
    return record.frame_syntax or _EXPLICIT_LE


def can_produce(record: InstanceRecord, syntax: str) -> bool:
    """True when frames of ``record`` can be delivered in ``syntax`` without lossy re-encoding.

    Every object can be written little endian (frames decoded if need be); the stored syntax is
    always available; HTJ2K and JPEG 2000 are made losslessly from lossless sources whose sample
    layout the encoder takes. Nothing is ever encoded lossily.
    """
    stored = record.frame_syntax
    if syntax in (_EXPLICIT_LE, _IMPLICIT_LE):
        return True  # every stored object can be written little endian, decoding frames if need be
    if stored is None:  # no pixel data: only the little endian syntaxes above
        return False
    if syntax == stored:
        return True
    pixel = record.pixel
    assert pixel is not None
    lossless_source = kind_of(stored) is not SyntaxKindValues.LOSSY and pixel.bits_allocated in (8, 16, 32)
    if syntax in _HTJ2K_FAMILY:
        return stored == HTJ2K_RPCL or (
            lossless_source and pixel.photometric_interpretation in HTJ2K_PHOTOMETRIC
        )
    if syntax in _J2K_FAMILY:
        return lossless_source and pixel.samples_per_pixel == 1 and pixel.bits_allocated in (8, 16)
    return False


def served_as_stored(record: InstanceRecord, syntax: str) -> bool:
    """True when frames in ``syntax`` are the stored bytes themselves (no decoding needed)."""
    stored = stored_syntax(record)
    return (
        syntax == stored
        or (syntax in _HTJ2K_FAMILY and stored == HTJ2K_RPCL)
        or (syntax in (_EXPLICIT_LE, _IMPLICIT_LE) and stored in NATIVE_SYNTAXES)
    )


# --------------------------------------------------------------------------- frames
def stored_frame(store: StudyStore, record: InstanceRecord, number: int) -> bytes:
    """Frame ``number`` (1-based) exactly as stored; bit-packed data is cut out of its single blob.

    Raises
    ------
    NotFound
        When the frame's blob is missing from the blob store.
    """
    pixel = record.pixel
    assert pixel is not None
    if pixel.bits_allocated == 1:
        bits = np.asarray(unpack_bits(store.blobs.get(record.frames[0])))
        size = pixel.rows * pixel.columns * pixel.samples_per_pixel
        frame = bits[(number - 1) * size : number * size]
        packed: bytes = np.packbits(frame.astype(np.uint8), bitorder="little").tobytes()
        return packed
    return store.blobs.get(record.frames[number - 1])


def decoded_frame(
    store: StudyStore, record: InstanceRecord, number: int, *, skipres: int = 0
) -> NDArray[np.integer]:
    """Samples of frame ``number`` (optionally at a reduced HTJ2K resolution).

    With ``skipres`` and a frame stored as HTJ2K RPCL, only the byte prefix of the lower
    resolution is read from the blob store.

    Raises
    ------
    NotFound
        When the frame's blob is missing from the blob store.
    TransferSyntaxNotSupported
        When no installed decoder handles the stored syntax.
    CannotUnderstand
        When the stored frame cannot be decoded in its syntax.
    """
    pixel = record.pixel
    assert pixel is not None
    syntax = stored_syntax(record)
    info = _decode_info(record)
    if syntax == HTJ2K_RPCL and skipres and pixel.bits_allocated > 1:
        key = record.frames[number - 1]
        data = htj2k_read_levels(lambda start, length: store.blobs.get_range(key, start, length), skipres)
        return decode_frame(data, syntax, info, skipres=skipres)
    return decode_frame(stored_frame(store, record, number), syntax, info)


def _decode_info(record: InstanceRecord) -> PixelInfo:
    """PixelInfo with one frame, for decoding a single stored frame."""
    pixel = record.pixel
    assert pixel is not None
    return replace(pixel, number_of_frames=1)


def native_info(record: InstanceRecord) -> PixelInfo:
    """How decoded samples of one frame of ``record`` are laid out as a native frame.

    Decoding a lossy YBR frame gives YBR_FULL or RGB samples, so the photometric interpretation
    of the rebuilt object says what the samples now are.
    """
    pixel = record.pixel
    assert pixel is not None
    photometric = pixel.photometric_interpretation
    if kind_of(stored_syntax(record)) is SyntaxKindValues.LOSSY:
        photometric = _DECODED_PHOTOMETRIC.get(photometric, photometric)
    return replace(pixel, photometric_interpretation=photometric, number_of_frames=1)


def frame_in(store: StudyStore, record: InstanceRecord, number: int, syntax: str) -> bytes:
    """Frame ``number`` in ``syntax`` (which :func:`can_produce` accepted).

    Raises
    ------
    NotFound
        When the frame's blob is missing from the blob store.
    TransferSyntaxNotSupported
        When the frame must be decoded and no installed decoder handles the stored syntax.
    CannotUnderstand
        When the frame must be decoded and cannot be.
    """
    pixel = record.pixel
    assert pixel is not None
    if served_as_stored(record, syntax):
        return stored_frame(store, record, number)
    if syntax in (_EXPLICIT_LE, _IMPLICIT_LE):
        info = native_info(record)
        return array_to_native_frame(decoded_frame(store, record, number).reshape(info.shape), info)
    array = decoded_frame(store, record, number)
    if syntax in _HTJ2K_FAMILY:
        return encode_htj2k(array.astype(pixel.dtype, copy=False))
    return bytes(imagecodecs.jpeg2k_encode(array, level=0, codecformat="J2K", reversible=True))


# --------------------------------------------------------------------------- instances
def header_dataset(store: StudyStore, record: InstanceRecord) -> Dataset:
    """The stored header of ``record``: every attribute but Pixel Data, with its file meta.

    Raises
    ------
    NotFound
        When the header's blob is missing from the blob store.
    """
    return pydicom.dcmread(io.BytesIO(store.blobs.get(record.header_key)))


def part10(store: StudyStore, record: InstanceRecord, syntax: str | None) -> bytes:
    """Rebuild the Part-10 file of ``record`` (PS3.10 §7.1) in ``syntax`` (``None``: as stored).

    Parameters
    ----------
    store
        The store that holds the instance's header and frame blobs.
    record
        The instance to rebuild.
    syntax
        A transfer syntax :func:`can_produce` accepted for ``record``, or ``None`` for the stored one.

    Returns
    -------
    bytes
        The file: preamble, file meta in ``syntax``, and the data set with its pixel data native or
        encapsulated (with a Basic Offset Table) as ``syntax`` requires.

    Raises
    ------
    NotFound
        A blob of the instance is missing from the blob store.
    TransferSyntaxNotSupported
        Frames must be decoded for ``syntax`` and no installed decoder handles the stored syntax.
    CannotUnderstand
        Frames must be decoded for ``syntax`` and cannot be.
    """
    syntax = syntax or stored_syntax(record)
    ds = header_dataset(store, record)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    pixel = record.pixel
    if pixel is not None:
        numbers = range(1, pixel.number_of_frames + 1)
        if syntax in NATIVE_SYNTAXES:
            info = native_info(record)
            ds.PhotometricInterpretation = info.photometric_interpretation
            if pixel.bits_allocated == 1:
                data = store.blobs.get(record.frames[0])
            else:
                data = b"".join(frame_in(store, record, n, syntax) for n in numbers)
            ds.PixelData = data + (b"\0" if len(data) % 2 else b"")
            ds["PixelData"].VR = "OW" if pixel.bits_allocated > 8 else "OB"
        else:
            ds.PixelData = encapsulate([frame_in(store, record, n, syntax) for n in numbers], has_bot=True)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            rgb = pixel.samples_per_pixel == 3 and pixel.photometric_interpretation == "RGB"
            if rgb and syntax in _HTJ2K_FAMILY:
                ds.PhotometricInterpretation = "YBR_RCT"  # encode_htj2k applies the RCT (PS3.5 §8.2.14)
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=syntax == _IMPLICIT_LE, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()
