"""What comes in as a DICOM object, made a Part-10 file (PS3.10 §7), and pydicom's reading errors in
words a user can act on.

Three shapes are accepted:

* a Part-10 file: 128-byte preamble, ``DICM``, the File Meta Information group, the data set;
* the file meta group and data set without preamble and ``DICM``: what pydicom 3 writes for a data
  set built in memory, and so what dicomweb-client (and every highdicom SR and SEG sent with it)
  puts in a STOW-RS part;
* a bare data set, when the sender states its transfer syntax (the ``transfer-syntax`` parameter of
  a STOW-RS part's ``application/dicom`` media type, PS3.18 §8.7.3.5.2).

Anything else is refused: nothing is read with pydicom's ``force=True`` without first checking that
the bytes start like DICOM.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from radstack.dicom.uids import is_valid_uid
from radstack.errors import CannotUnderstand

__all__ = ["NOT_DICOM", "as_part10", "malformed", "reason_of"]

PREAMBLE = b"\0" * 128 + b"DICM"
NOT_DICOM = (
    "not a DICOM Part-10 file: it has no 'DICM' prefix after a 128-byte preamble and does not start "
    "with a File Meta Information group (0002,eeee) either (PS3.10 §7.1)"
)
_VRS = frozenset(vr.value.encode() for vr in VR)
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_UNKNOWN_VR = re.compile(r"Unknown Value Representation '(?P<vr>[^']*)' in tag (?P<tag>\([0-9A-Fa-f,]+\))")
#: Advice in pydicom's messages about its own options, which radstack does not offer.
_PYDICOM_ADVICE = re.compile(
    r"\s*(Use force=True to force reading\.?|To replace this error with a warning set "
    r"pydicom\.config\.\w+ = True\.?)"
)


def as_part10(data: bytes, transfer_syntax: str | None = None) -> bytes:
    """``data`` as a Part-10 file: preamble and ``DICM`` added where missing, file meta where stated.

    Parameters
    ----------
    data
        What the sender sent as one DICOM object.
    transfer_syntax
        The transfer syntax the sender stated for it (PS3.18 §8.7.3.5.2), used only when ``data``
        has no File Meta Information of its own.

    Returns
    -------
    bytes
        ``data`` itself when it is a Part-10 file already; else a Part-10 file with the same data set.

    Raises
    ------
    CannotUnderstand
        When ``data`` is none of the three accepted shapes.
    """
    if data[128:132] == b"DICM":
        return data
    if _starts_with_file_meta(data):
        return PREAMBLE + data
    if transfer_syntax:
        if not is_valid_uid(transfer_syntax):
            raise CannotUnderstand(
                f"transfer-syntax {transfer_syntax[:80]!r} is not a valid UID (PS3.5 §9.1)"
            )
        if not _starts_with_data_element(data, UID(transfer_syntax)):
            raise CannotUnderstand(
                f"the part is neither a Part-10 file nor a data set in {transfer_syntax}, the transfer "
                "syntax its Content-Type names: it does not start with a data element (PS3.5 §7.1)"
            )
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = UID(transfer_syntax)
        buffer = DicomBytesIO()
        buffer.write(PREAMBLE)
        write_file_meta_info(buffer, meta, enforce_standard=False)
        return buffer.getvalue() + data
    raise CannotUnderstand(NOT_DICOM)


def _starts_with_file_meta(data: bytes) -> bool:
    """True when ``data`` opens with a well-formed explicit VR little endian (0002,eeee) element.

    Its VR must be the one the data dictionary gives that element (PS3.7 §7.1 Table 7.1-1 lists them
    all), so random bytes that happen to begin with ``02 00`` are not taken for DICOM.
    """
    if len(data) < 12 or data[:2] != b"\x02\x00":
        return False
    element: int = struct.unpack_from("<H", data, 2)[0]
    vr = data[4:6]
    try:
        expected = dictionary_VR(0x00020000 | element).encode()
    except KeyError:
        expected = vr if vr in _VRS else b""
    if vr != expected:
        return False
    # Explicit VR: tag (4), VR (2), then a 2-byte length, or 2 reserved bytes and a 4-byte length.
    if vr in _LONG_VRS:
        end: int = 12 + struct.unpack_from("<L", data, 8)[0]
        if data[6:8] != b"\0\0":
            return False
    else:
        end = 8 + struct.unpack_from("<H", data, 6)[0]
    return end <= len(data)


def _starts_with_data_element(data: bytes, syntax: UID) -> bool:
    """True when ``data`` can begin a data set in ``syntax``: a tag of a group a data set may hold
    (not command, file meta or directory groups, nor an item delimiter), then, in explicit VR, a VR.
    """
    if syntax == DeflatedExplicitVRLittleEndian:
        return len(data) > 0  # deflated bytes say nothing until inflated; pydicom judges them
    if len(data) < 8:
        return False
    group = struct.unpack_from(">H" if syntax == ExplicitVRBigEndian else "<H", data, 0)[0]
    if group < 0x0008 or group == 0xFFFE:
        return False
    return syntax == ImplicitVRLittleEndian or data[4:6] in _VRS


def reason_of(exc: BaseException) -> str:
    """pydicom's message for ``exc`` without advice about pydicom's own options."""
    if isinstance(exc, InvalidDicomError) and "File Meta Information" in str(exc):
        return NOT_DICOM
    if isinstance(exc, struct.error | EOFError) or str(exc).startswith("No tag to read"):
        return f"the data ends inside an element (a cut file or a wrong value length): {exc}"
    return _PYDICOM_ADVICE.sub("", str(exc)).strip() or type(exc).__name__


def malformed(exc: BaseException) -> CannotUnderstand | None:
    """``exc`` as a refusal when pydicom raised it decoding the input's bytes, else ``None``.

    pydicom reads elements lazily: a value whose VR is unknown, whose length runs past its
    sequence, or that cannot be decoded fails when the element is first used, long after the file
    was opened. Such a failure shows in the traceback as pydicom's reader or its raw element
    conversion; an exception raised anywhere else is a bug, not bad input, and is left alone.
    """
    # pydicom's writer re-raises a conversion failure with the tag prepended (``raise ... from``):
    # the conversion is then the exception's cause. An exception raised while handling another
    # (its context only) is not followed: that is code of ours failing.
    cause = next((e for e in _chain(exc) if _decoding_frames(e) or _raised_by_reader(e)), None)
    if cause is None:
        return None
    unknown = _UNKNOWN_VR.search(str(cause))
    if unknown is not None:  # short enough for a DIMSE Error Comment, tag included
        return CannotUnderstand(f"element {unknown['tag']} has an unknown VR {unknown['vr']!r} (PS3.5 §6.2)")
    tags = [_tag_of(frame_locals) for frame_locals in _decoding_frames(cause)]
    where = " > ".join(str(tag) for tag in tags if tag is not None)
    reason = reason_of(cause)
    if where:
        return CannotUnderstand(f"element {where} cannot be decoded: {reason}")
    return CannotUnderstand(f"the data set cannot be decoded: {reason}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, newest first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _decoding_frames(exc: BaseException) -> list[dict[str, object]]:
    """The locals of each pydicom raw element conversion ``exc`` went through, outermost first."""
    tb = exc.__traceback__
    found = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "convert_raw_data_element" and code.co_filename.endswith("dataelem.py"):
            found.append(tb.tb_frame.f_locals)
        tb = tb.tb_next
    return found


def _raised_by_reader(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") in ("pydicom.filereader", "pydicom.values"):
            return True
        tb = tb.tb_next
    return False


def _tag_of(frame_locals: dict[str, object]) -> object:
    raw = frame_locals.get("raw")
    return raw.tag if isinstance(raw, RawDataElement) else None
