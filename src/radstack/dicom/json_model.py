"""DICOM JSON model (PS3.18 Annex F) with BulkDataURIs, and the attribute sets of each query level."""

from __future__ import annotations

import base64
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

__all__ = [
    "BULK_THRESHOLD",
    "INSTANCE_LEVEL_TAGS",
    "SERIES_LEVEL_TAGS",
    "STUDY_LEVEL_TAGS",
    "dataset_to_json",
    "element_path",
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
    """
    out: JsonDict = {}
    for elem in ds:
        if elem.tag.element == 0:
            continue
        key = f"{int(elem.tag):08X}"
        out[key] = _element_json(elem, bulk_base, (*_path, key))
    return out


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


def pick(attrs: JsonDict, tags: tuple[str, ...] | frozenset[str]) -> JsonDict:
    """The subset of a DICOM JSON object holding ``tags``."""
    return {t: attrs[t] for t in tags if t in attrs}
