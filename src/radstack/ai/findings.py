"""AI findings in the clinical flow: each stored inference run, the study's priority, and the review.

Every inference run whose findings were written into a study (as a DICOM SR, :mod:`radstack.ai.results`)
is recorded here by :meth:`AiResults.record`: the model version, the study-level probability, the
priority it gives the study, and each finding (label, probability, box, the image it is on, the SR's
tracking UID). A newer run of the same model on the same study *supersedes* the one before; what the
worklist shows (``studies.ai_priority``, ``studies.ai_findings``) is computed from the current runs
of every model in the same transaction.

Priority (:func:`priority_of`) follows the model version's operating points
(``metrics["operating_points"]``, see :func:`operating_thresholds`)::

    probability ≥ definite     urgent   80–100
    probability ≥ suspicious   high     50–79
    below                      routine   0–49

and within each band it rises with the probability, so the worklist's order follows it.

A radiologist marks each finding ``accepted`` or ``rejected`` (:meth:`AiResults.review`, which needs
``label`` on the study); a later decision replaces the current one, and the audit trail keeps every
decision. Reviewed findings are labels (:meth:`AiResults.labels`) that the labeling and training code
read. :meth:`AiResults.score_distribution` gives the scores of each model version per day, so drift is
visible on the model's page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar
from xml.sax.saxutils import escape, quoteattr

from sqlalchemy import ColumnElement, Engine, and_, case, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from radstack.ai.models import AiFindingReviewRow, AiResultRow
from radstack.errors import BadRequest, Conflict, NotFound
from radstack.security.audit import AuditActionValues, AuditEntry, audited
from radstack.security.policy import ActionValues, Policy, Principal
from radstack.security.views import View
from radstack.store.index import write_transaction
from radstack.store.models import StudyRow
from radstack.store.worklist import HIGH_PRIORITY, URGENT_PRIORITY, priority_band

__all__ = [
    "SCORE_BINS",
    "AiResults",
    "FindingRecord",
    "Label",
    "PriorityLevel",
    "ResultRecord",
    "Review",
    "ReviewDecision",
    "ScoreDay",
    "operating_thresholds",
    "priority_of",
    "score_histogram_svg",
]

#: Bins of :meth:`AiResults.score_distribution`: [0, 0.1), [0.1, 0.2), …, [0.9, 1].
SCORE_BINS = 10
#: Longest review comment.
COMMENT_MAX = 4000

_T = TypeVar("_T")


class PriorityLevel(StrEnum):
    """A study's (or a finding's) AI priority band, as the worklist badge shows it."""

    URGENT = "urgent"
    HIGH = "high"
    ROUTINE = "routine"


class ReviewDecision(StrEnum):
    """A radiologist's decision on one finding."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


def _unit(value: float, name: str) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise BadRequest(f"{name} {value!r} is not a probability between 0 and 1")
    return float(value)


def priority_of(probability: float, suspicious: float, definite: float) -> tuple[int, PriorityLevel]:
    """The priority (0–100) and band of a probability under a model's two operating points.

    ``urgent`` (80–100) at or above ``definite``, ``high`` (50–79) at or above ``suspicious``,
    ``routine`` (0–49) below. Within a band the priority rises with the probability (linearly from
    the band's threshold to the next), so ordering by priority orders by probability.

    Parameters
    ----------
    probability
        The model's probability of a finding.
    suspicious, definite
        The thresholds of the operating points, ``0 <= suspicious <= definite <= 1``.

    Returns
    -------
    tuple[int, PriorityLevel]
        The priority and its band.

    Raises
    ------
    BadRequest
        A value outside [0, 1], or ``suspicious`` above ``definite``.
    """
    p = _unit(probability, "probability")
    low, high = _unit(suspicious, "suspicious threshold"), _unit(definite, "definite threshold")
    if low > high:
        raise BadRequest(f"suspicious threshold {low} is above the definite threshold {high}")
    if p >= high:  # 80 at the threshold, 100 at certainty
        width = 100 - URGENT_PRIORITY
        return URGENT_PRIORITY + (math.floor(width * (p - high) / (1.0 - high)) if high < 1 else width), (
            PriorityLevel.URGENT
        )
    # Below the next band's threshold, floating-point division may still round up to it: min().
    if p >= low:
        width = URGENT_PRIORITY - HIGH_PRIORITY
        return HIGH_PRIORITY + min(
            math.floor(width * (p - low) / (high - low)), width - 1
        ), PriorityLevel.HIGH
    return min(math.floor(HIGH_PRIORITY * p / low), HIGH_PRIORITY - 1), PriorityLevel.ROUTINE


