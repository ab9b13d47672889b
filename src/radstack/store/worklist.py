"""The worklist: the studies a reader works through, most urgent first, one page at a time.

The service under the worklist page (:mod:`radstack.web.ui`). The filters become QIDO-RS keys
(PatientName, PatientID, ModalitiesInStudy, a StudyDate range) parsed by
:func:`radstack.store.matching.parse_query`, so a filter matches exactly what the same QIDO search
would; the search itself is :func:`radstack.store.search.search_studies`, ordered for reading:
AI priority first (highest first, unscored last), then newest study; the "AI positive" filter keeps the
studies whose AI priority is ``high`` or ``urgent``. Every match passes through the
caller's :class:`~radstack.security.views.View`, so a de-identified role sees pseudonyms and
shifted dates, never the stored PHI. The rows' AI priority and reading status are read from the
study index in the same request. The view also takes out what labeling's blinding hides from the
caller: the counts and modalities of hidden series and instances, and the AI columns of a study whose
AI results a blinded reader may not see.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, case, not_, null, select
from sqlalchemy.orm import Session

from radstack.errors import BadRequest
from radstack.store import search
from radstack.store.matching import QueryLevelValues, parse_query
from radstack.store.models import StudyRow, StudyStatus
from radstack.store.studies import StudyStore

__all__ = [
    "HIGH_PRIORITY",
    "UNREAD",
    "URGENT_PRIORITY",
    "RoleView",
    "WorklistFilters",
    "WorklistPage",
    "WorklistRow",
    "priority_band",
    "worklist_order",
    "worklist_page",
]

JsonDict = dict[str, Any]

#: The status filter's name for studies whose status is null.
UNREAD = "unread"
#: Where the AI priority bands start (``studies.ai_priority``, 0–100): ``urgent`` from 80 (at or above
#: the model's "definite" operating point), ``high`` from 50 ("suspicious"), ``routine`` below.
#: :func:`radstack.ai.findings.priority_of` makes the numbers; the page and the "AI positive" filter
#: (``high`` or ``urgent``) read them.
URGENT_PRIORITY = 80
HIGH_PRIORITY = 50


def priority_band(priority: int) -> str:
    """The band of an AI priority: ``urgent``, ``high`` or ``routine``."""
    if priority >= URGENT_PRIORITY:
        return "urgent"
    return "high" if priority >= HIGH_PRIORITY else "routine"


#: How far the page counts matches; past it the page says "of ≥ COUNT_CAP".
COUNT_CAP = 10_000
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


class RoleView(Protocol):
    """How the caller's role sees studies: what the worklist uses of
    :class:`radstack.security.views.View` (``security`` stands on ``store``, not the other way)."""

    @property
    def shapes(self) -> bool:
        """Whether answers differ from what is stored."""
        ...

    def query(self, params: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """QIDO parameters as the store matches them.

        Raises
        ------
        BadRequest
            For a key the role may not match on.
        """
        ...

    def json(self, ds: JsonDict, study_uid: str | None = None) -> JsonDict:
        """``ds`` as the role sees it."""
        ...

    def blind(self, matches: Sequence[JsonDict], level: QueryLevelValues) -> list[JsonDict]:
        """Study matches with their counts and modalities less what labeling's blinding hides."""
        ...

    def ai_hidden(self, study_uids: Iterable[str]) -> set[str]:
        """The studies whose AI results blinding hides from the caller."""
        ...


def worklist_order(ai_hidden: ColumnElement[bool] | None = None) -> list[ColumnElement[Any]]:
    """AI priority (highest first, unscored last), then newest study, then UID (a stable order); the
    studies of ``ai_hidden`` count as unscored."""
    priority = (
        StudyRow.ai_priority.expression
        if ai_hidden is None
        else case((ai_hidden, null()), else_=StudyRow.ai_priority)
    )
    return [
        priority.desc().nulls_last(),
        StudyRow.study_date.desc().nulls_last(),
        StudyRow.study_time.desc().nulls_last(),
        StudyRow.study_uid.asc(),
    ]


