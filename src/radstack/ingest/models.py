"""Ingest's table: one row per file of an import job, what became of it (the job's manifests).

The job itself is a :class:`radstack.jobs.models.JobRow`; its items go when it goes (``ON DELETE CASCADE``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from radstack.store.models import UID, Base

__all__ = ["ImportItemRow"]


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