def operating_thresholds(metrics: Mapping[str, Any]) -> tuple[float, float]:
    """The ``suspicious`` and ``definite`` thresholds of a model version's metrics document.

    Raises
    ------
    BadRequest
        ``metrics["operating_points"]`` lacks either point or its ``threshold``.
    """
    points = metrics.get("operating_points")
    found: list[float] = []
    for name in ("suspicious", "definite"):
        point = points.get(name) if isinstance(points, Mapping) else None
        threshold = point.get("threshold") if isinstance(point, Mapping) else None
        if not isinstance(threshold, int | float) or isinstance(threshold, bool):
            raise BadRequest(
                f"the model version's metrics have no operating_points.{name}.threshold "
                "(priority needs both 'suspicious' and 'definite')"
            )
        found.append(_unit(threshold, f"{name} threshold"))
    return found[0], found[1]


Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """One finding of a result: what, how likely, where (a box on one image), and its SR tracking UID."""

    #: Its position in the result's findings (0, 1, …).
    index: int
    label: str
    probability: float
    #: ``(x0, y0, x1, y1)`` in the image's pixels.
    box: Box
    sop_uid: str
    series_uid: str
    #: The Tracking Unique Identifier of its measurement group in the SR (TID 1410).
    tracking_uid: str
    level: PriorityLevel

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "probability": self.probability,
            "box": list(self.box),
            "sop_uid": self.sop_uid,
            "series_uid": self.series_uid,
            "tracking_uid": self.tracking_uid,
            "level": self.level.value,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> FindingRecord:
        x0, y0, x1, y1 = (float(v) for v in document["box"])
        return cls(
            index=int(document["index"]),
            label=str(document["label"]),
            probability=float(document["probability"]),
            box=(x0, y0, x1, y1),
            sop_uid=str(document["sop_uid"]),
            series_uid=str(document["series_uid"]),
            tracking_uid=str(document["tracking_uid"]),
            level=PriorityLevel(document["level"]),
        )


