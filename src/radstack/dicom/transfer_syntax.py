"""Transfer syntaxes: what each one is, how its frames are stored, which media type carries them.

Media types follow PS3.18 Table 8.7.3-2 (bulk data and frames) and Table 8.7.3-5 (transfer syntax
parameter).
"""

from __future__ import annotations

from enum import Enum

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = [
    "HTJ2K_RPCL",
    "NATIVE_SYNTAXES",
    "SyntaxKindValues",
    "kind_of",
    "media_type_for",
    "syntax_for_media_type",
]

HTJ2K_RPCL = str(HTJ2KLosslessRPCL)

NATIVE_SYNTAXES = frozenset(
    str(u)
    for u in (
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    )
)


class SyntaxKindValues(Enum):
    """How pixel data in a transfer syntax is held and what radstack may do with it."""

    NATIVE = "native"  #: uncompressed pixel data
    LOSSLESS = "lossless"  #: encapsulated, reversible: decoded and re-encoded as HTJ2K lossless
    LOSSY = "lossy"  #: encapsulated, possibly irreversible: kept byte for byte, never re-encoded


_LOSSLESS = frozenset(
    str(u)
    for u in (JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless, HTJ2KLossless)
) | {HTJ2K_RPCL}
_LOSSY = frozenset(str(u) for u in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K))

#: PS3.18 Table 8.7.3-2: media type of a single frame in each encapsulated transfer syntax.
_MEDIA_TYPES: dict[str, str] = {
    str(JPEGBaseline8Bit): "image/jpeg",
    str(JPEGExtended12Bit): "image/jpeg",
    str(JPEGLossless): "image/jpeg",
    str(JPEGLosslessSV1): "image/jpeg",
    str(JPEGLSLossless): "image/jls",
    str(JPEGLSNearLossless): "image/jls",
    str(JPEG2000Lossless): "image/jp2",
    str(JPEG2000): "image/jp2",
    str(HTJ2KLossless): "image/jphc",
    HTJ2K_RPCL: "image/jphc",
    str(HTJ2K): "image/jphc",
    str(RLELossless): "image/dicom-rle",
}

#: The transfer syntax a client gets for a compressed media type when it names none (PS3.18 Table 8.7.3-5).
_DEFAULT_SYNTAX: dict[str, str] = {
    "image/jpeg": str(JPEGBaseline8Bit),
    "image/jls": str(JPEGLSLossless),
    "image/jp2": str(JPEG2000Lossless),
    "image/jphc": HTJ2K_RPCL,
    "image/dicom-rle": str(RLELossless),
}


def kind_of(transfer_syntax: str) -> SyntaxKindValues | None:
    """Classify a transfer syntax; ``None`` when radstack cannot handle its pixel data."""
    if transfer_syntax in NATIVE_SYNTAXES:
        return SyntaxKindValues.NATIVE
    if transfer_syntax in _LOSSLESS:
        return SyntaxKindValues.LOSSLESS
    if transfer_syntax in _LOSSY:
        return SyntaxKindValues.LOSSY
    return None


def media_type_for(transfer_syntax: str) -> str:
    """Media type of one frame of pixel data in ``transfer_syntax``."""
    return _MEDIA_TYPES.get(transfer_syntax, "application/octet-stream")


def syntax_for_media_type(media_type: str, transfer_syntax: str | None) -> str | None:
    """The transfer syntax a client asks for with ``media_type`` and its ``transfer-syntax`` parameter.

    Returns ``None`` when the pair is not one radstack can serve.
    """
    if media_type == "application/octet-stream":
        if transfer_syntax in (None, str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)):
            return str(ExplicitVRLittleEndian)
        return None
    if transfer_syntax is None:
        return _DEFAULT_SYNTAX.get(media_type)
    return transfer_syntax if _MEDIA_TYPES.get(transfer_syntax) == media_type else None


def name_of(transfer_syntax: str) -> str:
    """Human-readable name of a transfer syntax for messages."""
    uid = UID(transfer_syntax)
    return f"{uid.name} ({transfer_syntax})" if uid.is_transfer_syntax else transfer_syntax
