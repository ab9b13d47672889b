"""DICOM JSON model (PS3.18 Annex F) with BulkDataURIs, and the attribute sets of each query level."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

__all__ = [
    "BULK_THRESHOLD",
    "INSTANCE_LEVEL_TAGS",
    "SERIES_LEVEL_TAGS",
    "STUDY_LEVEL_TAGS",
    "dataset_to_json",
    "element_path",
    "first_int",
    "first_text",
]

#: Values of binary VRs longer than this are replaced by a BulkDataURI (ARCHITECTURE: 1 KiB).
BULK_THRESHOLD = 1024
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
JsonDict = dict[str, Any]


def _tags(*keywords: str) -> tuple[str, ...]:
    return tuple(f"{int(Tag(k)):08X}" for k in keywords)


#: Patient and study attributes answered at the study level (PS3.18 Table 10.6.3-3 and the
#: Patient / General Study / Patient Study modules of PS3.3).
STUDY_LEVEL_TAGS = _tags(
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "InstitutionName",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "StudyDescription",
    "ProcedureCodeSequence",
    "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "PatientComments",
    "StudyInstanceUID",
    "StudyID",
)
#: Series attributes answered at the series level (PS3.18 Table 10.6.3-4, General Series module).
SERIES_LEVEL_TAGS = _tags(
    "SeriesDate",
    "SeriesTime",
    "Modality",
    "Manufacturer",
    "SeriesDescription",
    "BodyPartExamined",
    "ProtocolName",
    "Laterality",
    "PatientPosition",
    "SeriesInstanceUID",
    "SeriesNumber",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
    "FrameOfReferenceUID",
)
#: Instance attributes answered at the instance level (PS3.18 Table 10.6.3-5).
INSTANCE_LEVEL_TAGS = _tags(
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "ContentDate",
    "ContentTime",
    "ImageType",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)


def element_path(path: tuple[str, ...]) -> str:
    """BulkDataURI suffix of a (possibly nested) element: ``00420011`` or ``00400275/0/00420011``."""
    return "/".join(path)


def dataset_to_json(ds: Dataset, bulk_base: str, *, _path: tuple[str, ...] = ()) -> JsonDict:
    """Encode ``ds`` as DICOM JSON (PS3.18 §F.2).

    Binary values longer than :data:`BULK_THRESHOLD` become ``BulkDataURI``s of the form
    ``{bulk_base}/{tag}`` or ``{bulk_base}/{sequence tag}/{item index}/{tag}`` that the bulkdata
    endpoint resolves; group lengths are dropped (PS3.18 §F.2.1).

    Elements pydicom has not parsed yet are encoded straight from their raw explicit VR little
    endian bytes when their VR is a plain string or number (:func:`_raw_json`): parsing every
    element through pydicom is the slowest step of ingest. Anything else goes through pydicom.
    """
    out: JsonDict = {}
    plain = _plain_charset(ds)
    for tag in sorted(ds._dict):
        if tag.element == 0:
            continue
        key = f"{int(tag):08X}"
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement) and raw.VR and not raw.is_implicit_VR and raw.is_little_endian:
            fast = _raw_json(str(raw.VR), raw.value, plain, bulk_base, (*_path, key))
            if fast is not None:
                out[key] = fast
                continue
        out[key] = _element_json(ds[tag], bulk_base, (*_path, key))
    return out


_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "SH", "LO", "UC", "ST", "LT", "UT", "UR"})
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT"})
_SINGLE_VALUE_VRS = frozenset({"ST", "LT", "UT", "UR"})
_NUMBER_DTYPES = {
    "US": "<u2",
    "SS": "<i2",
    "UL": "<u4",
    "SL": "<i4",
    "FL": "<f4",
    "FD": "<f8",
    "UV": "<u8",
    "SV": "<i8",
}


def _plain_charset(ds: Dataset) -> str | None:
    """The Python codec of a single-byte or UTF-8 SpecificCharacterSet, or ``None`` for others."""
    raw = ds._dict.get(Tag(0x00080005))
    if raw is None:
        return "ascii"
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    terms = [t.strip() for t in (value if isinstance(value, list | tuple) else str(value or "").split("\\"))]
    if len(terms) != 1:
        return None
    return {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}.get(terms[0])


def _raw_json(
    vr: str, value: bytes | None, charset: str | None, bulk_base: str, path: tuple[str, ...]
) -> JsonDict | None:
    """DICOM JSON of one raw element, or ``None`` to let pydicom handle it."""
    if vr in ("UN", "SQ"):
        return None  # pydicom resolves UN to the dictionary VR and parses sequences
    if value is None or len(value) == 0:
        return {"vr": vr}
    if vr in _BINARY_VRS:
        if len(value) > BULK_THRESHOLD:
            return {"vr": vr, "BulkDataURI": f"{bulk_base}/{element_path(path)}"}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    dtype = _NUMBER_DTYPES.get(vr)
    if dtype is not None:
        if len(value) % np.dtype(dtype).itemsize:
            return None
        numbers = np.frombuffer(value, dtype=dtype)
        if numbers.dtype.kind == "f" and not np.isfinite(numbers).all():
            return None
        return {"vr": vr, "Value": numbers.tolist()}
    if vr not in _STRING_VRS and vr not in ("IS", "DS"):
        return None
    codec = charset if vr in _CHARSET_VRS else "ascii"
    if codec is None:
        return None
    try:
        text = value.decode(codec)
    except UnicodeDecodeError:
        return None
    # As pydicom reads them: trailing padding of the whole value goes, each value keeps its own.
    text = text.rstrip(" \0")
    parts = [text] if vr in _SINGLE_VALUE_VRS else text.split("\\")
    if parts == [""]:
        return {"vr": vr}
    if vr in ("IS", "DS"):
        try:
            numbers_out: list[int | float] = [int(p) if vr == "IS" else float(p) for p in parts]
        except ValueError:
            return None
        if vr == "DS" and not all(np.isfinite(numbers_out)):
            return None
        return {"vr": vr, "Value": numbers_out}
    return {"vr": vr, "Value": parts}


def _element_json(elem: DataElement, bulk_base: str, path: tuple[str, ...]) -> JsonDict:
    if elem.VR == "SQ":
        items = [dataset_to_json(item, bulk_base, _path=(*path, str(i))) for i, item in enumerate(elem.value)]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if elem.VR in _BINARY_VRS:
        value = elem.value
        if value is None or len(value) == 0:
            return {"vr": elem.VR}
        if len(value) > BULK_THRESHOLD:
            return {"vr": elem.VR, "BulkDataURI": f"{bulk_base}/{element_path(path)}"}
        return {"vr": elem.VR, "InlineBinary": base64.b64encode(bytes(value)).decode("ascii")}
    try:
        result: JsonDict = elem.to_json_dict(None, BULK_THRESHOLD)
    except (ValueError, TypeError):
        # A malformed value still must not be lost: fall back to its raw bytes.
        raw = elem.value if isinstance(elem.value, bytes) else str(elem.value).encode("utf-8", "replace")
        result = {"vr": "UN", "InlineBinary": base64.b64encode(raw).decode("ascii")}
    return result


def first_text(attrs: JsonDict, tag: str) -> str | None:
    """First value of an attribute in DICOM JSON as text (person names by their alphabetic group)."""
    element = attrs.get(tag)
    if not element or not element.get("Value"):
        return None
    value = element["Value"][0]
    if isinstance(value, dict):
        value = value.get("Alphabetic")
    return None if value is None else str(value)


def first_int(attrs: JsonDict, tag: str) -> int | None:
    """First value of an attribute in DICOM JSON as an integer (None when absent or not a number)."""
    text = first_text(attrs, tag)
    try:
        return None if text is None else int(float(text))
    except ValueError:
        return None


def pick(attrs: JsonDict, tags: tuple[str, ...] | frozenset[str]) -> JsonDict:
    """The subset of a DICOM JSON object holding ``tags``."""
    return {t: attrs[t] for t in tags if t in attrs}
