"""What a role sees of DICOM headers: the one place answers are shaped by role.

A :class:`View` removes the attributes the role must never see and, for a de-identified role,
applies PS3.15 Annex E (Basic Application Level Confidentiality Profile with the Retain
Longitudinal Temporal Information Modified Dates option) through
:class:`radstack.dicom.deid.Deidentifier`. The same view shapes QIDO-RS and C-FIND matches, WADO-RS
metadata, the Part-10 files of WADO-RS and C-GET/C-MOVE, and exports.

Pseudonyms and the date shift are keyed on the patient (the study's PatientID), so a patient's
studies keep their intervals. A de-identified client only ever sees pseudonymous UIDs; requests
that name them are mapped back by :meth:`View.real_uid` through the index, which stores each
study's, series' and instance's pseudonym.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from radstack.dicom.deid import Deidentifier
from radstack.errors import BadRequest, IdentifierMismatch, NotFound
from radstack.security.attribute_filter import AttributeFilter
from radstack.security.policy import RoleDef, ViewValues
from radstack.store.studies import StudyStore

__all__ = ["SAFE_MATCHING_KEYS", "View"]

JsonDict = dict[str, Any]

#: Query keys a de-identified view may match on: matching on a name, an ID or a real date would
#: tell a caller whether a patient is stored (and their real values), so those are refused.
SAFE_MATCHING_KEYS = frozenset(
    {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "Modality",
        "ModalitiesInStudy",
        "BodyPartExamined",
        "SeriesNumber",
        "InstanceNumber",
        "0020000D",
        "0020000E",
        "00080018",
        "00080016",
        "00080060",
        "00080061",
        "00180015",
        "00200011",
        "00200013",
    }
)
#: Query parameters that are not matching keys (PS3.18 §8.3.4).
_CONTROL = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
_UID_KEYS = {
    "StudyInstanceUID": "study",
    "0020000D": "study",
    "SeriesInstanceUID": "series",
    "0020000E": "series",
    "SOPInstanceUID": "instance",
    "00080018": "instance",
}
_STUDY_UID = "0020000D"
_PATIENT_ID = "00100020"
_DIMSE_CONTROL = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC"})


class View:
    """The header view of one role.

    Parameters
    ----------
    role
        Its view (full or de-identified) and hidden attributes.
    store
        For patient keys and pseudonym lookups.
    deidentifier
        The deployment's de-identifier (its secret keys every pseudonym).
    """

    def __init__(self, role: RoleDef, store: StudyStore, deidentifier: Deidentifier) -> None:
        self.store = store
        self.filter = AttributeFilter(deny=role.hidden) if role.hidden else None
        self.deid = deidentifier if role.view is ViewValues.DEIDENTIFIED else None
        self._keys: dict[str, str] = {}

    @property
    def shapes(self) -> bool:
        """Whether answers differ from what is stored (False: send them as they are)."""
        return self.filter is not None or self.deid is not None

    def _patient_key(self, study_uid: str) -> str:
        key = self._keys.get(study_uid)
        if key is None:
            key = self._keys[study_uid] = self.store.patient_key(study_uid)
        return key

    def json(self, ds: JsonDict, study_uid: str | None = None) -> JsonDict:
        """``ds`` (DICOM JSON, never changed) as this role sees it; ``study_uid`` when ``ds`` lacks it."""
        if self.filter is not None:
            ds = self.filter.apply_json(ds)
        if self.deid is not None:
            study = study_uid or _first(ds, _STUDY_UID)
            ds = self.deid.apply_json(
                ds, self._patient_key(study) if study else _first(ds, _PATIENT_ID) or ""
            )
        return ds

    def dataset(self, ds: Dataset, study_uid: str | None = None) -> Dataset:
        """``ds`` (never changed) as this role sees it."""
        if self.filter is not None:
            ds = self.filter.apply_dataset(ds)
        if self.deid is not None:
            study = study_uid or str(ds.get("StudyInstanceUID", "")) or None
            ds = self.deid.apply_dataset(
                ds, self._patient_key(study) if study else str(ds.get("PatientID", ""))
            )
        return ds

    def identifier(self, identifier: Dataset) -> Dataset:
        """A C-FIND, C-GET or C-MOVE identifier of a de-identified client in stored terms: its
        pseudonymous UIDs mapped back; matching on identifying keys refused (as :meth:`query`).

        Raises
        ------
        IdentifierMismatch
            When a de-identified client matches on a key other than the safe ones (0xA900).
        """
        if self.deid is None:
            return identifier
        out = Dataset()
        for element in identifier:
            keyword = element.keyword
            value = element.value
            if keyword in _UID_KEYS and value:
                uids = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
                mapped = [self._known(_UID_KEYS[keyword], str(uid)) for uid in uids]
                value = mapped if len(mapped) > 1 else mapped[0]
            elif value not in (None, "", b"") and keyword not in SAFE_MATCHING_KEYS | _DIMSE_CONTROL:
                raise IdentifierMismatch(f"a de-identified view cannot match on {keyword or element.tag}")
            out.add_new(element.tag, element.VR, value)
        return out

    def document(self, gzipped: bytes, study_uid: str) -> bytes:
        """A gzipped metadata document (a JSON array of instances) as this role sees it, as JSON."""
        instances = json.loads(gzip.decompress(gzipped))
        return json.dumps([self.json(item, study_uid) for item in instances], separators=(",", ":")).encode()

    def real_uid(self, level: str, uid: str) -> str:
        """The stored UID a de-identified client names by its pseudonym.

        Raises
        ------
        NotFound
            When a de-identified client names a pseudonym no stored row has.
        """
        if self.deid is None:
            return uid
        real = self.store.real_uid(level, uid)
        if real is None:
            raise NotFound(f"{level} {uid} not found")
        return real

    def query(self, params: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """QIDO parameters with pseudonymous UIDs mapped back; matching on identifying keys refused.

        Raises
        ------
        BadRequest
            When a de-identified client matches on a key other than the safe ones, or on a nested one.
        """
        if self.deid is None:
            return list(params)
        out = []
        for key, value in params:
            name = key.split(".")[0]
            if key in _CONTROL:
                out.append((key, value))
                continue
            if name not in SAFE_MATCHING_KEYS or "." in key:
                raise BadRequest(
                    f"a de-identified view cannot match on {key}; it may match on "
                    f"{', '.join(sorted(k for k in SAFE_MATCHING_KEYS if not k[0].isdigit()))}"
                )
            level = _UID_KEYS.get(name)
            if level is not None and value:
                value = "\\".join(self._known(level, uid) for uid in value.replace(",", "\\").split("\\"))
            out.append((key, value))
        return out

    def _known(self, level: str, uid: str) -> str:
        # An unknown pseudonym matches nothing: keep it (it is no stored UID either).
        return self.store.real_uid(level, uid) or uid


def _first(ds: JsonDict, tag: str) -> str | None:
    values = (ds.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None
