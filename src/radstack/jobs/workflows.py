"""Study workflows: ``study.stable`` detection, the event log, and webhook delivery.

A study is *stable* when no change reached it for ``stable_seconds`` (the modality has finished
sending). The monitor then submits one ``study-stable`` job per (study, change): the job publishes
the ``study.stable`` event and runs the routing rules (:mod:`radstack.jobs.routing`). The job
record is created before the study is marked as handled, and its client token names the study and
its change, so a crash in between, or two nodes watching at once, neither lose nor double it.

Events are rows in the index (``/api/v1/events`` streams them as server-sent events, resumable
with ``Last-Event-ID``) and are POSTed to every configured webhook by a retrying job: delivery is
at least once, and each event carries its id so a receiver can drop repeats. Each event has a type
from :class:`EventType` and a payload of that type's model (:class:`StudyStable`, …): a new type is
a member of the enum and an :class:`EventPayload` subclass naming it.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from radstack.errors import BadRequest, ProcessingFailure
from radstack.jobs.kinds import JobParams, declare
from radstack.jobs.models import EventRow, StudyWorkflowRow
from radstack.jobs.periodic import Periodic
from radstack.jobs.queue import JobContext, JobQueue
from radstack.store.models import StudyRow

__all__ = [
    "PAYLOADS",
    "STABLE",
    "STABLE_KIND",
    "WEBHOOK",
    "WEBHOOK_KIND",
    "Event",
    "EventLog",
    "EventPayload",
    "EventType",
    "StabilityMonitor",
    "StableParams",
    "StudyStable",
    "WebhookParams",
    "deliver_webhook",
]

_WEBHOOK_TIMEOUT = 10.0

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


class EventType(StrEnum):
    """Every type of event radstack publishes (the SSE ``event:`` field and the JSON ``type``)."""

    #: A study had no change for ``RADSTACK_STABLE_SECONDS``; routing rules ran for it.
    STUDY_STABLE = "study.stable"


class EventPayload(BaseModel):
    """Base of each event type's payload (the event's ``data``); a subclass names its type."""

    model_config = ConfigDict(frozen=True)

    event_type: ClassVar[EventType]


class StudyStable(EventPayload):
    """``study.stable``: the study's change counter, its size, and the routing rules it matched."""

    event_type = EventType.STUDY_STABLE

    change_seq: int
    num_series: int
    num_instances: int
    modalities: list[str]
    rules: list[str]


#: Each event type's payload model.
PAYLOADS: dict[EventType, type[EventPayload]] = {EventType.STUDY_STABLE: StudyStable}


class StableParams(JobParams):
    """A ``study-stable`` job: the study and the change it became stable at."""

    study_uid: str = Field(max_length=64)
    change_seq: int


class WebhookParams(JobParams):
    """A ``webhook`` job: one event (as the stream shows it) to POST to one URL."""

    url: str
    event: dict[str, Any]


STABLE = declare("study-stable", StableParams)
WEBHOOK = declare("webhook", WebhookParams)
STABLE_KIND = STABLE.name
WEBHOOK_KIND = WEBHOOK.name


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: EventType
    study_uid: str | None
    data: JsonDict
    created_at: datetime

    def as_json(self) -> JsonDict:
        return {
            "id": self.id,
            "type": self.type,
            "study_uid": self.study_uid,
            "time": self.created_at.isoformat(),
            "data": self.data,
        }

    def payload(self) -> EventPayload:
        """The event's data as its type's model."""
        return PAYLOADS[self.type].model_validate(self.data)


