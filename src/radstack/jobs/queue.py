"""The job queue: the one module that imports Huey.

Messages carry only a job id; the job's state lives in the database (:mod:`radstack.jobs.records`),
so a lost message, a second delivery or a killed worker loses nothing and runs nothing twice at
once. Each job kind goes to its named queue (:mod:`radstack.jobs.kinds`), one Huey queue per name in
the same SQLite file or Redis server. By default the SQLite file lies in the data dir and
``radstack serve`` consumes every queue in-process; with ``RADSTACK_QUEUE_URL=redis://…`` any number
of ``radstack worker [--queues a,b]`` processes on any number of machines take jobs from the queues
they name.

While a job runs, a heartbeat thread renews its lease every third of the lease, whatever the handler
does; a worker killed with its job stops renewing, and once the lease has run out the sweep of any
live worker queues the job again. A worker that lost its lease (paused past it) learns so at its next
heartbeat: its context says it is stopping, and nothing it reports or returns is recorded.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar

from huey import RedisHuey, SqliteHuey
from huey.api import Huey, TaskWrapper
from huey.consumer import Consumer
from pydantic import BaseModel
from sqlalchemy import Connection

from radstack.errors import RadstackError
from radstack.jobs.kinds import DEFAULT_QUEUE, JobKind, declared_queues, job_kind
from radstack.jobs.periodic import Periodic
from radstack.jobs.records import Job, JobState, JobStore

__all__ = ["Handler", "JobContext", "JobInterrupted", "JobLeaseLost", "JobQueue"]

log = logging.getLogger(__name__)

#: The one Huey task: it takes a job id (every queue has it).
_TASK = "radstack.job"

JsonDict = dict[str, Any]
P = TypeVar("P", bound=BaseModel)


class JobInterrupted(Exception):
    """The worker is stopping: the job goes back to the queue and carries on from its records."""


class JobLeaseLost(JobInterrupted):
    """The job's lease ran out and another worker claimed it: this run must stop and record nothing."""


@dataclass
class JobContext(Generic[P]):
    """What a running job may do: read its typed parameters, report progress, learn it must stop,
    record its own rows only while it holds the job, and say that some of its input was refused (the
    job then ends DONE_WITH_ERRORS, not SUCCEEDED)."""

    job: Job
    #: The job's parameters, validated by its kind's model.
    params: P
    records: JobStore
    #: The process is stopping (SIGINT/SIGTERM, the server shutting down).
    process_stopping: Callable[[], bool]
    on_progress: Callable[[JsonDict], None] | None = None
    progress: JsonDict = field(default_factory=dict)
    #: What of the job's input was refused, in a sentence; None while everything was stored.
    errors: str | None = None
    #: Set once the lease is lost (by the heartbeat thread or a report).
    lease_lost: threading.Event = field(default_factory=threading.Event)

    @property
    def owner(self) -> str:
        """The lease this run holds (:attr:`Job.lease_owner` of its claim)."""
        assert self.job.lease_owner is not None
        return self.job.lease_owner

    def stopping(self) -> bool:
        """True when the handler should stop now: the process is stopping, or the lease was lost.
        A long job (training) asks between steps, stops at a checkpoint and returns or calls
        :meth:`report`, which raises."""
        return self.process_stopping() or self.lease_lost.is_set()

    def refused(self, summary: str) -> None:
        """The job runs to its end, but some input was refused: ``summary`` says how much (no PHI)."""
        self.errors = summary

    def report(self, progress: JsonDict, *, save: bool = True) -> None:
        """Record ``progress``; raise :class:`JobInterrupted` when the worker is stopping, or
        :class:`JobLeaseLost` when the job is no longer this run's."""
        self.progress = progress
        if save and not self.records.heartbeat(self.job.id, self.owner, progress):
            self.lease_lost.set()
        if self.on_progress is not None:
            self.on_progress(progress)
        self._raise_if_stopping()

    @contextmanager
    def transaction(self, progress: JsonDict | None = None) -> Iterator[Connection]:
        """A database transaction that commits only while this run holds the job: it renews the
        lease (and records ``progress``) first, and raises :class:`JobLeaseLost`, rolling back, when
        the job is another worker's. A handler writes its own rows (an import's file outcomes) in it.

        Raises
        ------
        JobLeaseLost
            The job is another worker's now (its lease ran out and was claimed); nothing commits.
        """
        with self.records.engine.begin() as connection:
            if not self.records.renew(connection, self.job.id, self.owner, progress):
                self.lease_lost.set()
                raise JobLeaseLost(self.job.id)
            yield connection
        if progress is not None:
            self.progress = progress

    def _raise_if_stopping(self) -> None:
        if self.lease_lost.is_set():
            raise JobLeaseLost(self.job.id)
        if self.process_stopping():
            raise JobInterrupted(self.job.id)


