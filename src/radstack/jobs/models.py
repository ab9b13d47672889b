"""Job tables: one row per job (its state, attempts and progress), the events workflows publish, each
study's study-stable bookkeeping and the routing rules. (An import job's per-file rows are ingest's:
:class:`radstack.ingest.models.ImportItemRow`.)

The queue carries only job ids; everything a restarted or second node needs to carry on lives here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from radstack.store.models import UID, Base

__all__ = ["EventRow", "JobRow", "RoutingRuleRow", "StudyWorkflowRow"]


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("kind", "client_token", name="uq_jobs_kind_client_token"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    params: Mapped[str] = mapped_column(Text)
    client_token: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The claim running the job (host/pid/nonce): every change the run makes is conditional on it.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    #: A RUNNING job whose lease has run out lost its worker (a crash, a kill -9): it runs again.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When a QUEUED job may run (retries wait with exponential backoff).
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EventRow(Base):
    """A published event (``study.stable``, …): read by the SSE stream and delivered to webhooks."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str | None] = mapped_column(UID)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StudyWorkflowRow(Base):
    """The study change (``change_seq``) for which ``study.stable`` was last emitted."""

    __tablename__ = "study_workflow"

    study_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    stable_seq: Mapped[int] = mapped_column(Integer)
    stable_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RoutingRuleRow(Base):
    __tablename__ = "routing_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    #: When the rule is matched (:class:`radstack.jobs.routing.RuleTrigger`).
    trigger: Mapped[str] = mapped_column(String(16), server_default="stable")
    conditions: Mapped[str] = mapped_column(Text)
    actions: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
