"""Searching the index for studies, series and instances: the one search of QIDO-RS and C-FIND.

QIDO-RS (PS3.18 §10.6) answers with these matches as they are; C-FIND (PS3.4 §C.4.1,
:mod:`radstack.dimse._query`) turns its identifier into the same query and picks its keys out of
them, so both protocols match the same way. Matching, ordering and paging run in SQL on the index
(:mod:`radstack.store.matching`), so a study search touches only the page it returns. Each match is DICOM JSON (PS3.18 Annex F) with the return attributes of
PS3.18 Tables 10.6.3-3 (study), 10.6.3-4 (series) and 10.6.3-5 (instance), present even when
empty, plus whatever ``includefield`` asks for, taken from the stored attributes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from radstack.store.matching import Query, QueryLevelValues, conditions
from radstack.store.models import InstanceRow, SeriesRow, StudyRow
from radstack.store.studies import StudyStore

__all__ = ["SearchResult", "count_studies", "search_instances", "search_series", "search_studies"]

JsonDict = dict[str, Any]

#: Study return attributes read from the stored study attributes (PS3.18 Table 10.6.3-3);
#: StudyDescription is not required but every worklist shows it.
_STUDY_ATTRS = (
    ("00080020", "DA"),  # StudyDate
    ("00080030", "TM"),  # StudyTime
    ("00080050", "SH"),  # AccessionNumber
    ("00080090", "PN"),  # ReferringPhysicianName
    ("00081030", "LO"),  # StudyDescription
    ("00100010", "PN"),  # PatientName
    ("00100020", "LO"),  # PatientID
    ("00100030", "DA"),  # PatientBirthDate
    ("00100040", "CS"),  # PatientSex
    ("00200010", "SH"),  # StudyID
)
#: Returned only when stored (conditional in PS3.18 Table 10.6.3-3 / -4).
_STUDY_OPTIONAL = ("00080201",)  # TimezoneOffsetFromUTC
_SERIES_ATTRS = (
    ("00080060", "CS"),  # Modality
    ("0008103E", "LO"),  # SeriesDescription
    ("00200011", "IS"),  # SeriesNumber
    ("00400244", "DA"),  # PerformedProcedureStepStartDate
    ("00400245", "TM"),  # PerformedProcedureStepStartTime
)
_SERIES_OPTIONAL = ("00400275",)  # RequestAttributesSequence
RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The matches of one search, in order, with warnings for the ``Warning`` header."""

    matches: tuple[JsonDict, ...]
    warnings: tuple[str, ...]
    #: True when more results match than were returned (``limit`` or the server's cap).
    truncated: bool


def _element(vr: str, value: object) -> JsonDict:
    """A DICOM JSON element (PS3.18 §F.2.2); ``None`` or ``""`` is an empty, present element."""
    if value is None or value == "":
        return {"vr": vr}
    return {"vr": vr, "Value": [value]}


