"""The index of AI results and reviews (``ai/findings.py``) on SQLite and PostgreSQL: priority bands,
results that supersede one another and set the study's worklist priority and finding count (also with
concurrent writers), reviews with their permissions, conflicts and audit, labels, and the score
distribution per model version per day."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from radstack.ai.findings import (
    AiResults,
    PriorityLevel,
    ReviewDecision,
    operating_thresholds,
    priority_of,
    score_histogram_svg,
)
from radstack.ai.models import AiResultRow
from radstack.config import Settings
from radstack.errors import BadRequest, Conflict, Forbidden, NotFound
from radstack.platform import Platform
from radstack.security.audit import AuditOutcomeValues, AuditRecord
from radstack.security.index_key import open_index_engine
from radstack.security.policy import Principal
from radstack.store.models import StudyRow
from tests.ai.results import DEFINITE, SUSPICIOUS, ingest, radiograph, record
from tests.ai.tiny_models import metrics

RITA = Principal("rita", "radiologist", "password", source="10.0.0.5")
ANNA = Principal("anna", "annotator", "token")
DANA = Principal("dana", "data-scientist", "token")
TOM = Principal("tom", "technologist", "password")


# ----------------------------------------------------------------------------- priority
def test_priority_bands_follow_the_operating_points() -> None:
    assert priority_of(0.0, 0.3, 0.7) == (0, PriorityLevel.ROUTINE)
    assert priority_of(0.29, 0.3, 0.7) == (48, PriorityLevel.ROUTINE)
    assert priority_of(0.3, 0.3, 0.7) == (50, PriorityLevel.HIGH)
    assert priority_of(0.6999, 0.3, 0.7) == (79, PriorityLevel.HIGH)
    assert priority_of(0.7, 0.3, 0.7) == (80, PriorityLevel.URGENT)
    assert priority_of(1.0, 0.3, 0.7) == (100, PriorityLevel.URGENT)
    # Degenerate operating points: everything suspicious, or nothing urgent below certainty.
    assert priority_of(0.0, 0.0, 0.5) == (50, PriorityLevel.HIGH)
    assert priority_of(0.99, 0.5, 1.0) == (79, PriorityLevel.HIGH)
    assert priority_of(1.0, 0.5, 1.0) == (100, PriorityLevel.URGENT)
    assert priority_of(0.5, 0.5, 0.5) == (80, PriorityLevel.URGENT)


@pytest.mark.parametrize(("suspicious", "definite"), [(0.3, 0.7), (0.05, 0.95), (0.5, 0.5), (0.0, 1.0)])
def test_priority_rises_with_the_probability_and_its_band_matches(suspicious: float, definite: float) -> None:
    previous = -1
    for step in range(10_001):
        p = step / 10_000
        priority, level = priority_of(p, suspicious, definite)
        assert priority >= previous, f"priority falls at {p}"
        previous = priority
        expected = (
            PriorityLevel.URGENT
            if p >= definite
            else PriorityLevel.HIGH
            if p >= suspicious
            else PriorityLevel.ROUTINE
        )
        assert level is expected
        assert (
            {PriorityLevel.URGENT: (80, 100), PriorityLevel.HIGH: (50, 79), PriorityLevel.ROUTINE: (0, 49)}[
                level
            ][0]
            <= priority
            <= {PriorityLevel.URGENT: 100, PriorityLevel.HIGH: 79, PriorityLevel.ROUTINE: 49}[level]
        )


def test_priority_refuses_what_is_not_a_probability() -> None:
    with pytest.raises(BadRequest, match=r"probability 1\.5 is not a probability between 0 and 1"):
        priority_of(1.5, 0.3, 0.7)
    with pytest.raises(BadRequest, match="probability nan"):
        priority_of(float("nan"), 0.3, 0.7)
    with pytest.raises(BadRequest, match=r"suspicious threshold 0\.8 is above the definite threshold 0\.7"):
        priority_of(0.5, 0.8, 0.7)


def test_operating_thresholds_of_a_metrics_document() -> None:
    assert operating_thresholds(metrics()) == (0.3, 0.7)
    partial = metrics()
    del partial["operating_points"]["definite"]
    with pytest.raises(BadRequest, match=r"no operating_points\.definite\.threshold"):
        operating_thresholds(partial)
    with pytest.raises(BadRequest, match=r"no operating_points\.suspicious\.threshold"):
        operating_thresholds({})


# ----------------------------------------------------------------------------- results
@pytest.fixture
def platform(backend_settings: Settings) -> Iterator[Platform]:
    opened = Platform.open(backend_settings)
    try:
        yield opened
    finally:
        opened.close()


def _study_columns(platform: Platform, ds: Dataset) -> tuple[int | None, int | None]:
    with Session(platform.store.engine) as session:
        row = session.execute(
            select(StudyRow.ai_priority, StudyRow.ai_findings).where(
                StudyRow.study_uid == ds.StudyInstanceUID
            )
        ).one()
    return row[0], row[1]


def test_a_newer_run_supersedes_and_the_study_takes_the_highest_current_priority(platform: Platform) -> None:
    results = platform.ai_results
    study, other = radiograph(1), radiograph(2)
    ingest(platform.store, study, other)
    assert _study_columns(platform, study) == (None, None)  # not scored

    first = record(results, study, [0.9, 0.4])
    assert (first.priority, first.level, first.current) == (
        priority_of(0.9, 0.3, 0.7)[0],
        PriorityLevel.URGENT,
        True,
    )
    assert [f.level for f in first.findings] == [PriorityLevel.URGENT, PriorityLevel.HIGH]
    assert _study_columns(platform, study) == (first.priority, 2)
    # Another model on the same study: the study keeps the higher priority and adds its findings.
    age = record(results, study, [0.2], model="bone-age")
    assert _study_columns(platform, study) == (first.priority, 3)
    # A newer run of the fracture model, lower: it replaces the first, and the priority falls.
    second = record(results, study, [0.5], version=2)
    assert _study_columns(platform, study) == (max(second.priority, age.priority), 2)
    assert second.priority == priority_of(0.5, 0.3, 0.7)[0] < first.priority
    assert results.get(first.id).superseded_at is not None and not results.get(first.id).current
    latest = results.latest(str(study.StudyInstanceUID), "fracture")
    assert latest is not None and latest.id == second.id and latest.model_version == 2
    assert [(r.model, r.id) for r in results.current(str(study.StudyInstanceUID))] == [
        ("bone-age", age.id),
        ("fracture", second.id),
    ]
    # Scored with no finding: priority routine, zero findings (the badge says "no finding").
    none = record(results, other, [])
    assert none.findings == () and _study_columns(platform, other) == (none.priority, 0)
    assert results.latest(str(other.StudyInstanceUID), "bone-age") is None
    assert results.current("1.2.3.4") == []


def test_record_refuses_an_unknown_study_and_misnumbered_findings(platform: Platform) -> None:
    study = radiograph(3)
    with pytest.raises(NotFound, match=f"study {study.StudyInstanceUID} is not stored"):
        record(platform.ai_results, study, [0.8])
    ingest(platform.store, study)
    done = record(platform.ai_results, study, [0.8, 0.6])
    with pytest.raises(BadRequest, match="finding 0 has index 1"):
        platform.ai_results.record(
            study_uid=done.study_uid,
            model="fracture",
            model_version=1,
            probability=0.8,
            priority=90,
            level=PriorityLevel.URGENT,
            findings=done.findings[1:],
            input_key="k",
            sr_series_uid=None,
            sr_sop_uid=None,
            trigger="user:rita",
        )
    with pytest.raises(BadRequest, match="priority 60 is in the high band, not urgent"):
        platform.ai_results.record(
            study_uid=done.study_uid,
            model="fracture",
            model_version=1,
            probability=0.8,
            priority=60,
            level=PriorityLevel.URGENT,
            findings=(),
            input_key="k",
            sr_series_uid=None,
            sr_sop_uid=None,
            trigger="user:rita",
        )
    with pytest.raises(NotFound, match="AI result 999999 not found"):
        platform.ai_results.get(999_999)


def test_concurrent_runs_leave_one_current_result_per_model(platform: Platform) -> None:
    """Runs of two models on one study from several threads and two engines (as two processes
    would): one current result per model, and the study's priority is that of the current ones."""
    study = radiograph(4)
    ingest(platform.store, study)
    second_engine = open_index_engine(platform.settings)  # another process's engine on the same index
    services = [platform.ai_results, AiResults(second_engine, lambda entry: None, platform.policy)]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            for k in range(4):
                score = ((n * 4 + k) * 37 % 100) / 100
                record(services[n % 2], study, [score], model=("fracture", "bone-age")[k % 2], version=n)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    second_engine.dispose()
    assert errors == []
    with Session(platform.store.engine) as session:
        rows = session.scalars(
            select(AiResultRow).where(AiResultRow.study_uid == study.StudyInstanceUID)
        ).all()
    assert len(rows) == 24
    current = [row for row in rows if row.superseded_at is None]
    assert sorted(row.model for row in current) == ["bone-age", "fracture"]
    # Each model's current run is its last: every other run was superseded after it was made.
    for row in current:
        assert all(o.created_at <= row.created_at for o in rows if o.model == row.model)
    assert _study_columns(platform, study) == (max(row.priority for row in current), 2)


