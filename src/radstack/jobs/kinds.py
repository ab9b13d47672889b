"""Job kinds and the queues that carry them.

A kind is declared once, where its handler's code lives (``import`` in ``ingest/importjobs.py``,
``route-action`` in ``jobs/routing.py``, …): its name, the pydantic model of its parameters and the
named queue its messages go to. A declaration is all a node needs to *submit* a job of that kind; only
nodes that *run* it register a handler (:meth:`radstack.jobs.queue.JobQueue.register`). So an API node
submits a training job that only the worker with the GPU, consuming ``training``, can run.

Queues are named: ``default`` (workflows, routing actions, webhooks), ``ingest`` (import jobs, dropped
files), ``inference`` and ``training``. Each has its own consumer threads in every process that
consumes it; a queue declared with ``threads`` runs that many (``training``: one job at a time per
process), the others ``RADSTACK_QUEUE_WORKERS``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from radstack.errors import BadRequest

__all__ = [
    "DEFAULT_QUEUE",
    "INFERENCE_QUEUE",
    "INGEST_QUEUE",
    "TRAINING_QUEUE",
    "JobKind",
    "JobParams",
    "Submitter",
    "declare",
    "declare_queue",
    "declared_kinds",
    "declared_queues",
    "job_kind",
    "validation_message",
]

JsonDict = dict[str, Any]

DEFAULT_QUEUE = "default"
INGEST_QUEUE = "ingest"
INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"

#: The ``jobs.kind`` column's width.
_KIND_WIDTH = 32


class JobParams(BaseModel):
    """Base of every kind's parameters: immutable, and a misspelt field is refused, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Submitter(BaseModel):
    """Who submitted a job through the API: a worker acting for them checks what their role may do."""

    model_config = ConfigDict(frozen=True)

    subject: str
    role: str


P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True, slots=True, eq=False)
class JobKind(Generic[P]):
    """One kind of job: its name (the ``kind`` of its records), its parameters' model, its queue."""

    name: str
    params: type[P]
    queue: str

    def parse(self, params: P | Mapping[str, Any]) -> P:
        """``params`` as this kind's model; :class:`BadRequest` naming each bad field otherwise.

        Raises
        ------
        BadRequest
            ``params`` does not validate against the kind's model (each bad field is named).
        """
        if isinstance(params, self.params):
            return params
        try:
            return self.params.model_validate(params)
        except ValidationError as exc:
            raise BadRequest(f"{self.name} job parameters are not valid: {validation_message(exc)}") from None

    def dump(self, params: P | Mapping[str, Any]) -> JsonDict:
        """The JSON the job's record keeps (validated first; fields that are None are left out)."""
        return self.parse(params).model_dump(mode="json", exclude_none=True)

    def __repr__(self) -> str:
        return f"JobKind({self.name!r}, {self.params.__name__}, queue={self.queue!r})"


def validation_message(error: ValidationError) -> str:
    """Pydantic's errors as one line: ``'field.sub': message; …`` (the field named, the value quoted)."""
    parts = []
    for entry in error.errors():
        where = ".".join(str(p) for p in entry["loc"])
        message = str(entry["msg"]).removeprefix("Value error, ")
        value = entry.get("input")
        if (
            entry["type"] not in ("missing", "extra_forbidden")
            and isinstance(value, str | int | float)
            and len(repr(value)) <= 80
        ):
            message += f", not {value!r}"
        parts.append(f"{where!r}: {message}" if where else message)
    return "; ".join(parts)


_lock = threading.Lock()
#: Queue name → its consumer threads per process (None: ``RADSTACK_QUEUE_WORKERS``).
_queues: dict[str, int | None] = {
    DEFAULT_QUEUE: None,
    INGEST_QUEUE: None,
    # One model run at a time per process: onnxruntime and torch use every core themselves.
    INFERENCE_QUEUE: 1,
    TRAINING_QUEUE: 1,
}
_kinds: dict[str, JobKind[Any]] = {}


def declare_queue(name: str, *, threads: int | None = None) -> str:
    """Declare a named queue (idempotent); ``threads`` fixes its consumer threads per process.

    Raises
    ------
    ValueError
        The name is empty or has characters other than letters, digits, '-' and '_', ``threads``
        is below one, or the queue is already declared with other threads.
    """
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"queue name {name!r} must be letters, digits, '-' or '_'")
    if threads is not None and threads < 1:
        raise ValueError(f"queue {name!r} needs at least one thread, not {threads}")
    with _lock:
        known = _queues.get(name, threads)
        if name in _queues and known != threads:
            raise ValueError(f"queue {name!r} is already declared with {known} threads")
        _queues[name] = threads
    return name


def declare(name: str, params: type[P], *, queue: str = DEFAULT_QUEUE) -> JobKind[P]:
    """Declare the job kind ``name``: its parameters' model and its queue.

    Parameters
    ----------
    name
        The kind, as job records and ``/api/v1/jobs?kind=`` name it (at most 32 characters).
    params
        The pydantic model of its parameters (usually a :class:`JobParams`); submit validates them
        through it and the handler gets them as an instance of it (``context.params``).
    queue
        A declared queue (:func:`declare_queue`); ``default`` unless the work needs its own workers.

    Returns
    -------
    JobKind
        The kind, to submit and register with. Declaring the same kind again returns it.

    Raises
    ------
    ValueError
        The name is taken by another declaration, too long, or the queue is not declared.
    """
    if not name or len(name) > _KIND_WIDTH:
        raise ValueError(f"job kind {name!r} must be 1 to {_KIND_WIDTH} characters")
    with _lock:
        if queue not in _queues:
            raise ValueError(f"queue {queue!r} is not declared; declared queues: {', '.join(_queues)}")
        existing = _kinds.get(name)
        if existing is not None:
            if existing.params is not params or existing.queue != queue:
                raise ValueError(f"job kind {name!r} is already declared as {existing!r}")
            kind: JobKind[P] = existing
            return kind
        kind = JobKind(name, params, queue)
        _kinds[name] = kind
    return kind


def job_kind(name: str) -> JobKind[Any]:
    """The declared kind ``name``; :class:`BadRequest` listing the declared kinds otherwise.

    Raises
    ------
    BadRequest
        No kind ``name`` is declared.
    """
    kind = _kinds.get(name)
    if kind is None:
        raise BadRequest(f"job kind {name!r} is not declared; declared kinds: {', '.join(sorted(_kinds))}")
    return kind


def declared_kinds() -> list[JobKind[Any]]:
    with _lock:
        return list(_kinds.values())


def declared_queues() -> dict[str, int | None]:
    """Each declared queue and its fixed thread count (None: ``RADSTACK_QUEUE_WORKERS``)."""
    with _lock:
        return dict(_queues)