@dataclass(frozen=True, slots=True)
class Review:
    """The current decision on one finding."""

    result_id: int
    index: int
    decision: ReviewDecision
    reviewed_by: str
    role: str
    comment: str
    reviewed_at: datetime

    def shown(self, view: View) -> Review:
        """This review as ``view`` shows it: no free-text comment in a de-identified view (a comment
        may name the patient)."""
        return self if view.deid is None else replace(self, comment="")


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One stored inference run on a study, with the current review of each reviewed finding."""

    id: int
    study_uid: str
    model: str
    model_version: int
    probability: float
    priority: int
    level: PriorityLevel
    findings: tuple[FindingRecord, ...]
    input_key: str
    sr_series_uid: str | None
    sr_sop_uid: str | None
    trigger: str
    job_id: str | None
    created_at: datetime
    superseded_at: datetime | None
    #: Finding index → its current review (unreviewed findings are absent).
    reviews: dict[int, Review] = field(default_factory=dict)

    @property
    def current(self) -> bool:
        return self.superseded_at is None

    @property
    def ref(self) -> str:
        """``AI result 7 (fracture v3)``: how messages name it."""
        return f"AI result {self.id} ({self.model} v{self.model_version})"

    def shown(self, view: View) -> ResultRecord:
        """This result as ``view`` shows it: pseudonymous UIDs and no free-text comments in a
        de-identified view (a comment may name the patient)."""
        deid = view.deid
        if deid is None:
            return self
        return replace(
            self,
            study_uid=deid.uid(self.study_uid),
            sr_series_uid=deid.uid(self.sr_series_uid) if self.sr_series_uid else None,
            sr_sop_uid=deid.uid(self.sr_sop_uid) if self.sr_sop_uid else None,
            findings=tuple(
                replace(
                    f,
                    sop_uid=deid.uid(f.sop_uid),
                    series_uid=deid.uid(f.series_uid),
                    tracking_uid=deid.uid(f.tracking_uid),
                )
                for f in self.findings
            ),
            reviews={index: review.shown(view) for index, review in self.reviews.items()},
        )


@dataclass(frozen=True, slots=True)
class Label:
    """A reviewed finding as a label: the box on the image, what it is, and the radiologist's decision."""

    study_uid: str
    series_uid: str
    sop_uid: str
    tracking_uid: str
    box: Box
    label: str
    decision: ReviewDecision
    #: The model version that proposed it, and its probability.
    model: str
    model_version: int
    probability: float
    result_id: int
    index: int
    reviewed_by: str
    role: str
    comment: str
    reviewed_at: datetime

    def shown(self, view: View) -> Label:
        """This label as ``view`` shows it (pseudonymous UIDs, no comment, when de-identified)."""
        deid = view.deid
        if deid is None:
            return self
        return replace(
            self,
            study_uid=deid.uid(self.study_uid),
            series_uid=deid.uid(self.series_uid),
            sop_uid=deid.uid(self.sop_uid),
            tracking_uid=deid.uid(self.tracking_uid),
            comment="",
        )


@dataclass(frozen=True, slots=True)
class ScoreDay:
    """The study-level probabilities one model version gave on one day (UTC)."""

    model_version: int
    day: date
    #: Runs recorded, and the distinct studies they scored.
    n: int
    studies: int
    mean: float
    #: Counts per bin of :data:`SCORE_BINS`: [0, 0.1), …, [0.9, 1].
    bins: tuple[int, ...]


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _decision(value: str) -> ReviewDecision:
    try:
        return ReviewDecision(value)
    except ValueError:
        accepted = ", ".join(d.value for d in ReviewDecision)
        raise BadRequest(f"decision {value!r} is not one of {accepted}") from None


def _review(row: AiFindingReviewRow) -> Review:
    return Review(
        result_id=row.result_id,
        index=row.finding_index,
        decision=ReviewDecision(row.decision),
        reviewed_by=row.reviewed_by,
        role=row.role,
        comment=row.comment,
        reviewed_at=_utc(row.reviewed_at),
    )


def _findings(row: AiResultRow) -> tuple[FindingRecord, ...]:
    return tuple(FindingRecord.from_json(item) for item in json.loads(row.findings))


def _result(row: AiResultRow, reviews: dict[int, Review]) -> ResultRecord:
    return ResultRecord(
        id=row.id,
        study_uid=row.study_uid,
        model=row.model,
        model_version=row.model_version,
        probability=row.probability,
        priority=row.priority,
        level=PriorityLevel(row.level),
        findings=_findings(row),
        input_key=row.input_key,
        sr_series_uid=row.sr_series_uid,
        sr_sop_uid=row.sr_sop_uid,
        trigger=row.trigger,
        job_id=row.job_id,
        created_at=_utc(row.created_at),
        superseded_at=_utc(row.superseded_at) if row.superseded_at is not None else None,
        reviews=reviews,
    )


def _in_bin(p: ColumnElement[float] | InstrumentedAttribute[float], i: int) -> ColumnElement[bool]:
    """Whether ``p`` is in bin ``i`` of :data:`SCORE_BINS`; probabilities are in [0, 1] (:meth:`AiResults.record`
    checks them), so the last bin is [0.9, 1]."""
    low = p >= i / SCORE_BINS
    return low if i == SCORE_BINS - 1 else and_(low, p < (i + 1) / SCORE_BINS)