# ----------------------------------------------------------------------------- review
def _audited(platform: Platform) -> list[AuditRecord]:
    platform.audit.flush()
    return [r for r in platform.audit.log.records(limit=10_000) if "ai_result" in r.resource]


def test_review_accept_then_reject_is_stored_audited_and_a_label(platform: Platform) -> None:
    results = platform.ai_results
    study = radiograph(5)
    ingest(platform.store, study)
    result = record(results, study, [0.9, 0.5])

    accepted = results.review(result.id, 0, "accepted", by=RITA, comment="clear cortical break")
    assert (accepted.decision, accepted.reviewed_by, accepted.role) == (
        ReviewDecision.ACCEPTED,
        "rita",
        "radiologist",
    )
    assert results.get(result.id).reviews[0].decision is ReviewDecision.ACCEPTED
    # A second decision replaces the first (one current decision per finding) ...
    changed = results.review(result.id, 0, "rejected", by=ANNA)
    assert changed.decision is ReviewDecision.REJECTED and changed.reviewed_by == "anna"
    reviews = results.get(result.id).reviews
    assert (
        list(reviews) == [0] and reviews[0].decision is ReviewDecision.REJECTED and reviews[0].comment == ""
    )
    # ... and the audit trail keeps both.
    trail = _audited(platform)
    assert [(r.actor, r.resource["decision"], r.outcome) for r in trail] == [
        ("rita", "accepted", AuditOutcomeValues.SUCCESS),
        ("anna", "rejected", AuditOutcomeValues.SUCCESS),
    ]
    assert trail[0].resource == {
        "study": str(study.StudyInstanceUID),
        "ai_result": result.id,
        "model": "fracture",
        "version": 1,
        "finding": 0,
        "decision": "accepted",
    }
    assert trail[0].source == "10.0.0.5"

    results.review(result.id, 1, "accepted", by=RITA)
    labels = results.labels()
    assert [(label.index, label.decision, label.reviewed_by) for label in labels] == [
        (0, ReviewDecision.REJECTED, "anna"),
        (1, ReviewDecision.ACCEPTED, "rita"),
    ]
    first = labels[0]
    assert (first.sop_uid, first.series_uid, first.study_uid) == (
        str(study.SOPInstanceUID),
        str(study.SeriesInstanceUID),
        str(study.StudyInstanceUID),
    )
    assert first.box == result.findings[0].box and first.tracking_uid == result.findings[0].tracking_uid
    assert (first.model, first.model_version, first.label, first.probability) == (
        "fracture",
        1,
        "fracture",
        0.9,
    )
    assert [label.index for label in results.labels(decision="accepted")] == [1]
    assert results.labels(model="bone-age") == []
    assert results.labels(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    with pytest.raises(BadRequest, match="decision 'maybe' is not one of accepted, rejected"):
        results.labels(decision="maybe")


def test_review_refusals_name_the_problem_and_are_audited(platform: Platform) -> None:
    results = platform.ai_results
    study = radiograph(6)
    ingest(platform.store, study)
    old = record(results, study, [0.9])
    with pytest.raises(Forbidden, match="the data-scientist role may not label"):
        results.review(old.id, 0, "accepted", by=DANA)
    with pytest.raises(Forbidden, match="the technologist role may not label"):
        results.review(old.id, 0, "accepted", by=TOM)
    with pytest.raises(BadRequest, match="decision 'yes' is not one of accepted, rejected"):
        results.review(old.id, 0, "yes", by=RITA)
    with pytest.raises(
        NotFound, match=rf"AI result {old.id} \(fracture v1\) has no finding 3; it has findings 0–0"
    ):
        results.review(old.id, 3, "accepted", by=RITA)
    with pytest.raises(NotFound, match="AI result 424242 not found"):
        results.review(424_242, 0, "accepted", by=RITA)
    new = record(results, study, [0.8], version=2)
    with pytest.raises(Conflict, match=rf"AI result {old.id} \(fracture v1\) of study .* was superseded"):
        results.review(old.id, 0, "accepted", by=RITA)
    assert results.get(old.id).reviews == {} and results.labels() == []
    results.review(new.id, 0, "accepted", by=RITA)
    outcomes = [(r.actor, r.outcome, r.reason) for r in _audited(platform)]
    assert [(actor, outcome) for actor, outcome, _ in outcomes] == [
        ("dana", AuditOutcomeValues.FAILURE),
        ("tom", AuditOutcomeValues.FAILURE),
        ("rita", AuditOutcomeValues.FAILURE),
        ("rita", AuditOutcomeValues.FAILURE),
        ("rita", AuditOutcomeValues.FAILURE),
        ("rita", AuditOutcomeValues.SUCCESS),
    ]
    assert "may not label" in str(outcomes[0][2]) and "superseded" in str(outcomes[4][2])


# ----------------------------------------------------------------------------- drift
def test_score_distribution_per_version_per_day(platform: Platform) -> None:
    results = platform.ai_results
    studies = [radiograph(10 + n) for n in range(5)]
    ingest(platform.store, *studies)
    made = [
        (record(results, studies[0], [0.05]), 1, 0),
        (record(results, studies[1], [0.15]), 1, 0),
        (record(results, studies[2], [0.95]), 1, 1),
        (record(results, studies[3], [1.0]), 1, 1),
        (record(results, studies[0], [0.1], version=2), 2, 1),  # supersedes: still a score of its day
        (record(results, studies[4], [0.35], version=2), 2, 1),
        (record(results, studies[4], [0.3], model="bone-age"), 1, 1),  # another model
    ]
    now = datetime(2026, 12, 9, 15, 0, tzinfo=UTC)
    with Session(platform.store.engine) as session:
        for result, _version, days_ago in made:
            session.execute(
                update(AiResultRow)
                .where(AiResultRow.id == result.id)
                .values(created_at=now - timedelta(days=days_ago, hours=1))
            )
        session.commit()
    found = results.score_distribution("fracture", now=now)
    assert [(d.model_version, d.day, d.n, d.studies) for d in found] == [
        (2, date(2026, 12, 8), 2, 2),
        (1, date(2026, 12, 9), 2, 2),
        (1, date(2026, 12, 8), 2, 2),
    ]
    assert found[0].bins == (0, 1, 0, 1, 0, 0, 0, 0, 0, 0)  # 0.1 is in [0.1, 0.2); 0.35 in [0.3, 0.4)
    assert found[1].bins == (1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
    assert found[2].bins == (0, 0, 0, 0, 0, 0, 0, 0, 0, 2)  # 1.0 is in the last bin
    assert found[2].mean == pytest.approx(0.975) and found[0].mean == pytest.approx(0.225)
    assert [d.day for d in results.score_distribution("fracture", now=now, days=0)] == []
    assert results.score_distribution("nothing", now=now) == []
    svg = score_histogram_svg(found[2], (SUSPICIOUS, DEFINITE))
    assert svg.startswith('<svg class="histogram" role="img"') and svg.count("<rect") == 1
    assert "0.9–1.0: 2" in svg and 'x1="36.0"' in svg and 'x1="84.0"' in svg
