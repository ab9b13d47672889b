"""Transfer syntaxes: what each one is, how its frames are stored, which media type carries them.

Media types follow PS3.18 Table 8.7.3-2 (bulk data and frames) and Table 8.7.3-5 (transfer syntax
parameter).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    "TRANSFER_SYNTAXES",
    "SyntaxKindValues",
    "TransferSyntax",
    "kind_of",
    "media_type_for",
    "name_of",
    "syntax_for_media_type",
    "syntaxes_of_media_type",
]

HTJ2K_RPCL = str(HTJ2KLosslessRPCL)
_OCTET_STREAM = "application/octet-stream"


class SyntaxKindValues(Enum):
    """How pixel data in a transfer syntax is held and what radstack may do with it."""

    NATIVE = "native"  #: uncompressed pixel data
    LOSSLESS = "lossless"  #: encapsulated, reversible: decoded and re-encoded as HTJ2K lossless
    LOSSY = "lossy"  #: encapsulated, possibly irreversible: kept byte for byte, never re-encoded


@dataclass(frozen=True, slots=True)
class TransferSyntax:
    """One transfer syntax radstack reads, and how its frames travel over DICOMweb."""

    uid: str
    kind: SyntaxKindValues
    #: Media type of one frame (PS3.18 Table 8.7.3-2); uncompressed frames are application/octet-stream.
    media_type: str = _OCTET_STREAM
    #: The syntax a client gets when it asks for :attr:`media_type` without a ``transfer-syntax``
    #: parameter (PS3.18 Table 8.7.3-5).
    media_type_default: bool = False


_NATIVE, _LOSSLESS, _LOSSY = SyntaxKindValues.NATIVE, SyntaxKindValues.LOSSLESS, SyntaxKindValues.LOSSY

#: Every transfer syntax whose pixel data radstack reads, the one table of them (PS3.5 Annex A,
#: PS3.6 Table A-1). The order is the one the DICOM service prefers when a presentation context
#: proposes several (PS3.8 §9.3.3.2 leaves the choice to the acceptor): explicit and implicit VR
#: little endian, which every sender can produce and which a C-GET requestor can always be sent;
#: then lossless compressed syntaxes; lossy ones last, so no sender is ever asked to compress
#: lossily an image it holds uncompressed.
TRANSFER_SYNTAXES: tuple[TransferSyntax, ...] = (
    TransferSyntax(str(ExplicitVRLittleEndian), _NATIVE),
    TransferSyntax(str(ImplicitVRLittleEndian), _NATIVE),
    TransferSyntax(HTJ2K_RPCL, _LOSSLESS, "image/jphc", media_type_default=True),
    TransferSyntax(str(HTJ2KLossless), _LOSSLESS, "image/jphc"),
    TransferSyntax(str(JPEG2000Lossless), _LOSSLESS, "image/jp2", media_type_default=True),
    TransferSyntax(str(JPEGLSLossless), _LOSSLESS, "image/jls", media_type_default=True),
    TransferSyntax(str(JPEGLosslessSV1), _LOSSLESS, "image/jpeg"),
    TransferSyntax(str(JPEGLossless), _LOSSLESS, "image/jpeg"),
    TransferSyntax(str(RLELossless), _LOSSLESS, "image/dicom-rle", media_type_default=True),
    TransferSyntax(str(DeflatedExplicitVRLittleEndian), _NATIVE),
    TransferSyntax(str(ExplicitVRBigEndian), _NATIVE),
    TransferSyntax(str(HTJ2K), _LOSSY, "image/jphc"),
    TransferSyntax(str(JPEG2000), _LOSSY, "image/jp2"),
    TransferSyntax(str(JPEGLSNearLossless), _LOSSY, "image/jls"),
    TransferSyntax(str(JPEGBaseline8Bit), _LOSSY, "image/jpeg", media_type_default=True),
    TransferSyntax(str(JPEGExtended12Bit), _LOSSY, "image/jpeg"),
)
_BY_UID = {syntax.uid: syntax for syntax in TRANSFER_SYNTAXES}

NATIVE_SYNTAXES = frozenset(s.uid for s in TRANSFER_SYNTAXES if s.kind is SyntaxKindValues.NATIVE)

#: The transfer syntax a client gets for a compressed media type when it names none (PS3.18 Table 8.7.3-5).
_DEFAULT_SYNTAX = {s.media_type: s.uid for s in TRANSFER_SYNTAXES if s.media_type_default}


def kind_of(transfer_syntax: str) -> SyntaxKindValues | None:
    """Classify a transfer syntax; ``None`` when radstack cannot handle its pixel data."""
    syntax = _BY_UID.get(transfer_syntax)
    return syntax.kind if syntax is not None else None


def media_type_for(transfer_syntax: str) -> str:
    """Media type of one frame of pixel data in ``transfer_syntax``."""
    syntax = _BY_UID.get(transfer_syntax)
    return syntax.media_type if syntax is not None else _OCTET_STREAM


def syntaxes_of_media_type(media_type: str) -> frozenset[str]:
    """Every transfer syntax whose frames travel as ``media_type`` (``image/jphc``: the HTJ2K family)."""
    return frozenset(s.uid for s in TRANSFER_SYNTAXES if s.media_type == media_type)


def syntax_for_media_type(media_type: str, transfer_syntax: str | None) -> str | None:
    """The transfer syntax a client asks for with ``media_type`` and its ``transfer-syntax`` parameter.

    Returns ``None`` when the pair is not one radstack can serve.
    """
    if media_type == _OCTET_STREAM:
        if transfer_syntax in (None, str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)):
            return str(ExplicitVRLittleEndian)
        return None
    if transfer_syntax is None:
        return _DEFAULT_SYNTAX.get(media_type)
    return transfer_syntax if media_type_for(transfer_syntax) == media_type else None


def name_of(transfer_syntax: str) -> str:
    """Human-readable name of a transfer syntax for messages."""
    uid = UID(transfer_syntax)
    return f"{uid.name} ({transfer_syntax})" if uid.is_transfer_syntax else transfer_syntax
