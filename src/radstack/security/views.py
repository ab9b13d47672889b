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

A view made for one principal may also *hide* stored objects from it: labeling's blinding
(:mod:`radstack.labeling.blinding` decides, per study, what a :class:`Hidden` holds). The view asks
once per study and request, and applies the answer everywhere it shapes: QIDO-RS and C-FIND matches
and their counts (:meth:`View.blind`), WADO-RS and C-GET/C-MOVE instances (:meth:`View.visible`),
metadata documents (:meth:`View.document`), and a hidden series or instance named in a request is
not found (:meth:`View.require_visible`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from radstack.dicom.deid import Deidentifier
from radstack.errors import BadRequest, IdentifierMismatch, NotFound
from radstack.security.attribute_filter import AttributeFilter
from radstack.security.policy import RoleDef, ViewValues
from radstack.store.matching import QueryLevelValues
from radstack.store.studies import StudyStore

__all__ = ["NOTHING_HIDDEN", "SAFE_MATCHING_KEYS", "Hidden", "HiddenLookup", "View"]

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
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
_PATIENT_ID = "00100020"
#: The counts of a study or series match (PS3.18 Tables 10.6.3-3, -4) and ModalitiesInStudy.
_STUDY_SERIES = "00201206"
_STUDY_INSTANCES = "00201208"
_SERIES_INSTANCES = "00201209"
_MODALITIES = "00080061"
_DIMSE_CONTROL = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC"})


@dataclass(frozen=True, slots=True)
class Hidden:
    """What one principal may not see of one study (labeling's blinding decides it).

    An instance is hidden when its SOP Instance UID is in :attr:`instances` or its series in
    :attr:`series`; the counts a search answers with lose :attr:`per_series`.
    """

    #: SOP Instance UIDs hidden (in any version of the study).
    instances: frozenset[str] = frozenset()
    #: Series hidden whole: an AI result's series, or one whose every current instance is hidden.
    series: frozenset[str] = frozenset()
    #: Hidden current instances per series.
    per_series: Mapping[str, int] = field(default_factory=dict)
    #: Current series hidden whole (NumberOfStudyRelatedSeries loses them).
    emptied: int = 0
    #: ModalitiesInStudy of the series left, when a whole series is hidden (None: as stored).
    modalities: tuple[str, ...] | None = None
    #: The study's AI results (findings, priority) are hidden from the principal too.
    ai: bool = False

    def __bool__(self) -> bool:
        """Whether any stored object is hidden."""
        return bool(self.instances or self.series)

    def hides(self, series_uid: str | None, sop_uid: str | None = None) -> bool:
        """Whether the instance ``sop_uid`` of ``series_uid`` (or, without it, the whole series) is hidden."""
        return series_uid in self.series or (sop_uid is not None and sop_uid in self.instances)


NOTHING_HIDDEN = Hidden()

#: What a principal may not see of each of some studies: study UID → :class:`Hidden` (absent:
#: nothing hidden). Called with a batch, so a page of matches costs one lookup.
HiddenLookup = Callable[[Sequence[str]], Mapping[str, Hidden]]


class _Record(Protocol):
    @property
    def study_uid(self) -> str: ...
    @property
    def series_uid(self) -> str: ...
    @property
    def sop_uid(self) -> str: ...


_R = TypeVar("_R", bound=_Record)


class View:
    """The header view of one role (and, made for one principal, what it may not see).

    Parameters
    ----------
    role
        Its view (full or de-identified) and hidden attributes.
    store
        For patient keys and pseudonym lookups.
    deidentifier
        The deployment's de-identifier (its secret keys every pseudonym).
    hidden
        What the principal may not see of a study (labeling's blinding); None: nothing is hidden.
    """

    def __init__(
        self,
        role: RoleDef,
        store: StudyStore,
        deidentifier: Deidentifier,
        hidden: HiddenLookup | None = None,
    ) -> None:
        self.store = store
        self.filter = AttributeFilter(deny=role.hidden) if role.hidden else None
        self.deid = deidentifier if role.view is ViewValues.DEIDENTIFIED else None
        self._keys: dict[str, str] = {}
        self._lookup = hidden
        self._hidden: dict[str, Hidden] = {}

    # ------------------------------------------------------------------ hidden objects
    def hidden_in(self, study_uids: Iterable[str]) -> dict[str, Hidden]:
        """What is hidden of each study, asked once per study for the life of this view."""
        wanted = list(dict.fromkeys(study_uids))
        if self._lookup is None:
            return dict.fromkeys(wanted, NOTHING_HIDDEN)
        missing = [uid for uid in wanted if uid not in self._hidden]
        if missing:
            found = self._lookup(missing)
            for uid in missing:
                self._hidden[uid] = found.get(uid, NOTHING_HIDDEN)
        return {uid: self._hidden[uid] for uid in wanted}

    def hidden(self, study_uid: str) -> Hidden:
        """What is hidden of the study (:data:`NOTHING_HIDDEN` when nothing is)."""
        if self._lookup is None:
            return NOTHING_HIDDEN
        return self.hidden_in([study_uid])[study_uid]

    def ai_hidden(self, study_uids: Iterable[str]) -> set[str]:
        """Those of ``study_uids`` whose AI results (findings, priority) are hidden from the principal."""
        if self._lookup is None:
            return set()
        return {uid for uid, hidden in self.hidden_in(study_uids).items() if hidden.ai}

    def require_visible(self, study_uid: str, series_uid: str | None, sop_uid: str | None = None) -> None:
        """Refuse a request naming a hidden series or instance, as if it were not stored.

        Raises
        ------
        NotFound
            The series or instance is hidden (with the store's own message for a missing one).
        """
        if self._lookup is None or (series_uid is None and sop_uid is None):
            return
        hidden = self.hidden(study_uid)
        if sop_uid is not None and hidden.hides(series_uid, sop_uid):
            raise NotFound(f"instance {sop_uid} is not stored in study {study_uid}")
        if series_uid is not None and series_uid in hidden.series:
            raise NotFound(f"series {series_uid} is not stored in study {study_uid}")

    def visible(self, records: Sequence[_R]) -> list[_R]:
        """``records`` (instances) without the hidden ones."""
        if self._lookup is None:
            return list(records)
        hidden = self.hidden_in(record.study_uid for record in records)
        return [r for r in records if not hidden[r.study_uid].hides(r.series_uid, r.sop_uid)]

    def blind(self, matches: Sequence[JsonDict], level: QueryLevelValues) -> list[JsonDict]:
        """QIDO-RS or C-FIND matches (DICOM JSON, stored UIDs) of ``level`` without the hidden series
        or instances, and with the counts (NumberOfStudyRelatedSeries, NumberOfStudyRelatedInstances,
        NumberOfSeriesRelatedInstances) and ModalitiesInStudy of what is left."""
        if self._lookup is None or not matches:
            return list(matches)
        hidden = self.hidden_in(_first(m, _STUDY_UID) or "" for m in matches)
        out = []
        for match in matches:
            found = hidden[_first(match, _STUDY_UID) or ""]
            if not found:
                out.append(match)
                continue
            series = _first(match, _SERIES_UID) if level is not QueryLevelValues.STUDY else None
            sop = _first(match, _SOP_UID) if level is QueryLevelValues.IMAGE else None
            if series is not None and found.hides(series, sop):
                continue
            out.append(_recounted(match, found, series))
        return out

    # ------------------------------------------------------------------ headers

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
        """A gzipped metadata document (a JSON array of instances) as this role sees it, as JSON:
        without the instances hidden from the principal, each shaped by :meth:`json`."""
        instances = json.loads(gzip.decompress(gzipped))
        hidden = self.hidden(study_uid)
        if hidden:
            instances = [
                item
                for item in instances
                if not hidden.hides(_first(item, _SERIES_UID), _first(item, _SOP_UID))
            ]
        if self.shapes:
            instances = [self.json(item, study_uid) for item in instances]
        return json.dumps(instances, separators=(",", ":")).encode()

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


def _recounted(match: JsonDict, hidden: Hidden, series_uid: str | None) -> JsonDict:
    """``match`` (never changed) with its counts and ModalitiesInStudy less what ``hidden`` hides."""
    out = dict(match)
    lost = {
        _STUDY_SERIES: hidden.emptied,
        _STUDY_INSTANCES: sum(hidden.per_series.values()),
        _SERIES_INSTANCES: hidden.per_series.get(series_uid or "", 0),
    }
    for tag, n in lost.items():
        value = _first(out, tag)
        if n and value is not None:
            out[tag] = {**out[tag], "Value": [max(int(value) - n, 0)]}
    if hidden.modalities is not None and _MODALITIES in out:
        modalities = list(hidden.modalities)
        out[_MODALITIES] = {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}
    return out
