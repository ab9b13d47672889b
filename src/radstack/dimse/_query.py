"""C-FIND, C-GET and C-MOVE identifiers on the QIDO matching engine (PS3.4 Annex C).

An identifier is turned into the ``(key, value)`` pairs :func:`radstack.store.matching.parse_query`
takes: keys with a value are matching keys, empty keys are return keys (PS3.4 §C.2.2.1 and
§C.4.1.1.3). The searches are those QIDO-RS answers with (:mod:`radstack.store.search`), so DICOMweb
and DIMSE match the same way; this module only translates identifiers in and data sets out.

Levels and keys are those of PS3.4 §C.6.1 (Patient Root) and §C.6.2 (Study Root). Queries below
the top level are answered as relational ones (PS3.4 §C.4.1.2.2): the unique keys of the levels
above may be left out. The PATIENT level is derived from the study rows, grouped by PatientID.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from sqlalchemy import ColumnElement, select

from radstack.errors import BadRequest, IdentifierMismatch
from radstack.store import search
from radstack.store.matching import Query, QueryLevelValues, conditions, parse_query
from radstack.store.models import InstanceRow, SeriesRow, StudyRow
from radstack.store.studies import InstanceRecord, StudyStore

__all__ = [
    "FindRequest",
    "QueryModelValues",
    "find",
    "model_of",
    "parse_find",
    "retrieve_records",
]

JsonDict = dict[str, Any]
_PAGE = 500
#: Sub-operation counts are US (PS3.7 §9.3.3.2): no retrieve can have more.
MAX_SUBOPERATIONS = 65535

_QUERY_RETRIEVE_LEVEL = 0x00080052
#: Query/Retrieve Level and Specific Character Set (0008,0005) are not keys.
_SKIPPED = frozenset({_QUERY_RETRIEVE_LEVEL, 0x00080005})
_RETRIEVE_AE_TITLE = "00080054"
_INSTANCE_AVAILABILITY = "00080056"
_PATIENT_ID = "00100020"
_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
#: Patient module attributes answered at the PATIENT level (PS3.4 Table C.6-1).
_PATIENT_TAGS = frozenset(
    f"{int(Tag(k)):08X}"
    for k in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "OtherPatientIDsSequence",
        "EthnicGroup",
        "PatientComments",
    )
)
#: Patient attributes that are indexed and so can be matched at the PATIENT level.
_PATIENT_MATCHING = frozenset(
    f"{int(Tag(k)):08X}" for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
)
_PATIENT_COUNTS = ("00201200", "00201202", "00201204")  # NumberOfPatientRelated{Studies,Series,Instances}


class QueryModelValues(Enum):
    """Query/Retrieve information models (PS3.4 §C.6) and their levels, top first."""

    PATIENT_ROOT = ("PATIENT", "STUDY", "SERIES", "IMAGE")
    STUDY_ROOT = ("STUDY", "SERIES", "IMAGE")

    @property
    def levels(self) -> tuple[str, ...]:
        levels: tuple[str, ...] = self.value
        return levels


#: FIND, MOVE and GET SOP classes of each model (PS3.4 Table C.4-1 … C.4-3).
SOP_CLASSES: dict[str, QueryModelValues] = {
    "1.2.840.10008.5.1.4.1.2.1.1": QueryModelValues.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.1.2": QueryModelValues.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.1.3": QueryModelValues.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.1": QueryModelValues.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": QueryModelValues.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": QueryModelValues.STUDY_ROOT,
}
#: The unique key of each level (PS3.4 §C.6.1.1, §C.6.2.1).
_UNIQUE_KEYS = {"PATIENT": _PATIENT_ID, "STUDY": _STUDY_UID, "SERIES": _SERIES_UID, "IMAGE": _SOP_UID}
_KEYWORDS = {
    _PATIENT_ID: "PatientID",
    _STUDY_UID: "StudyInstanceUID",
    _SERIES_UID: "SeriesInstanceUID",
    _SOP_UID: "SOPInstanceUID",
}


@dataclass(frozen=True, slots=True)
class FindRequest:
    """A parsed C-FIND identifier."""

    model: QueryModelValues
    level: str  #: the Query/Retrieve Level (0008,0052)
    query: Query  #: matching keys, at the STUDY level for a PATIENT query
    #: Every key of the identifier (tag as 8 hex digits, VR), in order: what each response carries.
    keys: tuple[tuple[str, str], ...]
    #: Matching keys that were ignored (not supported at this level): pending status 0xFF01.
    unsupported: bool


def model_of(sop_class_uid: str) -> QueryModelValues:
    model = SOP_CLASSES.get(str(sop_class_uid))
    if model is None:
        raise IdentifierMismatch(f"SOP class {sop_class_uid} is not a Query/Retrieve information model")
    return model


def _level(identifier: Dataset, model: QueryModelValues) -> str:
    element = identifier.get(_QUERY_RETRIEVE_LEVEL)
    value = str(element.value or "").strip().upper() if element is not None else ""
    levels = "/".join(model.levels)
    if not value:
        raise IdentifierMismatch(f"QueryRetrieveLevel (0008,0052) is missing: use {levels}")
    if value not in model.levels:
        name = "Patient Root" if model is QueryModelValues.PATIENT_ROOT else "Study Root"
        raise IdentifierMismatch(f"QueryRetrieveLevel {value!r} must be {levels} ({name} model, PS3.4 §C.6)")
    return value


def _value_text(element: DataElement) -> str:
    """The value of an identifier element as query text; ``""`` for a return key."""
    value = element.value
    if element.VR == "SQ" or value is None or isinstance(value, bytes | bytearray):
        return ""
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue | list | tuple) else str(value)
    if element.VR == "UI" and text.strip() == "*":
        return ""  # some SCUs ask for a UID with '*': that is universal matching
    return text


def _vr(element: DataElement) -> str:
    vr = str(element.VR)
    return vr.split(" or ")[0] if " or " in vr else vr


def _keys(identifier: Dataset) -> list[tuple[str, str, str]]:
    """(tag, VR, value) of each key of ``identifier``, skipping its level and character set.

    Raises
    ------
    IdentifierMismatch
        An element whose value cannot be decoded in its VR, named with its raw value.
    """
    keys = []
    for tag in list(identifier.keys()):
        if tag.group in (0x0000, 0x0002) or tag.element == 0 or tag in _SKIPPED:
            continue
        try:
            element = identifier[tag]
            keys.append((f"{int(tag):08X}", _vr(element), _value_text(element)))
        except Exception:  # pydicom decodes values lazily: a malformed one fails here
            raise IdentifierMismatch(_undecodable(identifier, tag)) from None
    return keys


def _undecodable(identifier: Dataset, tag: BaseTag) -> str:
    raw = identifier.get_item(tag)  # the element as received, not decoded
    value = getattr(raw, "value", None)
    shown = value.decode("latin-1").strip() if isinstance(value, bytes) else "?"
    keyword = keyword_for_tag(tag)
    vr = getattr(raw, "VR", None) or (dictionary_VR(tag) if keyword else "UN")
    return f"{keyword or tag} {shown!r} is not a valid {vr} value (PS3.5 §6.2)"


def _parse(pairs: Iterable[tuple[str, str]], level: QueryLevelValues) -> Query:
    try:
        return parse_query(pairs, level)
    except BadRequest as exc:
        raise IdentifierMismatch(exc.message) from None


def parse_find(identifier: Dataset, sop_class_uid: str) -> FindRequest:
    """Parse a C-FIND identifier (PS3.4 §C.4.1.1.3) for the model of ``sop_class_uid``.

    Raises
    ------
    IdentifierMismatch
        No or an unknown Query/Retrieve Level, or a malformed matching key (a wildcard in a UID,
        a date that is not a date or range, …), each named in the message.
    """
    model = model_of(sop_class_uid)
    level = _level(identifier, model)
    keys = _keys(identifier)
    unsupported = False
    pairs = [(tag, value) for tag, _vr, value in keys]
    if level == "PATIENT":
        # Patient keys are study row columns: search studies, then group them by patient.
        unsupported = any(value and tag not in _PATIENT_MATCHING for tag, _vr, value in keys)
        pairs = [(tag, value if tag in _PATIENT_MATCHING else "") for tag, value in pairs]
        query = _parse(pairs, QueryLevelValues.STUDY)
    else:
        query = _parse(pairs, QueryLevelValues(level))
    return FindRequest(
        model=model,
        level=level,
        query=query,
        keys=tuple((tag, vr) for tag, vr, _value in keys),
        unsupported=unsupported or bool(query.warnings),
    )


# ----------------------------------------------------------------------------- C-FIND
#: What a caller may see of a page of matches of a level (:meth:`radstack.security.views.View.blind`).
Blind = Callable[[Sequence[JsonDict], QueryLevelValues], list[JsonDict]]


def _search_all(
    store: StudyStore, query: Query, scope: ColumnElement[bool] | None, blind: Blind | None = None
) -> Iterator[JsonDict]:
    """Every match of ``query``, page by page (C-FIND has no paging of its own), less what ``blind``
    takes out of each page."""
    searches: dict[QueryLevelValues, Callable[..., search.SearchResult]] = {
        QueryLevelValues.STUDY: search.search_studies,
        QueryLevelValues.SERIES: search.search_series,
        QueryLevelValues.IMAGE: search.search_instances,
    }
    run = searches[query.level]
    offset = 0
    while True:
        page = run(
            store, replace(query, offset=offset, limit=None), base_url="", max_limit=_PAGE, scope=scope
        )
        yield from blind(page.matches, query.level) if blind is not None else page.matches
        if not page.truncated:
            return
        offset += len(page.matches)


def _first(element: JsonDict | None) -> Any:
    values = (element or {}).get("Value") or [None]
    return values[0]


@dataclass
class _Patient:
    attrs: JsonDict  #: patient module attributes of the patient's newest study
    studies: int = 0
    series: int = 0
    instances: int = 0


def _patients(matches: Iterable[JsonDict]) -> Iterator[JsonDict]:
    """Study matches grouped by PatientID, with the patient-level counts (PS3.4 Table C.6-1)."""
    patients: dict[str, _Patient] = {}
    for match in matches:
        key = str(_first(match.get(_PATIENT_ID)) or "")
        patient = patients.get(key)
        if patient is None:
            patient = patients[key] = _Patient({t: e for t, e in match.items() if t in _PATIENT_TAGS})
        patient.studies += 1
        patient.series += int(_first(match.get("00201206")) or 0)  # NumberOfStudyRelatedSeries
        patient.instances += int(_first(match.get("00201208")) or 0)  # NumberOfStudyRelatedInstances
    for patient in patients.values():
        counts = (patient.studies, patient.series, patient.instances)
        yield patient.attrs | {
            tag: {"vr": "IS", "Value": [n]} for tag, n in zip(_PATIENT_COUNTS, counts, strict=True)
        }


def find(
    store: StudyStore,
    request: FindRequest,
    ae_title: str,
    scope: ColumnElement[bool] | None = None,
    *,
    blind: Blind | None = None,
) -> Iterator[Dataset]:
    """The response identifiers of a C-FIND (PS3.4 §C.4.1.1.3.2), one per match within ``scope``
    (a condition on the study row; None: every study), without the series and instances ``blind``
    hides from the caller (and with their counts less them).

    Each carries every key of the request (zero length when there is no value), the unique keys
    of its level and the levels above, and the Query/Retrieve Level.
    """
    matches = _search_all(store, request.query, scope, blind)
    if request.level == "PATIENT":
        matches = _patients(matches)
    levels = request.model.levels
    uniques = [_UNIQUE_KEYS[lvl] for lvl in levels[: levels.index(request.level) + 1]]
    for match in matches:
        out: JsonDict = {}
        for tag, vr in request.keys:
            out[tag] = match.get(tag) or {"vr": vr}
        for tag in uniques:
            if tag in match:
                out[tag] = match[tag]
        if _RETRIEVE_AE_TITLE in out:
            out[_RETRIEVE_AE_TITLE] = {"vr": "AE", "Value": [ae_title]}
        if _INSTANCE_AVAILABILITY in out and request.level != "PATIENT":
            out[_INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
        yield _dataset(out, request.level)


def _dataset(attrs: JsonDict, level: str) -> Dataset:
    ds = Dataset.from_json(attrs, bulk_data_uri_handler=lambda *_args: b"")
    if not json.dumps(attrs, ensure_ascii=False).isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # stored values are Unicode: answer in UTF-8
    ds.QueryRetrieveLevel = level
    return ds


# ----------------------------------------------------------------------------- C-GET, C-MOVE
def retrieve_records(
    store: StudyStore, identifier: Dataset, sop_class_uid: str, scope: ColumnElement[bool] | None = None
) -> list[InstanceRecord]:
    """The current instances a C-GET or C-MOVE identifier names (PS3.4 §C.4.2.2.1, §C.4.3.2.1),
    of studies within ``scope`` (a condition on the study row; None: every study).

    The identifier holds the unique key of its level (a UID list for UIDs) and may hold those of
    the levels above; other keys are ignored.

    Raises
    ------
    IdentifierMismatch
        No or an unknown level, no value for the level's unique key, a wildcard in it, or more
        matches than the sub-operation counts can express.
    """
    model = model_of(sop_class_uid)
    level = _level(identifier, model)
    given = {tag: value for tag, _vr, value in _keys(identifier) if value.strip()}
    pairs: list[tuple[str, str]] = []
    for lvl in model.levels[: model.levels.index(level) + 1]:
        tag = _UNIQUE_KEYS[lvl]
        value = given.get(tag, "").strip()
        if not value and lvl == level:
            raise IdentifierMismatch(f"{_KEYWORDS[tag]} is required to retrieve at the {level} level")
        if any(c in value for c in "*?"):
            raise IdentifierMismatch(
                f"no wildcards in {_KEYWORDS[tag]} of a retrieve (got {value!r}; PS3.4 §C.4.2.2.1)"
            )
        if value:
            pairs.append((tag, value))
    query = _parse(pairs, QueryLevelValues.IMAGE)
    statement = (
        select(*InstanceRow.__table__.columns)
        .join(SeriesRow, SeriesRow.series_uid == InstanceRow.series_uid)
        .join(StudyRow, StudyRow.id == SeriesRow.study_pk)
        .where(InstanceRow.version_removed.is_(None), *conditions(query), *([] if scope is None else [scope]))
        .order_by(
            InstanceRow.study_uid,
            InstanceRow.series_uid,
            InstanceRow.instance_number.asc().nulls_last(),
            InstanceRow.sop_uid,
        )
        .limit(MAX_SUBOPERATIONS + 1)
    )
    with store.engine.connect() as connection:
        rows = connection.execute(statement).all()
    if len(rows) > MAX_SUBOPERATIONS:
        raise IdentifierMismatch(
            f"more than {MAX_SUBOPERATIONS} instances match; retrieve fewer at a time (PS3.7 §9.3.3.2)"
        )
    return [InstanceRecord.from_row(row) for row in rows]