def _dicom_date(value: str, name: str) -> str:
    match = _ISO_DATE.fullmatch(value)
    if match is None:
        raise BadRequest(f"{name} {value!r} is not a date; give it as YYYY-MM-DD")
    return "".join(match.groups())


@dataclass(frozen=True, slots=True)
class WorklistFilters:
    """What the worklist form asks for; empty fields filter nothing."""

    patient_name: str = ""
    patient_id: str = ""
    modality: str = ""
    #: ISO dates (YYYY-MM-DD, as ``<input type="date">`` sends them), inclusive.
    date_from: str = ""
    date_to: str = ""
    #: :data:`UNREAD` or a :class:`StudyStatus` value.
    status: str = ""
    #: Only studies an AI model found at least suspicious (priority ``high`` or ``urgent``).
    ai_positive: bool = False

    @property
    def identifying(self) -> bool:
        """Whether a filter matches on something that identifies a patient (names, IDs, dates)."""
        return bool(self.patient_name or self.patient_id or self.date_from or self.date_to)

    def qido_params(self) -> list[tuple[str, str]]:
        """The filters as QIDO-RS keys (PS3.18 §8.3.4). A name without ``*`` or ``?`` matches as a
        prefix (``doe`` finds ``Doe^John``; person names match without case).

        Raises
        ------
        BadRequest
            When a date is not YYYY-MM-DD.
        """
        params: list[tuple[str, str]] = []
        name = self.patient_name.strip()
        if name:
            params.append(("PatientName", name if any(c in name for c in "*?") else f"{name}*"))
        if self.patient_id.strip():
            params.append(("PatientID", self.patient_id.strip()))
        if self.modality.strip():
            params.append(("ModalitiesInStudy", self.modality.strip().upper()))
        low = _dicom_date(self.date_from, "date from") if self.date_from else ""
        high = _dicom_date(self.date_to, "date to") if self.date_to else ""
        if low or high:
            params.append(("StudyDate", f"{low}-{high}"))
        return params

    def ai_condition(self, ai_hidden: ColumnElement[bool] | None = None) -> ColumnElement[bool] | None:
        """The condition of the "AI positive" filter on :class:`StudyRow`, never true of the studies of
        ``ai_hidden``; None when it filters nothing."""
        if not self.ai_positive:
            return None
        positive = StudyRow.ai_priority >= HIGH_PRIORITY
        return positive if ai_hidden is None else and_(positive, not_(ai_hidden))

    def status_condition(self) -> ColumnElement[bool] | None:
        """The condition of the status filter on :class:`StudyRow`; None when it filters nothing.

        Raises
        ------
        BadRequest
            When the status is neither :data:`UNREAD` nor a :class:`StudyStatus` value.
        """
        if not self.status:
            return None
        if self.status == UNREAD:
            return StudyRow.status.is_(None)
        try:
            return StudyRow.status == StudyStatus(self.status).value
        except ValueError:
            accepted = ", ".join([UNREAD, *(s.value for s in StudyStatus)])
            raise BadRequest(f"status {self.status!r} is not one of {accepted}") from None


@dataclass(frozen=True, slots=True)
class WorklistRow:
    """One study as the caller's role sees it (``study_uid`` is a pseudonym for a de-identified one)."""

    study_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    study_time: str
    modalities: tuple[str, ...]
    description: str
    num_series: int
    num_instances: int
    ai_priority: int | None
    #: How many findings the study's current AI results hold (None: not scored).
    ai_findings: int | None
    status: str

    @property
    def ai_level(self) -> str | None:
        """The AI priority's band: ``urgent``, ``high`` or ``routine`` (None: not scored)."""
        return None if self.ai_priority is None else priority_band(self.ai_priority)


@dataclass(frozen=True, slots=True)
class WorklistPage:
    rows: tuple[WorklistRow, ...]
    offset: int
    limit: int
    #: Matches counted, up to :data:`COUNT_CAP`.
    total: int
    #: True when at least :attr:`total` match (the count stopped at the cap).
    total_capped: bool
    has_more: bool


def _first(ds: JsonDict, tag: str) -> Any:
    values = ds.get(tag, {}).get("Value") or [None]
    return values[0]


