"""Attribute matching for queries (PS3.4 §C.2.2.2), shared by QIDO-RS (PS3.18 §10.6) and C-FIND.

A query arrives as ``(key, value)`` pairs; :func:`parse_query` turns them into typed
:class:`Match` objects bound to indexed columns, and :func:`conditions` turns those into
SQLAlchemy conditions. Nothing here knows about HTTP: a C-FIND handler can build the same pairs from
its identifier data set.

Supported matching types (PS3.4 §C.2.2.2):

* universal matching: an empty value (or ``*``) filters nothing, but the attribute is returned;
* single value matching: exact, case-sensitive, except person names (case-insensitive here);
* list of UID matching: UIDs separated by ``,`` or ``\\`` (and repeated keys);
* wildcard matching: ``*`` and ``?``, translated to SQL ``LIKE`` with ``%``, ``_`` and the escape
  character escaped;
* range matching for DA and TM: ``a-b``, ``-b`` and ``a-``;
* fuzzy matching of person names (PS3.18 §8.3.4.1 ``fuzzymatching=true``): a name matches when the
  query is a case-insensitive prefix of any of its components (``john`` matches ``Doe^John``).

Several values of a non-UID key (separated by ``\\``, or a repeated key) match when any of them
matches (multiple value matching, PS3.4 §C.2.2.2.8).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, and_, exists, func, literal, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import Boolean

from radstack.dicom.uids import check_uid
from radstack.errors import BadRequest
from radstack.store.models import InstanceRow, SeriesRow, StudyRow

__all__ = [
    "INDEXED",
    "Attribute",
    "Match",
    "MatchKindValues",
    "Query",
    "QueryLevelValues",
    "Term",
    "attribute_tag",
    "conditions",
    "keyword_of",
    "like_pattern",
    "match_condition",
    "parse_query",
]

#: The escape character of every LIKE pattern built here.
ESCAPE = "\\"
#: Query parameters of PS3.18 §8.3.4 that are not attribute keys.
_RESERVED = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_DA = re.compile(r"\d{8}")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})


class QueryLevelValues(Enum):
    """Query/Retrieve Level (0008,0052) enumerated values (PS3.4 §C.6.2.1)."""

    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return {"STUDY": 0, "SERIES": 1, "IMAGE": 2}[self.value]


class MatchKindValues(Enum):
    """How one value of a key is matched (PS3.4 §C.2.2.2)."""

    SINGLE_VALUE = "single value"
    WILDCARD = "wildcard"
    RANGE = "range"


@dataclass(frozen=True, slots=True)
class Attribute:
    """An attribute that is indexed in a column and so can be matched."""

    tag: str  #: 8 upper-case hex digits, as in DICOM JSON
    keyword: str
    vr: str
    level: QueryLevelValues
    column: InstrumentedAttribute[Any]


@dataclass(frozen=True, slots=True)
class Term:
    """One value of a key: a single value, a wildcard pattern, or a range (either end may be open)."""

    kind: MatchKindValues
    value: str = ""
    low: str | None = None
    high: str | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """A key with at least one term; it matches when any term matches."""

    attribute: Attribute
    terms: tuple[Term, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed QIDO-RS query (PS3.18 §8.3.4) at one level."""

    level: QueryLevelValues
    matches: tuple[Match, ...] = ()
    #: Tags to return besides the level's required attributes (``includefield``, universal keys and
    #: ignored keys), in request order.
    include: tuple[str, ...] = ()
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    #: Human-readable reasons for keys that were ignored (sent as a ``Warning`` header).
    warnings: tuple[str, ...] = ()


def _attr(keyword: str, level: QueryLevelValues, column: InstrumentedAttribute[Any]) -> Attribute:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Attribute(f"{tag:08X}", keyword, str(dictionary_VR(tag)), level, column)