class EventLog:
    """Publish events (a row each, then one webhook job per configured URL) and read them back."""

    def __init__(self, engine: Engine, jobs: JobQueue, webhooks: list[str]) -> None:
        self.engine = engine
        self.jobs = jobs
        self.webhooks = webhooks

    def publish(self, payload: EventPayload, *, study_uid: str | None = None) -> Event:
        """Record an event of ``payload``'s type and submit its webhook deliveries.

        Raises
        ------
        TypeError
            ``payload`` is not an instance of the payload model registered for its event type.
        """
        if PAYLOADS.get(payload.event_type) is not type(payload):
            raise TypeError(f"{type(payload).__name__} is not the payload model of {payload.event_type}")
        data = payload.model_dump(mode="json")
        now = _now()
        with self.engine.begin() as connection:
            key = connection.execute(
                insert(EventRow).values(
                    type=payload.event_type.value, study_uid=study_uid, data=json.dumps(data), created_at=now
                )
            ).inserted_primary_key
        assert key is not None
        event = Event(int(key[0]), payload.event_type, study_uid, data, now)
        for index, url in enumerate(self.webhooks):
            self.jobs.submit(
                WEBHOOK,
                WebhookParams(url=url, event=event.as_json()),
                client_token=f"event:{event.id}:{index}",
            )
        return event

    def since(self, last_id: int, *, limit: int = 100) -> list[Event]:
        columns = EventRow.__table__.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(EventRow).where(columns.id > last_id).order_by(columns.id).limit(limit)
            ).all()
        return [Event(r.id, EventType(r.type), r.study_uid, json.loads(r.data), r.created_at) for r in rows]

    def last_id(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(select(func.coalesce(func.max(EventRow.__table__.c.id), 0))).scalar_one()
            )


class StabilityMonitor:
    """Finds studies that stopped changing and submits their ``study-stable`` jobs."""

    def __init__(
        self, engine: Engine, jobs: JobQueue, *, stable_seconds: float, poll_seconds: float = 1.0
    ) -> None:
        self.engine = engine
        self.jobs = jobs
        self.stable_seconds = stable_seconds
        self.poll_seconds = poll_seconds
        self.thread = Periodic("study-stable", poll_seconds, self.check)

    def check(self) -> int:
        """Submit a job for every study stable since its last change; returns how many."""
        studies, handled = StudyRow.__table__.c, StudyWorkflowRow.__table__.c
        quiet_since = _now() - timedelta(seconds=self.stable_seconds)
        with self.engine.connect() as connection:
            due = connection.execute(
                select(studies.study_uid, studies.change_seq)
                .select_from(
                    StudyRow.__table__.outerjoin(
                        StudyWorkflowRow.__table__, handled.study_uid == studies.study_uid
                    )
                )
                .where(
                    studies.updated_at <= quiet_since,
                    studies.num_instances > 0,
                    or_(handled.stable_seq.is_(None), handled.stable_seq < studies.change_seq),
                )
                .limit(200)
            ).all()
        for study_uid, change_seq in due:
            # The job first (its token makes it unique), then the mark: a crash in between leaves a
            # queued job that the sweep runs, never a study marked stable with no job.
            self.jobs.submit(
                STABLE,
                StableParams(study_uid=study_uid, change_seq=change_seq),
                client_token=f"stable:{study_uid}:{change_seq}",
            )
            self._mark(study_uid, change_seq)
        return len(due)

    def _mark(self, study_uid: str, change_seq: int) -> None:
        handled = StudyWorkflowRow.__table__.c
        now = _now()
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(StudyWorkflowRow).values(study_uid=study_uid, stable_seq=change_seq, stable_at=now)
                )
        except IntegrityError:
            with self.engine.begin() as connection:
                connection.execute(
                    update(StudyWorkflowRow)
                    .where(and_(handled.study_uid == study_uid, handled.stable_seq < change_seq))
                    .values(stable_seq=change_seq, stable_at=now)
                )


def deliver_webhook(context: JobContext[WebhookParams]) -> JsonDict:
    """POST one event to one webhook URL (the ``webhook`` job); a 4xx answer is final, others retry."""
    url = context.params.url
    return {"url": url, "status": post_json(url, json.dumps(context.params.event).encode())}


def post_json(url: str, body: bytes) -> int:
    """POST ``body`` as JSON; raises :class:`BadRequest` for a 4xx, :class:`ProcessingFailure` otherwise.

    Raises
    ------
    BadRequest
        ``url`` is not http:// or https://, or the server answered a 4xx other than 408 and 429
        (final: the job fails at once).
    ProcessingFailure
        The server answered another error status, or could not be reached (the job retries).
    """
    if not url.startswith(("http://", "https://")):
        raise BadRequest(f"webhook URL {url!r} must be http:// or https://")
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=_WEBHOOK_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise BadRequest(f"webhook {url} refused the event: HTTP {exc.code}") from None
        raise ProcessingFailure(f"webhook {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProcessingFailure(f"webhook {url} cannot be reached: {exc}") from None