def _vr_of(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"


def _loads(text: str | bytes | None) -> JsonDict:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def _study_part(row: StudyRow, attrs: JsonDict, base_url: str, *, retrieve: bool) -> JsonDict:
    out = {tag: attrs.get(tag) or {"vr": vr} for tag, vr in _STUDY_ATTRS}
    out.update({tag: attrs[tag] for tag in _STUDY_OPTIONAL if tag in attrs})
    modalities = [m for m in row.modalities.split("\\") if m]
    out["00080061"] = {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}
    out["0020000D"] = _element("UI", row.study_uid)
    out["00201206"] = _element("IS", row.num_series)
    out["00201208"] = _element("IS", row.num_instances)
    if retrieve:
        out[INSTANCE_AVAILABILITY] = _element("CS", "ONLINE")
        out[RETRIEVE_URL] = _element("UR", f"{base_url}/studies/{row.study_uid}")
    return out


def _series_part(row: SeriesRow, attrs: JsonDict, base_url: str, *, retrieve: bool) -> JsonDict:
    out = {tag: attrs.get(tag) or {"vr": vr} for tag, vr in _SERIES_ATTRS}
    out.update({tag: attrs[tag] for tag in _SERIES_OPTIONAL if tag in attrs})
    out["0020000D"] = _element("UI", row.study_uid)
    out["0020000E"] = _element("UI", row.series_uid)
    out["00201209"] = _element("IS", row.num_instances)
    if retrieve:
        out[INSTANCE_AVAILABILITY] = _element("CS", "ONLINE")
        out[RETRIEVE_URL] = _element("UR", f"{base_url}/studies/{row.study_uid}/series/{row.series_uid}")
    return out


def _instance_part(row: InstanceRow, base_url: str) -> JsonDict:
    url = f"{base_url}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"
    return {
        "00080016": _element("UI", row.sop_class_uid),
        "00080018": _element("UI", row.sop_uid),
        "0020000D": _element("UI", row.study_uid),
        "0020000E": _element("UI", row.series_uid),
        "00200013": _element("IS", row.instance_number),
        "00280008": _element("IS", row.number_of_frames),
        "00280010": _element("US", row.rows),
        "00280011": _element("US", row.columns),
        "00280100": _element("US", row.bits_allocated),
        INSTANCE_AVAILABILITY: _element("CS", "ONLINE"),
        RETRIEVE_URL: _element("UR", url),
    }


def _finish(out: JsonDict, query: Query, sources: Iterable[JsonDict]) -> JsonDict:
    """Add the ``includefield`` attributes (PS3.18 §8.3.4.3) and order the object by tag."""
    sources = list(sources)
    if query.include_all:
        for source in sources:
            for tag, element in source.items():
                out.setdefault(tag, element)
    for tag in query.include:
        if tag not in out:
            found = next((s[tag] for s in sources if tag in s), None)
            out[tag] = found if found is not None else {"vr": _vr_of(tag)}
    return dict(sorted(out.items()))


def _page(query: Query, max_limit: int) -> tuple[int, bool]:
    """Rows to return and whether the server's cap (not the client's ``limit``) decides it."""
    if query.limit is not None and query.limit <= max_limit:
        return query.limit, False
    return max_limit, True


def _run(
    store: StudyStore, statement: Select[*tuple[Any, ...]], query: Query, max_limit: int
) -> tuple[list[Any], tuple[str, ...], bool]:
    """Execute ``statement`` for one page, fetching one extra row to learn whether more match."""
    size, capped = _page(query, max_limit)
    with Session(store.engine) as session:
        rows = list(session.execute(statement.offset(query.offset).limit(size + 1)).all())
    warnings = list(query.warnings)
    truncated = len(rows) > size
    if truncated:
        rows = rows[:size]
        if capped:
            warnings.append(
                f"more results match than the server returns at once ({max_limit}); "
                "ask again with offset to page (PS3.18 §8.3.4.4)"
            )
        else:
            warnings.append(
                f"more results match than the requested limit of {size}; ask again with offset to page"
            )
    return rows, tuple(warnings), truncated


def _scoped(scope: ColumnElement[bool] | None) -> list[ColumnElement[bool]]:
    return [] if scope is None else [scope]


def _check_level(query: Query, level: QueryLevelValues) -> None:
    if query.level is not level:
        raise ValueError(f"a {query.level.value} query cannot search the {level.value} level")


def _study_order() -> list[ColumnElement[Any]]:
    return [
        StudyRow.study_date.desc().nulls_last(),
        StudyRow.study_time.desc().nulls_last(),
        StudyRow.study_uid.asc(),
    ]


def _series_order() -> list[ColumnElement[Any]]:
    return [SeriesRow.series_number.asc().nulls_last(), SeriesRow.series_uid.asc()]


def _study_where(query: Query, scope: ColumnElement[bool] | None) -> list[ColumnElement[bool]]:
    return [StudyRow.num_instances > 0, *conditions(query), *_scoped(scope)]


def count_studies(
    store: StudyStore, query: Query, *, cap: int, scope: ColumnElement[bool] | None = None
) -> int:
    """How many studies :func:`search_studies` matches (``limit`` and ``offset`` ignored), counting
    no further than ``cap`` so that the count stays cheap however large the index grows.

    Raises
    ------
    ValueError
        ``query`` is not a STUDY level query (a caller's bug, not a client's mistake).
    """
    _check_level(query, QueryLevelValues.STUDY)
    matching = select(StudyRow.id).where(*_study_where(query, scope)).limit(cap).subquery()
    with Session(store.engine) as session:
        return int(session.execute(select(func.count()).select_from(matching)).scalar_one())


def search_studies(
    store: StudyStore,
    query: Query,
    *,
    base_url: str,
    max_limit: int,
    scope: ColumnElement[bool] | None = None,
    order: Sequence[ColumnElement[Any]] | None = None,
) -> SearchResult:
    """Search for studies: ``GET /studies`` (PS3.18 §10.6.1, return attributes Table 10.6.3-3).

    Parameters
    ----------
    store
        The index to search.
    query
        A STUDY level query from :func:`radstack.store.matching.parse_query`.
    base_url
        Absolute DICOMweb root for the RetrieveURL (0008,1190) of each match.
    max_limit
        The server's cap on matches per response (``Settings.qido_max_limit``).
    scope
        A condition on :class:`StudyRow` that keeps the caller within its studies
        (:meth:`radstack.security.policy.Policy.study_condition`); None searches all.
    order
        The ORDER BY (the worklist puts AI priority first); by default newest study first.

    Returns
    -------
    SearchResult
        Matches newest study first (StudyDate, StudyTime descending, then StudyInstanceUID).

    Raises
    ------
    ValueError
        ``query`` was parsed for another level (a caller's bug, not a client's mistake).
    """
    _check_level(query, QueryLevelValues.STUDY)
    statement = (
        select(StudyRow)
        .where(*_study_where(query, scope))
        .order_by(*(order if order is not None else _study_order()))
    )
    rows, warnings, truncated = _run(store, statement, query, max_limit)
    matches = []
    for (study,) in rows:
        attrs = _loads(study.attrs)
        matches.append(_finish(_study_part(study, attrs, base_url, retrieve=True), query, [attrs]))
    return SearchResult(tuple(matches), warnings, truncated)


def search_series(
    store: StudyStore,
    query: Query,
    *,
    study_uid: str | None = None,
    base_url: str,
    max_limit: int,
    scope: ColumnElement[bool] | None = None,
) -> SearchResult:
    """Search for series: ``GET /series`` or ``GET /studies/{study}/series`` (PS3.18 §10.6.1).

    Each match holds the series return attributes (PS3.18 Table 10.6.3-4) and, when the search
    spans all studies, those of its study (Table 10.6.3-3) too.

    Parameters
    ----------
    store
        The index to search.
    query
        A SERIES level query; study keys are matched as well.
    study_uid
        The study of the URL path, already validated; ``None`` searches every study.
    base_url
        Absolute DICOMweb root for the RetrieveURLs.
    max_limit
        The server's cap on matches per response.

    Returns
    -------
    SearchResult
        Matches in study order (as :func:`search_studies`), then by SeriesNumber.

    Raises
    ------
    ValueError
        ``query`` was parsed for another level (a caller's bug, not a client's mistake).
    """
    _check_level(query, QueryLevelValues.SERIES)
    statement = (
        select(SeriesRow, StudyRow)
        .join(StudyRow, SeriesRow.study_pk == StudyRow.id)
        .where(SeriesRow.num_instances > 0, StudyRow.num_instances > 0, *conditions(query), *_scoped(scope))
    )
    if study_uid is not None:
        statement = statement.where(SeriesRow.study_uid == study_uid).order_by(*_series_order())
    else:
        statement = statement.order_by(*_study_order(), *_series_order())
    rows, warnings, truncated = _run(store, statement, query, max_limit)
    matches = []
    for series, study in rows:
        series_attrs, study_attrs = _loads(series.attrs), _loads(study.attrs)
        out = _series_part(series, series_attrs, base_url, retrieve=True)
        sources = [series_attrs, study_attrs]
        if study_uid is None:
            out = {**_study_part(study, study_attrs, base_url, retrieve=False), **out}
        matches.append(_finish(out, query, sources))
    return SearchResult(tuple(matches), warnings, truncated)


def search_instances(
    store: StudyStore,
    query: Query,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    base_url: str,
    max_limit: int,
    scope: ColumnElement[bool] | None = None,
) -> SearchResult:
    """Search for instances: ``GET /instances``, ``/studies/{study}/instances`` or
    ``/studies/{study}/series/{series}/instances`` (PS3.18 §10.6.1).

    Each match holds the instance return attributes (PS3.18 Table 10.6.3-5), the series ones when
    the search spans series, and the study ones when it spans studies. ``includefield=all``
    returns each instance's whole stored DICOM JSON.

    Parameters
    ----------
    store
        The index to search.
    query
        An IMAGE level query; study and series keys are matched as well.
    study_uid, series_uid
        The study and series of the URL path, already validated; ``None`` for all.
    base_url
        Absolute DICOMweb root for the RetrieveURLs.
    max_limit
        The server's cap on matches per response.

    Returns
    -------
    SearchResult
        Matches in study and series order, then by InstanceNumber.

    Raises
    ------
    ValueError
        ``query`` was parsed for another level (a caller's bug, not a client's mistake).
    """
    _check_level(query, QueryLevelValues.IMAGE)
    statement = (
        select(InstanceRow, SeriesRow, StudyRow)
        .join(SeriesRow, SeriesRow.series_uid == InstanceRow.series_uid)
        .join(StudyRow, StudyRow.id == SeriesRow.study_pk)
        .where(
            InstanceRow.version_removed.is_(None),
            StudyRow.num_instances > 0,
            *conditions(query),
            *_scoped(scope),
        )
    )
    if study_uid is not None:
        statement = statement.where(InstanceRow.study_uid == study_uid)
    if series_uid is not None:
        statement = statement.where(InstanceRow.series_uid == series_uid)
    order = [] if study_uid is not None else _study_order()
    order += [] if series_uid is not None else _series_order()
    statement = statement.order_by(
        *order, InstanceRow.instance_number.asc().nulls_last(), InstanceRow.sop_uid.asc()
    )
    rows, warnings, truncated = _run(store, statement, query, max_limit)
    matches = []
    for instance, series, study in rows:
        series_attrs, study_attrs = _loads(series.attrs), _loads(study.attrs)
        out = _instance_part(instance, base_url)
        if series_uid is None:
            out = {**_series_part(series, series_attrs, base_url, retrieve=False), **out}
        if study_uid is None:
            out = {**_study_part(study, study_attrs, base_url, retrieve=False), **out}
        sources = [series_attrs, study_attrs]
        wanted = [t for t in query.include if t not in out and all(t not in s for s in sources)]
        if query.include_all or wanted:
            # Attributes beyond the index live only in the instance's DICOM JSON blob.
            sources.insert(0, _loads(store.blobs.get(instance.json_key)))
        matches.append(_finish(out, query, sources))
    return SearchResult(tuple(matches), warnings, truncated)
