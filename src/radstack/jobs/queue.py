"""The job queue: the one module that imports Huey.

Messages carry only a job id; the job's state lives in the database (:mod:`radstack.jobs.records`),
so a lost message, a second delivery or a killed worker loses nothing and runs nothing twice at
once. The default queue is a SQLite file in the data dir with consumer threads inside
``radstack serve``; with ``RADSTACK_QUEUE_URL=redis://…`` it is Redis, and any number of
``radstack worker`` processes on any number of machines take jobs from it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from huey import RedisHuey, SqliteHuey
from huey.api import Huey

from radstack.errors import RadstackError
from radstack.jobs.periodic import Periodic
from radstack.jobs.records import Job, JobState, JobStore

__all__ = ["Handler", "JobContext", "JobInterrupted", "JobQueue"]

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]


class JobInterrupted(Exception):
    """The worker is stopping: the job goes back to the queue and carries on from its records."""


@dataclass
class JobContext:
    """What a running job may do: report progress (which renews its lease), learn it must stop, and
    say that some of its input was refused (the job then ends DONE_WITH_ERRORS, not SUCCEEDED)."""

    job: Job
    records: JobStore
    stopping: Callable[[], bool]
    on_progress: Callable[[JsonDict], None] | None = None
    progress: JsonDict = field(default_factory=dict)
    #: What of the job's input was refused, in a sentence; None while everything was stored.
    errors: str | None = None

    def refused(self, summary: str) -> None:
        """The job runs to its end, but some input was refused: ``summary`` says how much (no PHI)."""
        self.errors = summary

    def report(self, progress: JsonDict, *, save: bool = True) -> None:
        """Record ``progress``; raise :class:`JobInterrupted` when the worker is stopping."""
        self.progress = progress
        if save:
            self.records.heartbeat(self.job.id, progress)
        if self.on_progress is not None:
            self.on_progress(progress)
        if self.stopping():
            raise JobInterrupted(self.job.id)


#: Runs one job; returns its final progress. A :class:`RadstackError` with a 4xx status is the
#: client's mistake and fails the job at once; any other exception is retried with backoff.
Handler = Callable[[JobContext], JsonDict]


class JobQueue:
    """Submit jobs, run them (consumer threads, a worker process, or the calling thread)."""

    def __init__(
        self,
        url: str,
        data_dir: Path,
        records: JobStore,
        *,
        backoff_seconds: float = 2.0,
        sweep_seconds: float = 5.0,
    ) -> None:
        self.records = records
        self.backoff_seconds = backoff_seconds
        self.sweep_seconds = sweep_seconds
        self._huey = _open_huey(url, data_dir)
        self._task = self._huey.task(name="radstack.job")(self.execute)
        self._handlers: dict[str, Handler] = {}
        self._stopping = threading.Event()
        self._consumer: Any = None
        self._sweeper = Periodic("job-sweeper", sweep_seconds, self.sweep)

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    # ------------------------------------------------------------------ producing
    def submit(self, kind: str, params: JsonDict, *, client_token: str | None = None) -> tuple[Job, bool]:
        """Create a job (or find the one with this ``client_token``) and queue it when new."""
        if kind not in self._handlers:
            raise ValueError(f"no handler for jobs of kind {kind!r}")
        job, created = self.records.create(kind, params, client_token=client_token)
        if created:
            self.enqueue(job.id)
        return job, created

    def enqueue(self, job_id: str, *, delay: float = 0.0) -> None:
        if delay > 0:
            self._task.schedule(args=(job_id,), delay=delay)
        else:
            self._task(job_id)

    def requeue(self, job_id: str) -> Job:
        """Run a FAILED or DEAD job again (the dead-letter requeue)."""
        job = self.records.requeue(job_id)
        self.enqueue(job.id)
        return job

    # ------------------------------------------------------------------ consuming
    def execute(self, job_id: str, on_progress: Callable[[JsonDict], None] | None = None) -> JobState | None:
        """Claim and run one job here; None when it is not due or runs elsewhere. Safe to call twice."""
        job = self.records.claim(job_id)
        if job is None:
            return None
        handler = self._handlers.get(job.kind)
        if handler is None:
            self.records.fail(
                job.id, f"no handler for jobs of kind {job.kind!r}", permanent=True, backoff=timedelta()
            )
            return JobState.FAILED
        context = JobContext(job, self.records, self._is_stopping, on_progress)
        log.info("job %s (%s) attempt %d started", job.id, job.kind, job.attempts)
        try:
            progress = handler(context)
        except JobInterrupted:
            self.records.release(job.id)
            log.info("job %s given back: the worker is stopping", job.id)
            return JobState.QUEUED
        except Exception as exc:
            permanent = isinstance(exc, RadstackError) and exc.http_status < 500
            message = exc.message if isinstance(exc, RadstackError) else f"{type(exc).__name__}: {exc}"
            backoff = timedelta(seconds=self.backoff_seconds * 2 ** (job.attempts - 1))
            state = self.records.fail(job.id, message, permanent=permanent, backoff=backoff)
            if state is JobState.QUEUED:
                self.enqueue(job.id, delay=backoff.total_seconds())
            log.warning("job %s attempt %d failed (%s): %s", job.id, job.attempts, state, message)
            return state
        state = self.records.succeed(job.id, progress, errors=context.errors)
        if context.errors is None:
            log.info("job %s succeeded", job.id)
        else:
            log.warning("job %s done with errors: %s", job.id, context.errors)
        return state

    def _is_stopping(self) -> bool:
        """This process is stopping: told so directly, or its consumer got SIGINT/SIGTERM."""
        consumer = self._consumer
        return self._stopping.is_set() or (consumer is not None and consumer.stop_flag.is_set())

    def sweep(self) -> int:
        """Queue again the jobs whose worker died or whose message was lost; returns how many."""
        due = self.records.due(quiet_seconds=max(30.0, 6 * self.sweep_seconds))
        for job_id in due:
            self.enqueue(job_id)
        return len(due)

    def start_consumer(self, threads: int) -> None:
        """Consumer threads inside this process (``radstack serve``), plus the recovery sweep."""
        self._stopping.clear()
        consumer = self._huey.create_consumer(
            workers=threads,
            worker_type="thread",
            periodic=False,
            initial_delay=0.05,
            max_delay=0.5,
            check_worker_health=False,
        )
        # Consumer.start() would also take over the process's signal handlers, which belong to the
        # HTTP server: start its scheduler and workers directly.
        consumer.scheduler.start()
        for _worker, thread in consumer.worker_threads:
            thread.start()
        self._consumer = consumer
        self._sweeper.start()

    def run_worker(self, threads: int) -> None:
        """Consume until SIGINT/SIGTERM (``radstack worker``)."""
        self._sweeper.start()
        self._consumer = self._huey.create_consumer(workers=threads, worker_type="thread", periodic=False)
        try:
            self._consumer.run()
        finally:
            self._stopping.set()
            self._consumer = None

    def stop_consumer(self) -> None:
        """Ask running jobs to stop at their next progress report, then wait for the workers."""
        self._stopping.set()
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None
        self._sweeper.stop()


def _open_huey(url: str, data_dir: Path) -> Huey:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey("radstack", url=url, results=False, utc=True)
    if url and not url.startswith("sqlite:///"):
        raise ValueError(f"queue URL {url!r} is not supported; expected redis://… or sqlite:///path")
    path = url.removeprefix("sqlite:///") if url else str(data_dir / "queue.db")
    return SqliteHuey("radstack", filename=path, results=False, utc=True)