_S, _R, _I = QueryLevelValues.STUDY, QueryLevelValues.SERIES, QueryLevelValues.IMAGE
#: Indexed attributes by tag: the keys that can be matched at their level and the levels below.
INDEXED: dict[str, Attribute] = {
    a.tag: a
    for a in (
        _attr("StudyInstanceUID", _S, StudyRow.study_uid),
        _attr("PatientName", _S, StudyRow.patient_name),
        _attr("PatientID", _S, StudyRow.patient_id),
        _attr("PatientBirthDate", _S, StudyRow.patient_birth_date),
        _attr("PatientSex", _S, StudyRow.patient_sex),
        _attr("StudyDate", _S, StudyRow.study_date),
        _attr("StudyTime", _S, StudyRow.study_time),
        _attr("AccessionNumber", _S, StudyRow.accession_number),
        _attr("StudyID", _S, StudyRow.study_id),
        _attr("StudyDescription", _S, StudyRow.study_description),
        _attr("ReferringPhysicianName", _S, StudyRow.referring_physician_name),
        _attr("InstitutionName", _S, StudyRow.institution_name),
        _attr("ModalitiesInStudy", _S, StudyRow.modalities),
        _attr("SeriesInstanceUID", _R, SeriesRow.series_uid),
        _attr("Modality", _R, SeriesRow.modality),
        _attr("SeriesNumber", _R, SeriesRow.series_number),
        _attr("SeriesDescription", _R, SeriesRow.series_description),
        _attr("BodyPartExamined", _R, SeriesRow.body_part),
        _attr("SeriesDate", _R, SeriesRow.series_date),
        _attr("SeriesTime", _R, SeriesRow.series_time),
        _attr("PerformedProcedureStepStartDate", _R, SeriesRow.pps_start_date),
        _attr("PerformedProcedureStepStartTime", _R, SeriesRow.pps_start_time),
        _attr("SOPInstanceUID", _I, InstanceRow.sop_uid),
        _attr("SOPClassUID", _I, InstanceRow.sop_class_uid),
        _attr("InstanceNumber", _I, InstanceRow.instance_number),
        _attr("Rows", _I, InstanceRow.rows),
        _attr("Columns", _I, InstanceRow.columns),
        _attr("BitsAllocated", _I, InstanceRow.bits_allocated),
        _attr("NumberOfFrames", _I, InstanceRow.number_of_frames),
    )
}
_MODALITIES_IN_STUDY = INDEXED["00080061"]


# ----------------------------------------------------------------------------- parsing
def attribute_tag(name: str) -> str:
    """The tag (8 upper-case hex digits) of a keyword or tag; :class:`BadRequest` when unknown.

    A dotted sequence path (``RequestAttributesSequence.RequestedProcedureID``, PS3.18 §8.3.4.1)
    resolves to its top-level sequence.

    Raises
    ------
    BadRequest
        ``name`` is neither a DICOM keyword nor a tag of 8 hex digits.
    """
    parts = name.split(".")
    tags = []
    for part in parts:
        if _HEX_TAG.fullmatch(part):
            tags.append(part.upper())
            continue
        tag = tag_for_keyword(part) if part.isidentifier() else None
        if tag is None:
            raise BadRequest(
                f"query key {name!r} is not a DICOM attribute keyword or tag "
                "(PS3.18 §8.3.4.1: e.g. PatientName or 00100010)"
            )
        tags.append(f"{tag:08X}")
    return tags[0]


def _nested(name: str) -> bool:
    return "." in name


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise BadRequest(f"{name} {value!r} must be true or false (PS3.18 §8.3.4.1)")


