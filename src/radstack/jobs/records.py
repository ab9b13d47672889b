"""Job records in the index database: the state machine every queue worker and node shares.

QUEUED → RUNNING → SUCCEEDED | DONE_WITH_ERRORS | FAILED | DEAD, and QUEUED or RUNNING → CANCELLED
when someone cancels it. A job that ran to its end but
refused some of its input (an import whose files were partly refused, a dropped file that is not
DICOM) is DONE_WITH_ERRORS, never SUCCEEDED; its ``last_error`` says how much was refused. A failure
that may pass (an I/O error, a database hiccup) goes back to QUEUED with an exponential backoff
until ``max_attempts`` runs are spent, then the job is DEAD until someone requeues it; a failure
retries cannot fix (the client's mistake) is FAILED at once.

A worker claims a job with one conditional UPDATE that gives the run a lease: a token of its own
(``lease_owner``) and a time (``lease_until``) that the worker renews while the job runs. So a job
runs on one worker at a time however many messages name it. A RUNNING job whose lease ran out lost
its worker (a crash, ``kill -9``, a lost node) and is claimed again, under a new token; every change a
run makes is conditional on its token, so a worker that was paused past its lease learns that the
job is no longer its own and overwrites nothing (dramatiq's rules: tasks take ids, are safe to run
twice, state lives in the database).

Cancelling uses the same fence: :meth:`JobStore.cancel` ends the claim's lease with the job, so the
running worker's next heartbeat or report learns that the job is no longer its own (its context
says it is stopping) and it stops at its next step, recording nothing more.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from radstack.errors import Conflict, NotFound
from radstack.jobs.models import JobRow

__all__ = ["FINAL_STATES", "Job", "JobState", "JobStore"]

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
    #: Someone cancelled it before it ended (``last_error`` says who); requeue it to run it again.
    CANCELLED = "CANCELLED"


FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.DONE_WITH_ERRORS, JobState.FAILED, JobState.DEAD, JobState.CANCELLED}
)
#: The states :meth:`JobStore.requeue` starts again from.
REQUEUEABLE = (JobState.FAILED, JobState.DEAD, JobState.CANCELLED)


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
    #: The lease of the claim running the job (host/pid/nonce); None unless RUNNING.
    lease_owner: str | None = None

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
            lease_owner=row.lease_owner,
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """A stored time as UTC (SQLite gives it back without its zone)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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

        Raises
        ------
        sqlalchemy.exc.IntegrityError
            The new row breaks a unique key and no job of this kind has ``client_token`` (none was
            given, or the job that won the race is gone again).
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

    def counts(
        self, states: Collection[JobState] = (JobState.QUEUED, JobState.RUNNING)
    ) -> dict[tuple[str, str], int]:
        """How many jobs of each (kind, state) are in ``states`` (the queue depths of ``/metrics``)."""
        query = (
            select(_COLUMNS.kind, _COLUMNS.state, func.count())
            .where(_COLUMNS.state.in_([s.value for s in states]))
            .group_by(_COLUMNS.kind, _COLUMNS.state)
        )
        with self.engine.connect() as connection:
            return {(kind, state): int(n) for kind, state, n in connection.execute(query)}

    def durations(self, kind: str, since: datetime) -> list[float]:
        """Seconds from submission to the end of each job of ``kind`` that succeeded since ``since``
        (those whose result says ``skipped``, having had nothing to do, left out)."""
        query = select(_COLUMNS.created_at, _COLUMNS.finished_at, _COLUMNS.progress).where(
            _COLUMNS.kind == kind,
            _COLUMNS.state == JobState.SUCCEEDED.value,
            _COLUMNS.finished_at >= since,
        )
        with self.engine.connect() as connection:
            return [
                (_aware(finished) - _aware(created)).total_seconds()
                for created, finished, progress in connection.execute(query)
                if finished is not None and "skipped" not in json.loads(progress)
            ]

    def claim(self, job_id: str, *, kinds: Collection[str] | None = None) -> Job | None:
        """Make the job RUNNING under a new lease; None when it is not due, another worker holds it,
        or its kind is not among ``kinds`` (the kinds this worker can run).

        The lease is the returned job's ``lease_owner``, a token unique to this claim: every later
        change of the run (:meth:`heartbeat`, :meth:`succeed`, :meth:`fail`, :meth:`release`) names
        it and takes effect only while the job is still this claim's.
        """
        now = _now()
        claimable = or_(
            and_(
                _COLUMNS.state == JobState.QUEUED.value,
                or_(_COLUMNS.not_before.is_(None), _COLUMNS.not_before <= now),
            ),
            and_(_COLUMNS.state == JobState.RUNNING.value, _COLUMNS.lease_until < now),
        )
        if kinds is not None:
            claimable = and_(claimable, _COLUMNS.kind.in_(list(kinds)))
        owner = _lease_owner()
        with self.engine.begin() as connection:
            claimed = connection.execute(
                update(JobRow)
                .where(_COLUMNS.id == job_id, claimable)
                .values(
                    state=JobState.RUNNING.value,
                    attempts=_COLUMNS.attempts + 1,
                    lease_owner=owner,
                    lease_until=now + self.lease,
                    started_at=func.coalesce(_COLUMNS.started_at, now),
                    updated_at=now,
                )
            ).rowcount
        return self.get(job_id) if claimed == 1 else None

    def renew(
        self, connection: Connection, job_id: str, owner: str, progress: JsonDict | None = None
    ) -> bool:
        """Renew the lease (and record ``progress``) in ``connection``'s transaction; False when the
        job is no longer this lease's (another worker claimed it after the lease ran out, or it was
        finished or released): the caller must then stop and change nothing more."""
        now = _now()
        values: JsonDict = {"lease_until": now + self.lease, "updated_at": now}
        if progress is not None:
            values["progress"] = json.dumps(progress)
        renewed = connection.execute(update(JobRow).where(_owned(job_id, owner)).values(**values)).rowcount
        return bool(renewed == 1)

    def heartbeat(self, job_id: str, owner: str, progress: JsonDict | None = None) -> bool:
        """Renew the lease of a RUNNING job and record its progress; False when the lease was lost."""
        with self.engine.begin() as connection:
            return self.renew(connection, job_id, owner, progress)

    def succeed(
        self, job_id: str, owner: str, progress: JsonDict | None = None, *, errors: str | None = None
    ) -> JobState | None:
        """Record a job that ran to its end: SUCCEEDED, or DONE_WITH_ERRORS when ``errors`` says what
        of its input was refused. Returns the new state; None when the lease was lost (the job is
        another worker's now, and its record is left alone)."""
        state = JobState.SUCCEEDED if errors is None else JobState.DONE_WITH_ERRORS
        return state if self._finish(job_id, owner, state, errors, progress) else None

    def fail(
        self, job_id: str, owner: str, error: str, *, permanent: bool, backoff: timedelta
    ) -> JobState | None:
        """Record a failed run: QUEUED again after ``backoff``, or FAILED / DEAD. Returns the new
        state; None when the lease was lost."""
        job = self.get(job_id)
        if job.lease_owner != owner or job.state is not JobState.RUNNING:
            return None
        if permanent:
            state = JobState.FAILED
        elif job.attempts >= job.max_attempts:
            state = JobState.DEAD
        else:
            now = _now()
            with self.engine.begin() as connection:
                changed = connection.execute(
                    update(JobRow)
                    .where(_owned(job_id, owner))
                    .values(
                        state=JobState.QUEUED.value,
                        last_error=error,
                        lease_owner=None,
                        lease_until=None,
                        not_before=now + backoff,
                        updated_at=now,
                    )
                ).rowcount
            return JobState.QUEUED if changed == 1 else None
        return state if self._finish(job_id, owner, state, error, None) else None

    def release(self, job_id: str, owner: str) -> bool:
        """Give a RUNNING job back unfinished (the worker is stopping); the run does not count.
        False when the lease was already lost."""
        with self.engine.begin() as connection:
            released = connection.execute(
                update(JobRow)
                .where(_owned(job_id, owner))
                .values(
                    state=JobState.QUEUED.value,
                    attempts=_COLUMNS.attempts - 1,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=_now(),
                )
            ).rowcount
        return bool(released == 1)

    def requeue(self, job_id: str) -> Job:
        """A FAILED, DEAD or CANCELLED job back to QUEUED with a fresh count of attempts.

        Raises
        ------
        NotFound
            No job has ``job_id``.
        Conflict
            The job is not FAILED, DEAD or CANCELLED.
        """
        job = self.get(job_id)
        if job.state not in REQUEUEABLE:
            raise Conflict(
                f"job {job_id} is {job.state}; only FAILED, DEAD or CANCELLED jobs can be requeued"
            )
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

    def cancel(self, job_id: str, reason: str) -> Job:
        """Cancel a QUEUED or RUNNING job: CANCELLED now, with ``reason`` as its ``last_error``.

        A running claim loses its lease with it: the worker learns so at its next heartbeat or report
        (its context says it is stopping) and records nothing more; what the handler keeps for a
        resume (a training checkpoint) stays.

        Raises
        ------
        NotFound
            No job has ``job_id``.
        Conflict
            The job has already ended.
        """
        now = _now()
        with self.engine.begin() as connection:
            cancelled = connection.execute(
                update(JobRow)
                .where(
                    _COLUMNS.id == job_id,
                    _COLUMNS.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
                )
                .values(
                    state=JobState.CANCELLED.value,
                    last_error=reason,
                    lease_owner=None,
                    lease_until=None,
                    not_before=None,
                    finished_at=now,
                    updated_at=now,
                )
            ).rowcount
        job = self.get(job_id)
        if cancelled != 1:
            raise Conflict(f"job {job_id} is {job.state}; only a QUEUED or RUNNING job can be cancelled")
        return job

    def due(self, *, quiet_seconds: float) -> list[tuple[str, str]]:
        """Jobs to hand to the queue again, as (id, kind).

        A RUNNING job whose lease ran out lost its worker: it is QUEUED again here (the lost run
        counts as an attempt; ``last_error`` says what became of it), by whichever node's sweep sees it
        first, or DEAD when that was its last attempt. A QUEUED job that is due and untouched for ``quiet_seconds`` lost its message, or waited
        for a backoff. Either is touched, so that the next sweeps leave it alone for a while.
        """
        now = _now()
        quiet = now - timedelta(seconds=quiet_seconds)
        expired = and_(_COLUMNS.state == JobState.RUNNING.value, _COLUMNS.lease_until < now)
        waiting = and_(
            _COLUMNS.state == JobState.QUEUED.value,
            _COLUMNS.updated_at < quiet,
            or_(_COLUMNS.not_before.is_(None), _COLUMNS.not_before <= now),
        )
        due: list[tuple[str, str]] = []
        with self.engine.begin() as connection:
            lost = connection.execute(
                select(_COLUMNS.id, _COLUMNS.kind, _COLUMNS.attempts, _COLUMNS.max_attempts).where(expired)
            ).all()
            for job_id, kind, attempts, max_attempts in lost:
                error = (
                    f"attempt {attempts} stopped: its worker no longer renewed the lease (killed, or lost)"
                )
                # A job that takes its worker down every time (out of memory, a crashing library)
                # ends in the dead letters like any other job that failed every attempt.
                dead = attempts >= max_attempts
                requeued = connection.execute(
                    update(JobRow)
                    .where(_COLUMNS.id == job_id, expired)
                    .values(
                        state=(JobState.DEAD if dead else JobState.QUEUED).value,
                        lease_owner=None,
                        lease_until=None,
                        last_error=error,
                        updated_at=now,
                        finished_at=now if dead else None,
                    )
                ).rowcount
                if requeued == 1 and not dead:
                    due.append((str(job_id), str(kind)))
            waited = [
                (str(i), str(k))
                for i, k in connection.execute(select(_COLUMNS.id, _COLUMNS.kind).where(waiting))
            ]
            if waited:
                connection.execute(
                    update(JobRow)
                    .where(_COLUMNS.id.in_([job_id for job_id, _kind in waited]), waiting)
                    .values(updated_at=now)
                )
        return due + waited

    def _finish(
        self, job_id: str, owner: str, state: JobState, error: str | None, progress: JsonDict | None
    ) -> bool:
        now = _now()
        values: JsonDict = {
            "state": state.value,
            "last_error": error,
            "lease_owner": None,
            "lease_until": None,
            "finished_at": now,
            "updated_at": now,
        }
        if progress is not None:
            values["progress"] = json.dumps(progress)
        with self.engine.begin() as connection:
            finished = connection.execute(update(JobRow).where(_owned(job_id, owner)).values(**values))
        return bool(finished.rowcount == 1)


def _owned(job_id: str, owner: str) -> ColumnElement[bool]:
    """The job is RUNNING under the lease ``owner`` (the fence of every change a run makes)."""
    return and_(
        _COLUMNS.id == job_id,
        _COLUMNS.state == JobState.RUNNING.value,
        _COLUMNS.lease_owner == owner,
    )


def _lease_owner() -> str:
    """A token naming one claim: the host and process (for whoever reads the table) and a nonce."""
    return f"{socket.gethostname()[:30]}/{os.getpid()}/{uuid.uuid4().hex[:16]}"
