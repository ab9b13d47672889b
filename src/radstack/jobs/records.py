"""Job records in the index database: the state machine every queue worker and node shares.

QUEUED → RUNNING → SUCCEEDED | DONE_WITH_ERRORS | FAILED | DEAD. A job that ran to its end but
refused some of its input (an import whose files were partly refused, a dropped file that is not
DICOM) is DONE_WITH_ERRORS, never SUCCEEDED; its ``last_error`` says how much was refused. A failure
that may pass (an I/O error, a database hiccup) goes back to QUEUED with an exponential backoff
until ``max_attempts`` runs are spent, then the job is DEAD until someone requeues it; a failure
retries cannot fix (the client's mistake) is FAILED at once. A worker claims a job with one conditional UPDATE, so a job runs on one worker at a
time however many messages name it; a RUNNING job whose lease ran out lost its worker and is
claimed again (dramatiq's rules: tasks take ids, are safe to run twice, state lives in the database).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, Row, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from radstack.errors import Conflict, NotFound
from radstack.ingest.models import ImportItemRow
from radstack.jobs.models import JobRow

__all__ = ["Job", "JobState", "JobStore"]

JsonDict = dict[str, Any]


class JobState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    #: The job ran to its end and every input was stored (or was already stored).
    SUCCEEDED = "SUCCEEDED"
    #: The job ran to its end but some of its input was refused (the reasons are in its records).
    #: 16 characters: the ``jobs.state`` column's width.
    DONE_WITH_ERRORS = "DONE_WITH_ERRORS"
    #: The job could not run (the client's mistake); requeue it once that is fixed.
    FAILED = "FAILED"
    #: Every attempt failed (the dead letters); requeue it once the cause is gone.
    DEAD = "DEAD"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DONE_WITH_ERRORS, JobState.FAILED, JobState.DEAD})


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str
    state: JobState
    params: JsonDict
    client_token: str | None
    attempts: int
    max_attempts: int
    last_error: str | None
    progress: JsonDict
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: JobRow | Row[Any]) -> Job:
        return cls(
            id=row.id,
            kind=row.kind,
            state=JobState(row.state),
            params=json.loads(row.params),
            client_token=row.client_token,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            last_error=row.last_error,
            progress=json.loads(row.progress),
            created_at=row.created_at,
            updated_at=row.updated_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


def _now() -> datetime:
    return datetime.now(UTC)


_COLUMNS = JobRow.__table__.c


class JobStore:
    """Create, claim, progress and finish jobs; every change is one short transaction."""

    def __init__(self, engine: Engine, *, max_attempts: int = 5, lease_seconds: float = 30.0) -> None:
        self.engine = engine
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=lease_seconds)

    def create(self, kind: str, params: JsonDict, *, client_token: str | None = None) -> tuple[Job, bool]:
        """A new QUEUED job, or the existing one of this kind with the same ``client_token``.

        Returns the job and whether it was created now (an idempotent retry of a request gets the
        job the first request made).
        """
        if client_token is not None:
            existing = self._by_token(kind, client_token)
            if existing is not None:
                return existing, False
        now = _now()
        job_id = uuid.uuid4().hex
        row: JsonDict = {
            "id": job_id,
            "kind": kind,
            "state": JobState.QUEUED.value,
            "params": json.dumps(params),
            "client_token": client_token,
            "attempts": 0,
            "max_attempts": self.max_attempts,
            "progress": "{}",
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(JobRow).values(**row))
        except IntegrityError:  # another request with the same token won the race
            existing = self._by_token(kind, client_token or "")
            if existing is None:
                raise
            return existing, False
        return self.get(job_id), True

    def _by_token(self, kind: str, token: str) -> Job | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(JobRow).where(_COLUMNS.kind == kind, _COLUMNS.client_token == token)
            ).first()
        return Job.from_row(row) if row is not None else None

    def get(self, job_id: str) -> Job:
        with self.engine.connect() as connection:
            row = connection.execute(select(JobRow).where(_COLUMNS.id == job_id)).first()
        if row is None:
            raise NotFound(f"job {job_id!r} does not exist")
        return Job.from_row(row)

    def find(self, *, kind: str | None = None, state: JobState | None = None, limit: int = 100) -> list[Job]:
        query = select(JobRow).order_by(_COLUMNS.created_at.desc()).limit(limit)
        if kind is not None:
            query = query.where(_COLUMNS.kind == kind)
        if state is not None:
            query = query.where(_COLUMNS.state == state.value)
        with self.engine.connect() as connection:
            return [Job.from_row(row) for row in connection.execute(query)]

    def claim(self, job_id: str) -> Job | None:
        """Make the job RUNNING on this worker; None when it is not due or another worker has it."""
        now = _now()
        claimable = or_(
            and_(
                _COLUMNS.state == JobState.QUEUED.value,
                or_(_COLUMNS.not_before.is_(None), _COLUMNS.not_before <= now),
            ),
            and_(_COLUMNS.state == JobState.RUNNING.value, _COLUMNS.lease_until < now),
        )
        with self.engine.begin() as connection:
            claimed = connection.execute(
                update(JobRow)
                .where(_COLUMNS.id == job_id, claimable)
                .values(
                    state=JobState.RUNNING.value,
                    attempts=_COLUMNS.attempts + 1,
                    lease_until=now + self.lease,
                    started_at=func.coalesce(_COLUMNS.started_at, now),
                    updated_at=now,
                )
            ).rowcount
        return self.get(job_id) if claimed == 1 else None

    def heartbeat(self, job_id: str, progress: JsonDict | None = None) -> None:
        """Renew the lease of a RUNNING job and record its progress."""
        now = _now()
        values: JsonDict = {"lease_until": now + self.lease, "updated_at": now}
        if progress is not None:
            values["progress"] = json.dumps(progress)
        with self.engine.begin() as connection:
            connection.execute(
                update(JobRow)
                .where(_COLUMNS.id == job_id, _COLUMNS.state == JobState.RUNNING.value)
                .values(**values)
            )

    def succeed(
        self, job_id: str, progress: JsonDict | None = None, *, errors: str | None = None
    ) -> JobState:
        """Record a job that ran to its end: SUCCEEDED, or DONE_WITH_ERRORS when ``errors`` says what
        of its input was refused. Returns the new state."""
        state = JobState.SUCCEEDED if errors is None else JobState.DONE_WITH_ERRORS
        self._finish(job_id, state, errors, progress)
        return state

    def fail(self, job_id: str, error: str, *, permanent: bool, backoff: timedelta) -> JobState:
        """Record a failed run: QUEUED again after ``backoff``, or FAILED / DEAD. Returns the new state."""
        job = self.get(job_id)
        if permanent:
            state = JobState.FAILED
        elif job.attempts >= job.max_attempts:
            state = JobState.DEAD
        else:
            now = _now()
            with self.engine.begin() as connection:
                connection.execute(
                    update(JobRow)
                    .where(_COLUMNS.id == job_id)
                    .values(
                        state=JobState.QUEUED.value,
                        last_error=error,
                        lease_until=None,
                        not_before=now + backoff,
                        updated_at=now,
                    )
                )
            return JobState.QUEUED
        self._finish(job_id, state, error, None)
        return state

    def release(self, job_id: str) -> None:
        """Give a RUNNING job back unfinished (the worker is stopping); the run does not count."""
        with self.engine.begin() as connection:
            connection.execute(
                update(JobRow)
                .where(_COLUMNS.id == job_id, _COLUMNS.state == JobState.RUNNING.value)
                .values(
                    state=JobState.QUEUED.value,
                    attempts=_COLUMNS.attempts - 1,
                    lease_until=None,
                    updated_at=_now(),
                )
            )

    def requeue(self, job_id: str) -> Job:
        """A FAILED or DEAD job back to QUEUED with a fresh count of attempts."""
        job = self.get(job_id)
        if job.state not in (JobState.FAILED, JobState.DEAD):
            raise Conflict(f"job {job_id} is {job.state}; only FAILED or DEAD jobs can be requeued")
        with self.engine.begin() as connection:
            connection.execute(
                update(JobRow)
                .where(_COLUMNS.id == job_id)
                .values(
                    state=JobState.QUEUED.value,
                    attempts=0,
                    not_before=None,
                    finished_at=None,
                    updated_at=_now(),
                )
            )
        return self.get(job_id)

    def due(self, *, quiet_seconds: float) -> list[str]:
        """Jobs to hand to the queue again: RUNNING ones whose worker died, and QUEUED ones that are due
        and untouched for ``quiet_seconds`` (their message was lost, or they waited for a backoff)."""
        now = _now()
        quiet = now - timedelta(seconds=quiet_seconds)
        with self.engine.begin() as connection:
            ids = list(
                connection.execute(
                    select(_COLUMNS.id).where(
                        or_(
                            and_(_COLUMNS.state == JobState.RUNNING.value, _COLUMNS.lease_until < now),
                            and_(
                                _COLUMNS.state == JobState.QUEUED.value,
                                _COLUMNS.updated_at < quiet,
                                or_(_COLUMNS.not_before.is_(None), _COLUMNS.not_before <= now),
                            ),
                        )
                    )
                ).scalars()
            )
            if ids:  # so that the next sweep leaves them alone for a while
                connection.execute(
                    update(JobRow)
                    .where(_COLUMNS.id.in_(ids), _COLUMNS.state == JobState.QUEUED.value)
                    .values(updated_at=now)
                )
        return ids

    def _finish(self, job_id: str, state: JobState, error: str | None, progress: JsonDict | None) -> None:
        now = _now()
        values: JsonDict = {
            "state": state.value,
            "last_error": error,
            "lease_until": None,
            "finished_at": now,
            "updated_at": now,
        }
        if progress is not None:
            values["progress"] = json.dumps(progress)
        with self.engine.begin() as connection:
            connection.execute(update(JobRow).where(_COLUMNS.id == job_id).values(**values))

    # ------------------------------------------------------------------ import items
    def add_import_items(self, job_id: str, items: list[JsonDict], progress: JsonDict) -> None:
        """Record the outcome of a chunk of files and the job's progress in one transaction."""
        now = _now()
        with self.engine.begin() as connection:
            if items:
                connection.execute(insert(ImportItemRow), [{"job_id": job_id, **item} for item in items])
            connection.execute(
                update(JobRow)
                .where(_COLUMNS.id == job_id)
                .values(progress=json.dumps(progress), lease_until=now + self.lease, updated_at=now)
            )

    def import_paths_done(self, job_id: str) -> set[str]:
        items = ImportItemRow.__table__.c
        with self.engine.connect() as connection:
            return set(connection.execute(select(items.path).where(items.job_id == job_id)).scalars())

    def import_counts(self, job_id: str) -> JsonDict:
        """Files, bytes and outcomes recorded so far for the job."""
        items = ImportItemRow.__table__.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(items.outcome, func.count(), func.coalesce(func.sum(items.size), 0))
                .where(items.job_id == job_id)
                .group_by(items.outcome)
            ).all()
        return {outcome: (int(count), int(size)) for outcome, count, size in rows}

    def import_items(self, job_id: str, *, failed: bool, limit: int | None = None) -> list[Row[Any]]:
        """The job's files that were stored (``failed=False``) or refused, in the order recorded."""
        items = ImportItemRow.__table__.c
        query = select(ImportItemRow).where(items.job_id == job_id, items.failed == failed).order_by(items.id)
        with self.engine.connect() as connection:
            rows = connection.execute(query.limit(limit) if limit is not None else query).all()
        return list(rows)
