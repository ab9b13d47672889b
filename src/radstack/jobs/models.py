"""Job tables: one row per job (its state, attempts and progress) and one per imported file.

The queue carries only job ids; everything a restarted or second node needs to carry on lives here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from radstack.store.models import UID, Base

__all__ = ["EventRow", "ImportItemRow", "JobRow", "RoutingRuleRow", "StudyWorkflowRow"]


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
    #: A RUNNING job whose lease has run out lost its worker (a crash, a kill -9): it runs again.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When a QUEUED job may run (retries wait with exponential backoff).
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ImportItemRow(Base):
    """One file of an import job and what became of it: the success and failure manifests."""

    __tablename__ = "import_items"
    __table_args__ = (
        UniqueConstraint("job_id", "path", name="uq_import_items_job_path"),
        Index("ix_import_items_job_failed", "job_id", "failed"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    failed: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[str] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    sop_uid: Mapped[str | None] = mapped_column(UID)
    study_uid: Mapped[str | None] = mapped_column(UID)
    series_uid: Mapped[str | None] = mapped_column(UID)
    status: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)


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
    conditions: Mapped[str] = mapped_column(Text)
    actions: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