def _check_findings(findings: Sequence[FindingRecord]) -> None:
    for position, finding in enumerate(findings):
        if finding.index != position:
            raise BadRequest(f"finding {position} has index {finding.index}; findings are numbered 0, 1, …")
        _unit(finding.probability, f"finding {position}'s probability")
        PriorityLevel(finding.level)


class AiResults:
    """The index of AI results and of the radiologists' reviews of their findings.

    Parameters
    ----------
    engine
        The index database (migrated: ``ai_results``, ``ai_finding_reviews``, ``studies.ai_findings``).
    audit
        Where audit entries go (:meth:`radstack.security.audit.AuditWriter.submit`).
    policy
        Authorisation: a review needs ``label`` on the study.
    """

    def __init__(self, engine: Engine, audit: Callable[[AuditEntry], None], policy: Policy) -> None:
        self.engine = engine
        self.policy = policy
        self._audit = audit

    def _write(self, work: Callable[[Session], _T]) -> _T:
        """Run ``work`` in one write transaction (:func:`radstack.store.index.write_transaction`)."""
        return write_transaction(self.engine, work)

    # ------------------------------------------------------------------ results
    def record(
        self,
        *,
        study_uid: str,
        model: str,
        model_version: int,
        probability: float,
        priority: int,
        level: PriorityLevel,
        findings: Sequence[FindingRecord],
        input_key: str,
        sr_series_uid: str | None,
        sr_sop_uid: str | None,
        trigger: str,
        job_id: str | None = None,
    ) -> ResultRecord:
        """Record a stored run as the current result of ``model`` on the study, in one transaction.

        The previous current result of the same model on the study is marked superseded, and the
        study's ``ai_priority`` becomes the highest priority of its current results (of all models),
        its ``ai_findings`` the sum of their findings. Safe with concurrent writers on SQLite and
        PostgreSQL: the transaction starts by writing the study's row, which takes SQLite's write lock
        or PostgreSQL's row lock before anything is read, so two runs on one study commit one after
        the other (the later one supersedes the earlier).

        Parameters
        ----------
        priority, level
            As :func:`priority_of` gives them for ``probability``.
        findings
            Numbered 0, 1, … in order (each one's ``index``).
        input_key
            A hash (at most 64 characters) of what the run read: a caller may skip a run whose inputs
            match :meth:`latest`'s.
        trigger
            ``rule:<name>``, ``user:<subject>`` or ``job:<id>``.

        Returns
        -------
        ResultRecord
            The new current result (no reviews yet).

        Raises
        ------
        NotFound
            The study is not stored.
        BadRequest
            A probability outside [0, 1], a priority outside 0–100 or outside ``level``'s band, an
            unknown level, findings not numbered in order, an empty or over-long trigger or input key.
        """
        _unit(probability, "probability")
        if not 0 <= priority <= 100:
            raise BadRequest(f"priority {priority} is not between 0 and 100")
        level = PriorityLevel(level)
        if priority_band(priority) != level.value:
            raise BadRequest(
                f"priority {priority} is in the {priority_band(priority)} band, not {level.value}"
            )
        _check_findings(findings)
        if not 0 < len(input_key) <= 64:
            raise BadRequest(f"input key {input_key!r} must be 1 to 64 characters")
        if not 0 < len(trigger) <= 256:
            raise BadRequest(f"trigger {trigger!r} must be 1 to 256 characters")
        row = AiResultRow(
            study_uid=study_uid,
            model=model,
            model_version=model_version,
            probability=float(probability),
            priority=priority,
            level=level.value,
            findings=json.dumps([f.to_json() for f in findings], separators=(",", ":")),
            finding_count=len(findings),
            input_key=input_key,
            sr_series_uid=sr_series_uid,
            sr_sop_uid=sr_sop_uid,
            trigger=trigger,
            job_id=job_id,
        )
        return self._write(partial(self._record, row))

    def _record(self, row: AiResultRow, session: Session) -> ResultRecord:
        study = StudyRow.study_uid == row.study_uid
        # The write comes first, so the transaction holds the study's lock before it reads anything.
        locked = session.execute(update(StudyRow).where(study).values(ai_priority=StudyRow.ai_priority))
        if locked.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound(f"study {row.study_uid} is not stored")
        now = _now()
        current = AiResultRow.superseded_at.is_(None)
        session.execute(
            update(AiResultRow)
            .where(AiResultRow.study_uid == row.study_uid, AiResultRow.model == row.model, current)
            .values(superseded_at=now)
        )
        row.created_at = now
        session.add(row)
        session.flush()
        priority, count = session.execute(
            select(func.max(AiResultRow.priority), func.sum(AiResultRow.finding_count)).where(
                AiResultRow.study_uid == row.study_uid, current
            )
        ).one()
        session.execute(update(StudyRow).where(study).values(ai_priority=priority, ai_findings=count))
        return _result(row, {})

    def _with_reviews(self, session: Session, rows: Sequence[AiResultRow]) -> list[ResultRecord]:
        reviews: dict[int, dict[int, Review]] = {row.id: {} for row in rows}
        if rows:
            for review in session.scalars(
                select(AiFindingReviewRow).where(AiFindingReviewRow.result_id.in_(list(reviews)))
            ):
                reviews[review.result_id][review.finding_index] = _review(review)
        return [_result(row, reviews[row.id]) for row in rows]

    def current(self, study_uid: str) -> list[ResultRecord]:
        """The study's current results (one per model that ran on it), by model name."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(AiResultRow)
                .where(AiResultRow.study_uid == study_uid, AiResultRow.superseded_at.is_(None))
                .order_by(AiResultRow.model)
            ).all()
            return self._with_reviews(session, rows)

    def sr_series(self, study_uids: Sequence[str]) -> dict[str, set[str]]:
        """The SR series every run (current or superseded) wrote into each of ``study_uids``: what
        labeling's blinding hides from a blinded reader (studies without a result are absent)."""
        found: dict[str, set[str]] = {}
        studies = list(study_uids)
        with Session(self.engine) as session:
            for start in range(0, len(studies), 500):
                for study, series in session.execute(
                    select(AiResultRow.study_uid, AiResultRow.sr_series_uid).where(
                        AiResultRow.study_uid.in_(studies[start : start + 500]),
                        AiResultRow.sr_series_uid.is_not(None),
                    )
                ):
                    if series is not None:
                        found.setdefault(study, set()).add(series)
        return found

    def latest(self, study_uid: str, model: str) -> ResultRecord | None:
        """The current result of ``model`` on the study; None when it never ran there."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(AiResultRow).where(
                    AiResultRow.study_uid == study_uid,
                    AiResultRow.model == model,
                    AiResultRow.superseded_at.is_(None),
                )
            ).all()
            found = self._with_reviews(session, rows)
        return found[0] if found else None

    def get(self, result_id: int) -> ResultRecord:
        """One result, current or superseded.

        Raises
        ------
        NotFound
            No result has this id.
        """
        with Session(self.engine) as session:
            row = session.get(AiResultRow, result_id)
            if row is None:
                raise NotFound(f"AI result {result_id} not found")
            return self._with_reviews(session, [row])[0]

    # ------------------------------------------------------------------ review
    def review(
        self, result_id: int, index: int, decision: str, *, by: Principal, comment: str = ""
    ) -> Review:
        """Accept or reject finding ``index`` of a current result, replacing any earlier decision.

        The decision (and a refusal, with its reason) is recorded in the audit trail.

        Parameters
        ----------
        decision
            ``accepted`` or ``rejected``.
        by
            The reviewer (needs ``label`` on the study).
        comment
            Free text, at most 4,000 characters.

        Returns
        -------
        Review
            The finding's current decision.

        Raises
        ------
        NotFound
            No such result, the study is outside ``by``'s scope, or the result has no finding ``index``.
        Forbidden
            ``by``'s role may not label.
        BadRequest
            An unknown decision or an over-long comment.
        Conflict
            The result was superseded by a newer run (review that one).
        """
        result = self.get(result_id)
        resource: dict[str, Any] = {
            "study": result.study_uid,
            "ai_result": result_id,
            "model": result.model,
            "version": result.model_version,
            "finding": index,
            "decision": str(decision),
        }
        with audited(self._audit, by, AuditActionValues.WRITE, resource):
            self.policy.require(by, ActionValues.LABEL, result.study_uid)
            chosen = _decision(decision)
            if len(comment) > COMMENT_MAX:
                raise BadRequest(f"the comment has {len(comment)} characters; at most {COMMENT_MAX}")
            return self._write(partial(self._review, result_id, index, chosen, by, comment))

    def _review(
        self,
        result_id: int,
        index: int,
        decision: ReviewDecision,
        by: Principal,
        comment: str,
        session: Session,
    ) -> Review:
        row = session.get(AiResultRow, result_id, with_for_update=True)
        if row is None:
            raise NotFound(f"AI result {result_id} not found")
        ref = f"AI result {row.id} ({row.model} v{row.model_version})"
        if row.superseded_at is not None:
            raise Conflict(
                f"{ref} of study {row.study_uid} was superseded by a newer run on "
                f"{_utc(row.superseded_at):%Y-%m-%d %H:%M:%S} UTC; review the study's current result"
            )
        findings = json.loads(row.findings)
        if not 0 <= index < len(findings):
            has = f"findings 0–{len(findings) - 1}" if findings else "no findings"
            raise NotFound(f"{ref} has no finding {index}; it has {has}")
        finding = FindingRecord.from_json(findings[index])
        review = session.scalar(
            select(AiFindingReviewRow).where(
                AiFindingReviewRow.result_id == result_id, AiFindingReviewRow.finding_index == index
            )
        )
        if review is None:
            review = AiFindingReviewRow(
                result_id=result_id,
                finding_index=index,
                tracking_uid=finding.tracking_uid,
                sop_uid=finding.sop_uid,
                box=json.dumps(list(finding.box)),
                label=finding.label,
            )
            session.add(review)
        review.decision = decision.value
        review.reviewed_by = by.subject
        review.role = by.role
        review.comment = comment
        review.reviewed_at = _now()
        session.flush()
        return _review(review)

    # ------------------------------------------------------------------ labels, drift
    def labels(
        self,
        *,
        model: str | None = None,
        decision: ReviewDecision | str | None = None,
        since: datetime | None = None,
        scope: ColumnElement[bool] | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[Label]:
        """Reviewed findings as labels, oldest review first (the stored UIDs: shape them by a view).

        Parameters
        ----------
        model, decision
            Only those of this model, or with this decision.
        since
            Only those reviewed at or after this time.
        scope
            The reader's study scope (:meth:`radstack.security.policy.Policy.study_condition`).
        offset, limit
            A page of them.

        Raises
        ------
        BadRequest
            An unknown decision.
        """
        query = select(AiFindingReviewRow, AiResultRow).join(
            AiResultRow, AiResultRow.id == AiFindingReviewRow.result_id
        )
        if scope is not None:
            query = query.join(StudyRow, StudyRow.study_uid == AiResultRow.study_uid).where(scope)
        if model is not None:
            query = query.where(AiResultRow.model == model)
        if decision is not None:
            query = query.where(AiFindingReviewRow.decision == _decision(str(decision)).value)
        if since is not None:
            query = query.where(AiFindingReviewRow.reviewed_at >= since)
        query = query.order_by(AiFindingReviewRow.reviewed_at, AiFindingReviewRow.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        labels = []
        with Session(self.engine) as session:
            for review, result in session.execute(query):
                finding = FindingRecord.from_json(json.loads(result.findings)[review.finding_index])
                labels.append(
                    Label(
                        study_uid=result.study_uid,
                        series_uid=finding.series_uid,
                        sop_uid=finding.sop_uid,
                        tracking_uid=finding.tracking_uid,
                        box=finding.box,
                        label=finding.label,
                        decision=ReviewDecision(review.decision),
                        model=result.model,
                        model_version=result.model_version,
                        probability=finding.probability,
                        result_id=result.id,
                        index=review.finding_index,
                        reviewed_by=review.reviewed_by,
                        role=review.role,
                        comment=review.comment,
                        reviewed_at=_utc(review.reviewed_at),
                    )
                )
        return labels

    def score_distribution(
        self, model: str, *, days: int = 30, now: datetime | None = None
    ) -> list[ScoreDay]:
        """The study-level probabilities of ``model``'s runs per version per day (UTC), over the last
        ``days`` days: how many, the mean, and the counts in :data:`SCORE_BINS` bins. Newest version
        first, then newest day first. Every recorded run counts, superseded ones too: each is a score
        the model gave."""
        p = AiResultRow.probability
        bins = [func.sum(case((_in_bin(p, i), 1), else_=0)) for i in range(SCORE_BINS)]
        if self.engine.dialect.name == "postgresql":
            day = func.to_char(func.timezone("UTC", AiResultRow.created_at), "YYYY-MM-DD")
        else:  # SQLite keeps the UTC time as text
            day = func.strftime("%Y-%m-%d", AiResultRow.created_at)
        start = (now or _now()) - timedelta(days=days)
        query = (
            select(
                AiResultRow.model_version,
                day.label("day"),
                func.count(),
                func.count(AiResultRow.study_uid.distinct()),
                func.avg(p),
                *bins,
            )
            .where(AiResultRow.model == model, AiResultRow.created_at >= start)
            .group_by(AiResultRow.model_version, day)
            .order_by(AiResultRow.model_version.desc(), day.desc())
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            ScoreDay(
                model_version=row[0],
                day=date.fromisoformat(str(row[1])),
                n=row[2],
                studies=row[3],
                mean=float(row[4]),
                bins=tuple(int(v) for v in row[5:]),
            )
            for row in rows
        ]


def score_histogram_svg(day: ScoreDay, thresholds: tuple[float, float] | None = None) -> str:
    """A small inline SVG histogram of one day's scores (bars over [0, 1]), with the ``suspicious``
    and ``definite`` thresholds as vertical lines when given. Hand-written like the model card's plots."""
    width, height, bar = 120, 36, 120 // SCORE_BINS
    top = max(day.bins) or 1
    edges = [f"{i / SCORE_BINS:.1f}–{(i + 1) / SCORE_BINS:.1f}: {n}" for i, n in enumerate(day.bins)]
    label = f"Scores of v{day.model_version} on {day.day.isoformat()}: " + ", ".join(edges)
    parts = [
        f'<svg class="histogram" role="img" aria-label={quoteattr(label)} viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><title>{escape(label)}</title>',
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="currentColor" '
        'stroke-opacity="0.4"/>',
    ]
    for i, count in enumerate(day.bins):
        h = round((height - 2) * count / top, 1)
        if h:
            parts.append(
                f'<rect x="{i * bar + 1}" y="{height - 1 - h}" width="{bar - 2}" height="{h}" fill="#1f5fbf"/>'
            )
    for value, colour in zip(thresholds or (), ("#e07b00", "#b00020"), strict=False):
        x = round(value * width, 1)
        parts.append(
            f'<line x1="{x}" y1="0" x2="{x}" y2="{height}" stroke="{colour}" stroke-dasharray="2 2"/>'
        )
    parts.append("</svg>")
    return "".join(parts)