#: Runs one job; returns its final progress. A :class:`RadstackError` with a 4xx status is the
#: client's mistake and fails the job at once; any other exception is retried with backoff.
Handler = Callable[[JobContext[P]], JsonDict]


class _Heartbeat:
    """Renews one running job's lease every ``interval`` seconds in a thread of its own, so a handler
    that computes for an hour without reporting keeps its job; sets ``lease_lost`` when it is gone."""

    def __init__(self, records: JobStore, job: Job, lease_lost: threading.Event, interval: float) -> None:
        self.records, self.job, self.lease_lost, self.interval = records, job, lease_lost, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job.id[:8]}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.interval + 30)

    def _beat(self) -> None:
        assert self.job.lease_owner is not None
        while not self._done.wait(self.interval):
            try:
                renewed = self.records.heartbeat(self.job.id, self.job.lease_owner)
            except Exception:  # the database away for a moment: the lease has time left
                log.exception("job %s: renewing its lease failed; trying again", self.job.id)
                continue
            if not renewed:
                log.warning("job %s lost its lease: another worker has it; this run stops", self.job.id)
                self.lease_lost.set()
                return


class JobQueue:
    """Submit jobs to their kinds' queues, and run them: consumer threads for the queues this process
    serves, a worker process (``radstack worker``), or the calling thread (``radstack import``)."""

    def __init__(
        self,
        url: str,
        data_dir: Path,
        records: JobStore,
        *,
        backoff_seconds: float = 2.0,
        sweep_seconds: float = 5.0,
    ) -> None:
        self.url = url
        self.data_dir = data_dir
        self.records = records
        self.backoff_seconds = backoff_seconds
        self.sweep_seconds = sweep_seconds
        self._lock = threading.RLock()
        self._hueys: dict[str, Huey] = {}
        self._tasks: dict[str, TaskWrapper] = {}
        self._handlers: dict[str, Handler[Any]] = {}
        self._stopping = threading.Event()
        #: Queues this process consumes (None: every declared queue), and consumer threads per queue.
        self._selected: frozenset[str] | None = None
        self._threads = 2
        self._consumers: dict[str, Consumer] = {}
        self._consuming = False
        self._sweeper = Periodic("job-sweeper", sweep_seconds, self.sweep)
        self._huey(DEFAULT_QUEUE)  # a queue URL radstack cannot use is refused now, not at the first job

    def register(self, kind: JobKind[P], handler: Handler[P]) -> None:
        """Run jobs of ``kind`` here with ``handler``; a process consuming queues starts consuming the
        kind's queue now if it is one it serves."""
        with self._lock:
            self._handlers[kind.name] = handler
            if self._consuming:
                self._start_queue(kind.queue)

    def handles(self, kind: str) -> bool:
        return kind in self._handlers

    # ------------------------------------------------------------------ producing
    def create(
        self, kind: JobKind[P] | str, params: P | Mapping[str, Any], *, client_token: str | None = None
    ) -> tuple[Job, bool]:
        """Record a job of ``kind`` (or find the one with this ``client_token``) without queueing it.

        Raises
        ------
        BadRequest
            ``params`` do not fit the kind's model (the message names each field), or the kind is
            not declared.
        """
        declared = job_kind(kind) if isinstance(kind, str) else kind
        return self.records.create(declared.name, declared.dump(params), client_token=client_token)

    def submit(
        self, kind: JobKind[P] | str, params: P | Mapping[str, Any], *, client_token: str | None = None
    ) -> tuple[Job, bool]:
        """Create a job (or find the one with this ``client_token``) and queue it on its kind's queue
        when new. Needs only the kind's declaration: a node that cannot run the kind submits it too.

        Returns
        -------
        tuple
            The job, and whether it was created by this call.

        Raises
        ------
        BadRequest
            ``params`` do not fit the kind's model (the message names each field).
        """
        job, created = self.create(kind, params, client_token=client_token)
        if created:
            self.enqueue(job.id, job.kind)
        return job, created

    def enqueue(self, job_id: str, kind: str, *, delay: float = 0.0) -> None:
        """Put a message naming ``job_id`` on the queue of ``kind``."""
        task = self._task(job_kind(kind).queue)
        if delay > 0:
            task.schedule(args=(job_id,), delay=delay)
        else:
            task(job_id)

    def requeue(self, job_id: str) -> Job:
        """Run a FAILED, DEAD or CANCELLED job again (the dead-letter requeue)."""
        job = self.records.requeue(job_id)
        self.enqueue(job.id, job.kind)
        return job

    # ------------------------------------------------------------------ consuming
    def execute(self, job_id: str, on_progress: Callable[[JsonDict], None] | None = None) -> JobState | None:
        """Claim and run one job here; None when it is not due, runs elsewhere, is of a kind this
        process has no handler for (it stays QUEUED for a worker that has one), or lost its lease
        while it ran. Safe to call twice."""
        job = self.records.claim(job_id, kinds=list(self._handlers))
        if job is None:
            self._not_claimed(job_id)
            return None
        assert job.lease_owner is not None
        owner = job.lease_owner
        handler = self._handlers[job.kind]
        try:
            params = job_kind(job.kind).parse(job.params)
        except RadstackError as exc:  # a record this version's model refuses, or an undeclared kind
            log.warning("job %s (%s) cannot run: %s", job.id, job.kind, exc.message)
            return self.records.fail(job.id, owner, exc.message, permanent=True, backoff=timedelta())
        context = JobContext(job, params, self.records, self._is_stopping, on_progress)
        log.info("job %s (%s) attempt %d started", job.id, job.kind, job.attempts)
        interval = max(0.1, self.records.lease.total_seconds() / 3)
        try:
            with _Heartbeat(self.records, job, context.lease_lost, interval):
                progress = handler(context)
        except JobInterrupted:
            if not context.lease_lost.is_set() and self.records.release(job.id, owner):
                log.info("job %s given back: the worker is stopping", job.id)
                return JobState.QUEUED
            if self.records.get(job.id).state is JobState.CANCELLED:
                log.info("job %s stopped: it was cancelled", job.id)
            else:
                log.warning("job %s stopped: it lost its lease, another worker has it", job.id)
            return None
        except Exception as exc:
            permanent = isinstance(exc, RadstackError) and exc.http_status < 500
            message = exc.message if isinstance(exc, RadstackError) else f"{type(exc).__name__}: {exc}"
            backoff = timedelta(seconds=self.backoff_seconds * 2 ** (job.attempts - 1))
            state = self.records.fail(job.id, owner, message, permanent=permanent, backoff=backoff)
            if state is JobState.QUEUED:
                self.enqueue(job.id, job.kind, delay=backoff.total_seconds())
            if state is None:
                log.warning(
                    "job %s attempt %d failed after it lost its lease: %s", job.id, job.attempts, message
                )
            else:
                log.warning("job %s attempt %d failed (%s): %s", job.id, job.attempts, state, message)
            return state
        state = self.records.succeed(job.id, owner, progress, errors=context.errors)
        if state is None:
            log.warning("job %s ended after it lost its lease; its result is not recorded", job.id)
        elif context.errors is None:
            log.info("job %s succeeded", job.id)
        else:
            log.warning("job %s done with errors: %s", job.id, context.errors)
        return state

    def _not_claimed(self, job_id: str) -> None:
        """Say so when a job is left because this process cannot run its kind (the message is gone;
        the sweep queues the job again later): every consumer of a queue should run all its kinds."""
        try:
            job = self.records.get(job_id)
        except RadstackError:
            return
        if job.state is JobState.QUEUED and job.kind not in self._handlers:
            log.warning(
                "job %s (%s) stays QUEUED for a worker that runs its kind: this process has no handler",
                job.id,
                job.kind,
            )

    def _is_stopping(self) -> bool:
        """This process is stopping (told so directly, or ``radstack worker`` got SIGINT/SIGTERM)."""
        return self._stopping.is_set()

    def sweep(self) -> int:
        """Queue again the jobs whose worker died or whose message was lost; returns how many."""
        due = self.records.due(quiet_seconds=max(30.0, 6 * self.sweep_seconds))
        queued = 0
        for job_id, kind in due:
            try:
                self.enqueue(job_id, kind)
            except RadstackError:  # a kind this version does not declare (a newer node's)
                log.warning("job %s of undeclared kind %r left for a node that declares it", job_id, kind)
                continue
            queued += 1
        return queued

    def queues(self, selected: Collection[str] | None = None) -> list[str]:
        """The queues a process consuming ``selected`` (None: all) serves: those it has a handler for.

        Raises
        ------
        ValueError
            ``selected`` names a queue that is not declared.
        """
        declared = declared_queues()
        unknown = sorted(set(selected or ()) - set(declared))
        if unknown:
            raise ValueError(
                f"queue {', '.join(map(repr, unknown))} is not declared; declared queues: {', '.join(declared)}"
            )
        wanted = set(declared) if selected is None else set(selected)
        served = {job_kind(name).queue for name in self._handlers}
        return [queue for queue in declared if queue in wanted and queue in served]

    def start_consumer(self, threads: int, queues: Collection[str] | None = None) -> None:
        """Consumer threads in this process for ``queues`` (None: every declared queue), each queue
        with its declared thread count or ``threads``, plus the recovery sweep.

        Only queues with at least one kind this process has a handler for are consumed; registering a
        handler later starts its queue's consumer if the queue is selected.
        """
        with self._lock:
            self.queues(queues)  # refuses an undeclared name before anything starts
            self._stopping.clear()
            self._selected = None if queues is None else frozenset(queues)
            self._threads = threads
            self._consuming = True
            for queue in {job_kind(name).queue for name in self._handlers}:
                self._start_queue(queue)
        self._sweeper.start()
        log.info("consuming queues %s", ", ".join(sorted(self._consumers)) or "(none: no handlers here)")

    def _start_queue(self, queue: str) -> None:
        if queue in self._consumers or (self._selected is not None and queue not in self._selected):
            return
        threads = declared_queues().get(queue) or self._threads
        consumer = self._huey(queue).create_consumer(
            workers=threads,
            worker_type="thread",
            periodic=False,
            initial_delay=0.05,
            max_delay=0.5,
            check_worker_health=False,
        )
        # Consumer.start() would also take over the process's signal handlers, which belong to the
        # HTTP server (or to run_worker): start its scheduler and workers directly.
        consumer.scheduler.start()
        for _worker, thread in consumer.worker_threads:
            thread.start()
        self._consumers[queue] = consumer

    def run_worker(self, threads: int, queues: Collection[str] | None = None) -> None:
        """Consume ``queues`` until SIGINT or SIGTERM (``radstack worker``).

        On the first signal, running jobs are told to stop (they give their job back at their next
        report, or finish) and the process waits for them; a second signal ends it at once.
        """
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: stopping once the running jobs stop", signal.Signals(signum).name)
            stop.set()

        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start_consumer(threads, queues)
            while not stop.wait(0.5):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop_consumer()

    def stop_consumer(self) -> None:
        """Ask running jobs to stop at their next progress report, then wait for the workers."""
        self._stopping.set()
        with self._lock:
            consumers = list(self._consumers.values())
            self._consumers = {}
            self._consuming = False
        for consumer in consumers:  # no queue takes a new job while another one's workers are joined
            consumer.stop_flag.set()
        for consumer in consumers:
            consumer.stop(graceful=True)
        self._sweeper.stop()

    def close(self) -> None:
        """Stop consuming and close each queue's connection (a SQLite queue holds a file open)."""
        self.stop_consumer()
        with self._lock:
            hueys, self._hueys, self._tasks = list(self._hueys.values()), {}, {}
        for huey in hueys:
            huey.storage.close()

    # ------------------------------------------------------------------ queues
    def _huey(self, queue: str) -> Huey:
        with self._lock:
            huey = self._hueys.get(queue)
            if huey is None:
                huey = self._hueys[queue] = _open_huey(self.url, self.data_dir, queue)
                self._tasks[queue] = huey.task(name=_TASK)(self.execute)
            return huey

    def _task(self, queue: str) -> TaskWrapper:
        with self._lock:
            if queue not in self._tasks:
                self._huey(queue)
            return self._tasks[queue]


def _open_huey(url: str, data_dir: Path, queue: str) -> Huey:
    # The default queue keeps the name of the single queue radstack had before queues were named, so
    # messages queued before an upgrade are still consumed.
    name = "radstack" if queue == DEFAULT_QUEUE else f"radstack.{queue}"
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey(name, url=url, results=False, utc=True)
    if url and not url.startswith("sqlite:///"):
        raise ValueError(f"queue URL {url!r} is not supported; expected redis://… or sqlite:///path")
    path = url.removeprefix("sqlite:///") if url else str(data_dir / "queue.db")
    return SqliteHuey(name, filename=path, results=False, utc=True)
