"""The store's index tables (SQLAlchemy 2) and the declarative :class:`Base` every package's tables share.

Each package declares its own tables in its own ``models.py`` on this :class:`Base` (the peers with
:mod:`radstack.dimse.models`, import items with :mod:`radstack.ingest.models`, …); the store sits below
them all, so the base lives here. The schema itself is made by the Alembic migrations, and
:data:`radstack.migrations.MODEL_MODULES` lists every ``models.py`` so that Alembic sees all the tables.

Instances are immutable rows with a version interval: a row belongs to study version ``v`` when
``version_added <= v`` and (``version_removed`` is null or ``version_removed > v``); the current
rows are those with ``version_removed`` null. Study and series rows are the current aggregate view
that QIDO searches.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["UID", "Base", "InstanceRow", "SeriesRow", "StudyRow", "StudyStatus", "StudyVersionRow"]

#: The column type of a DICOM UID (PS3.5 §9.1: at most 64 characters).
UID = String(64)


class Base(DeclarativeBase):
    """The one declarative base: every table of the index is declared on its metadata."""


class StudyStatus(StrEnum):
    """Where a study is in reading (``studies.status``); a null status means unread."""

    IN_PROGRESS = "in-progress"
    READ = "read"


class StudyRow(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    #: The UID a de-identified view shows for this one (PS3.15 Annex E), to map requests back.
    pseudo_uid: Mapped[str | None] = mapped_column(UID, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(324), index=True)
    patient_birth_date: Mapped[str | None] = mapped_column(String(16))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(16), index=True)
    study_time: Mapped[str | None] = mapped_column(String(32))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_id: Mapped[str | None] = mapped_column(String(64))
    study_description: Mapped[str | None] = mapped_column(String(256))
    referring_physician_name: Mapped[str | None] = mapped_column(String(324))
    institution_name: Mapped[str | None] = mapped_column(String(256))
    modalities: Mapped[str] = mapped_column(String(256), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0, index=True)
    #: Latest user-visible study version (ingest batch, update, delete, revert).
    version: Mapped[int] = mapped_column(Integer, default=0)
    #: Bumped by every committed change; keys the cached metadata documents.
    change_seq: Mapped[int] = mapped_column(Integer, default=0)
    attrs: Mapped[str] = mapped_column(Text, default="{}")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: Urgency an AI model gave the study (higher reads first; null: not scored). The worklist sorts on it.
    ai_priority: Mapped[int | None] = mapped_column(Integer, index=True)
    #: How many findings the study's current AI results hold (null: not scored; 0: scored, none found).
    ai_findings: Mapped[int | None] = mapped_column(Integer)
    #: Reading status (:class:`StudyStatus`); null means unread.
    status: Mapped[str | None] = mapped_column(String(16), index=True)


class SeriesRow(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    pseudo_uid: Mapped[str | None] = mapped_column(UID, index=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(256))
    body_part: Mapped[str | None] = mapped_column(String(64))
    series_date: Mapped[str | None] = mapped_column(String(16))
    series_time: Mapped[str | None] = mapped_column(String(32))
    pps_start_date: Mapped[str | None] = mapped_column(String(16))
    pps_start_time: Mapped[str | None] = mapped_column(String(32))
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    attrs: Mapped[str] = mapped_column(Text, default="{}")


class InstanceRow(Base):
    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_study_current", "study_uid", "version_removed"),
        Index("ix_instances_series_current", "series_uid", "version_removed"),
        Index("ix_instances_sop_current", "sop_uid", "version_removed"),
        # At most one current row per SOP Instance UID, even with concurrent writers.
        Index(
            "ux_instances_sop_live",
            "sop_uid",
            unique=True,
            sqlite_where=text("version_removed IS NULL"),
            postgresql_where=text("version_removed IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID)
    series_uid: Mapped[str] = mapped_column(UID)
    sop_uid: Mapped[str] = mapped_column(UID)
    pseudo_uid: Mapped[str | None] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    version_added: Mapped[int] = mapped_column(Integer)
    version_removed: Mapped[int | None] = mapped_column(Integer)
    #: Transfer syntax the instance arrived in.
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    #: Transfer syntax of the stored frame blobs (HTJ2K lossless RPCL, the lossy original, or native).
    frame_syntax: Mapped[str | None] = mapped_column(UID)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    bits_allocated: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    #: JSON: the PixelInfo needed to decode a frame without reading the header.
    pixel: Mapped[str | None] = mapped_column(Text)
    #: JSON list of frame blob keys and of CRC32s of each frame's decoded samples.
    frames: Mapped[str] = mapped_column(Text, default="[]")
    frame_crcs: Mapped[str] = mapped_column(Text, default="[]")
    #: JSON: presentation defaults for rendering (rescale, window) so a preview needs no header read.
    render: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    header_key: Mapped[str] = mapped_column(String(128))
    json_key: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StudyVersionRow(Base):
    __tablename__ = "study_versions"
    __table_args__ = (UniqueConstraint("study_uid", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