def _parse_count(name: str, value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise BadRequest(f"{name} {value!r} must be a non-negative integer (PS3.18 §8.3.4.4)")
    return int(value)


def _split_range(attribute: Attribute, value: str) -> Term:
    pattern = _DA if attribute.vr == "DA" else _TM
    low, dash, high = value.partition("-")
    ends = (low, high) if dash else (value,)
    if "-" in high or not all(e == "" or pattern.fullmatch(e) for e in ends) or (dash and not (low or high)):
        form = "YYYYMMDD" if attribute.vr == "DA" else "HHMMSS.FFFFFF"
        raise BadRequest(
            f"{attribute.keyword} {value!r} is not a {attribute.vr} value or range "
            f"(PS3.4 §C.2.2.2.5: {form}, {form}-{form}, -{form} or {form}-)"
        )
    if not dash:
        return Term(MatchKindValues.SINGLE_VALUE, value)
    if low and high and high < low:
        raise BadRequest(f"{attribute.keyword} range {value!r} ends before it starts")
    return Term(MatchKindValues.RANGE, low=low or None, high=high or None)


def _terms(attribute: Attribute, value: str) -> list[Term]:
    """The terms of one non-empty value of ``attribute`` (PS3.4 §C.2.2.2).

    Raises
    ------
    BadRequest
        When a UID is malformed or has wildcards, or a date, time or integer is malformed.
    """
    if attribute.vr == "UI":
        if any(c in value for c in "*?"):
            raise BadRequest(
                f"{attribute.keyword} {value!r}: wildcards are not allowed in UIDs (PS3.4 §C.2.2.2.4)"
            )
        uids = [u.strip() for u in re.split(r"[,\\]", value)]
        return [
            Term(MatchKindValues.SINGLE_VALUE, check_uid(u, attribute.keyword, in_request=True)) for u in uids
        ]
    terms: list[Term] = []
    for item in value.split("\\"):
        if item in ("", "*"):
            continue
        if attribute.vr in ("DA", "TM"):
            terms.append(_split_range(attribute, item))
        elif attribute.vr in _INTEGER_VRS:
            try:
                int(item)
            except ValueError:
                raise BadRequest(f"{attribute.keyword} {item!r} must be an integer") from None
            terms.append(Term(MatchKindValues.SINGLE_VALUE, str(int(item))))
        elif "*" in item or "?" in item:
            terms.append(Term(MatchKindValues.WILDCARD, item))
        else:
            terms.append(Term(MatchKindValues.SINGLE_VALUE, item))
    return terms


def parse_query(params: Iterable[tuple[str, str]], level: QueryLevelValues) -> Query:
    """Parse QIDO-RS query parameters (PS3.18 §8.3.4) for a search at ``level``.

    Parameters
    ----------
    params
        ``(name, value)`` pairs in request order; repeated names are kept (``multi_items()``).
    level
        The level of the searched resource (``/studies``: STUDY, ``…/series``: SERIES,
        ``…/instances``: IMAGE). Keys of that level and the levels above are matched.

    Returns
    -------
    Query
        Typed matches, the attributes to return, paging and warnings for ignored keys.

    Raises
    ------
    BadRequest
        An unknown attribute name, a malformed value (UID, date, integer), or a malformed
        ``limit``, ``offset`` or ``fuzzymatching``.
    """
    terms: dict[str, list[Term]] = {}
    include: list[str] = []
    ignored: list[str] = []
    include_all = fuzzy = False
    limit: int | None = None
    offset = 0
    for name, raw in params:
        value = raw.strip()
        if name == "limit":
            limit = _parse_count(name, value)
        elif name == "offset":
            offset = _parse_count(name, value)
        elif name == "fuzzymatching":
            fuzzy = _parse_bool(name, value)
        elif name == "includefield":
            for field in (f.strip() for f in value.split(",")):
                if field == "all":
                    include_all = True
                elif field:
                    include.append(attribute_tag(field))
        else:
            tag = attribute_tag(name)
            attribute = INDEXED.get(tag)
            if attribute is None or attribute.level.depth > level.depth or _nested(name):
                if value:
                    ignored.append(name)
                include.append(tag)
                continue
            include.append(tag)
            terms.setdefault(tag, []).extend(_terms(attribute, value) if value else [])
    matches = tuple(Match(INDEXED[tag], tuple(found)) for tag, found in terms.items() if found)
    warnings = tuple(
        f"{name} is not supported as a matching key at the {level.value} level and was ignored "
        "(PS3.18 §8.3.4.1)"
        for name in dict.fromkeys(ignored)
    )
    return Query(
        level=level,
        matches=matches,
        include=tuple(dict.fromkeys(include)),
        include_all=include_all,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
        warnings=warnings,
    )


# ----------------------------------------------------------------------------- SQL
def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern: ``*``→``%``, ``?``→``_``, literals escaped."""
    out = []
    for char in value:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in ("%", "_", ESCAPE):
            out.append(ESCAPE + char)
        else:
            out.append(char)
    return "".join(out)


def _glob_pattern(value: str) -> str:
    """The same wildcard value as an SQLite GLOB pattern (case-sensitive; ``[`` is its only metachar)."""
    return value.replace("[", "[[]")


class _CaseSensitiveLike(ColumnElement[bool]):
    """``column`` matches a DICOM wildcard value case-sensitively on every backend.

    PostgreSQL's LIKE is case-sensitive; SQLite's is not (for ASCII), so SQLite uses GLOB, whose
    ``*`` and ``?`` are DICOM's own wildcards.
    """

    type = Boolean()
    # The pattern is rendered as a fresh literal at compile time, so statements holding this
    # element must not be served from SQLAlchemy's compiled cache.
    inherit_cache = False

    def __init__(self, column: ColumnElement[Any], value: str) -> None:
        self.column = column
        self.value = value


@compiles(_CaseSensitiveLike)
def _compile_like(element: _CaseSensitiveLike, compiler: SQLCompiler, **kw: Any) -> str:
    pattern = literal(like_pattern(element.value))
    return compiler.process(element.column.like(pattern, escape=ESCAPE), **kw)


@compiles(_CaseSensitiveLike, "sqlite")
def _compile_glob(element: _CaseSensitiveLike, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.op("GLOB")(literal(_glob_pattern(element.value))), **kw)


def _time_high(value: str) -> str:
    """Upper end of a TM range: a partial time includes all of its last component (``16``→16:59:59…)."""
    full = value + "595959"[len(value) :] if len(value) < 6 else value
    return full if "." in full else full + ".999999"


def _person_name(column: ColumnElement[Any], term: Term, fuzzy: bool) -> ColumnElement[bool]:
    lowered = func.lower(column)
    value = term.value.lower()
    pattern = like_pattern(value)
    if not fuzzy:
        if term.kind is MatchKindValues.WILDCARD:
            return lowered.like(pattern, escape=ESCAPE)
        return lowered == value
    # Fuzzy: a prefix of the whole name or of any component (after ^ or a space, PS3.5 §6.2.1.1).
    return or_(
        lowered.like(pattern + "%", escape=ESCAPE),
        lowered.like("%^" + pattern + "%", escape=ESCAPE),
        lowered.like("% " + pattern + "%", escape=ESCAPE),
    )


def _modalities(term: Term) -> ColumnElement[bool]:
    """ModalitiesInStudy matches when any modality of the study matches (PS3.18 §10.6.1.2).

    Exact values test the backslash-joined column with delimiters on both sides, so ``CT`` never
    matches ``CTX``; wildcards test the study's series, since a LIKE pattern could span two entries.
    """
    if term.kind is MatchKindValues.WILDCARD:
        # An alias, so a series-level search does not correlate this subquery with its own series.
        member = aliased(SeriesRow)
        return exists(
            select(member.id).where(
                member.study_pk == StudyRow.id,
                member.num_instances > 0,
                _CaseSensitiveLike(member.modality.expression, term.value),
            )
        )
    delimited = literal("\\") + StudyRow.modalities + literal("\\")
    return delimited.like("%" + ESCAPE * 2 + like_pattern(term.value) + ESCAPE * 2 + "%", escape=ESCAPE)


def _term(attribute: Attribute, term: Term, fuzzy: bool) -> ColumnElement[bool]:
    column: ColumnElement[Any] = attribute.column.expression
    if attribute is _MODALITIES_IN_STUDY:
        return _modalities(term)
    if attribute.vr == "PN":
        return _person_name(column, term, fuzzy)
    if attribute.vr in _INTEGER_VRS:
        return column == int(term.value)
    if term.kind is MatchKindValues.WILDCARD:
        return _CaseSensitiveLike(column, term.value)
    if term.kind is MatchKindValues.RANGE:
        bounds: list[ColumnElement[bool]] = [column.is_not(None), column != ""]
        if term.low is not None:
            bounds.append(column >= term.low)
        if term.high is not None:
            bounds.append(column <= (_time_high(term.high) if attribute.vr == "TM" else term.high))
        return and_(*bounds)
    return column == term.value


def match_condition(match: Match, *, fuzzy: bool = False) -> ColumnElement[bool]:
    """The SQL condition of one key: any of its terms matches."""
    attribute = match.attribute
    single = all(t.kind is MatchKindValues.SINGLE_VALUE for t in match.terms)
    if (
        single
        and len(match.terms) > 1
        and attribute.vr in ("UI", "CS", "SH", "LO")
        and attribute is not _MODALITIES_IN_STUDY
    ):
        # List of UID matching (PS3.4 §C.2.2.2.2) as one IN, which uses the column's index.
        return attribute.column.expression.in_([t.value for t in match.terms])
    return or_(*(_term(match.attribute, term, fuzzy) for term in match.terms))


def conditions(query: Query) -> list[ColumnElement[bool]]:
    """SQL conditions for every match of ``query`` (to be ANDed), on the columns of :data:`INDEXED`.

    The caller selects from the tables of the query's level (studies; series joined to studies;
    instances joined to series and studies).
    """
    return [match_condition(match, fuzzy=query.fuzzy) for match in query.matches]


def keyword_of(tag: str) -> str:
    """The keyword of a tag, or the tag itself for private or unknown tags."""
    return str(keyword_for_tag(int(tag, 16)) or tag)