def _person_name(value: Any) -> str:
    """``Doe^John^^Dr`` as ``Doe, John Dr`` (the Alphabetic group of a DICOM JSON PN)."""
    text = str(value.get("Alphabetic", "")) if isinstance(value, dict) else str(value or "")
    family, _, rest = text.partition("^")
    given = " ".join(part for part in rest.split("^") if part)
    return f"{family}, {given}" if family and given else family or given


def _iso_date(value: Any) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _clock(value: Any) -> str:
    text = str(value or "")
    return f"{text[:2]}:{text[2:4]}" if len(text) >= 4 and text[:4].isdigit() else ""


def _row(ds: JsonDict, priority: int | None, findings: int | None, status: str | None) -> WorklistRow:
    return WorklistRow(
        study_uid=str(_first(ds, "0020000D") or ""),
        patient_name=_person_name(_first(ds, "00100010")),
        patient_id=str(_first(ds, "00100020") or ""),
        study_date=_iso_date(_first(ds, "00080020")),
        study_time=_clock(_first(ds, "00080030")),
        modalities=tuple(str(m) for m in ds.get("00080061", {}).get("Value", [])),
        description=str(_first(ds, "00081030") or ""),
        num_series=int(_first(ds, "00201206") or 0),
        num_instances=int(_first(ds, "00201208") or 0),
        ai_priority=priority,
        ai_findings=findings,
        status=status or UNREAD,
    )


def _extra(
    found: dict[str, tuple[int | None, int | None, str | None]], uid: str, ai_hidden: bool
) -> tuple[int | None, int | None, str | None]:
    """A row's AI priority, AI findings and status; no AI columns for a reader blinded to the AI."""
    priority, findings, status = found.get(uid, (None, None, None))
    return (None, None, status) if ai_hidden else (priority, findings, status)


def worklist_page(
    store: StudyStore,
    view: RoleView,
    filters: WorklistFilters,
    *,
    offset: int,
    limit: int,
    scope: ColumnElement[bool] | None,
    ai_hidden: ColumnElement[bool] | None = None,
) -> WorklistPage:
    """One page of the worklist.

    Parameters
    ----------
    store
        The index.
    view
        The caller's view: it refuses identifying filters for a de-identified role and shapes each row.
    filters
        What to match.
    offset, limit
        The page.
    scope
        The caller's study scope (:meth:`radstack.security.policy.Policy.study_condition`).
    ai_hidden
        The studies whose AI results labeling's blinding hides from the caller: neither the "AI
        positive" filter nor the order uses their AI priority.

    Returns
    -------
    WorklistPage
        The rows in worklist order, and how many match (counted up to :data:`COUNT_CAP`).

    Raises
    ------
    BadRequest
        A malformed filter, or an identifying one from a de-identified role.
    """
    params = [*filters.qido_params(), ("limit", str(limit)), ("offset", str(offset))]
    query = parse_query(view.query(params), QueryLevelValues.STUDY)
    conditions = [
        c for c in (scope, filters.status_condition(), filters.ai_condition(ai_hidden)) if c is not None
    ]
    where = and_(*conditions) if conditions else None
    result = search.search_studies(
        store, query, base_url="", max_limit=limit, scope=where, order=worklist_order(ai_hidden)
    )
    # Counts and modalities without what blinding hides (a study match is never dropped).
    matches = view.blind(result.matches, QueryLevelValues.STUDY)
    uids = [str(_first(match, "0020000D")) for match in matches]
    no_ai = view.ai_hidden(uids)
    with Session(store.engine) as session:
        extra = {
            uid: (priority, findings, status)
            for uid, priority, findings, status in session.execute(
                select(StudyRow.study_uid, StudyRow.ai_priority, StudyRow.ai_findings, StudyRow.status).where(
                    StudyRow.study_uid.in_(uids)
                )
            )
        }
    rows = tuple(
        _row(view.json(match, uid) if view.shapes else match, *_extra(extra, uid, uid in no_ai))
        for uid, match in zip(uids, matches, strict=True)
    )
    total = search.count_studies(store, query, cap=COUNT_CAP, scope=where)
    return WorklistPage(rows, offset, limit, total, total >= COUNT_CAP, result.truncated)
