"""The AI package's tables, on the one :class:`~radstack.store.models.Base` of the index.

Other parts of the package (the model registry) declare their tables in this module too, each in a
block of its own.
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

__all__ = ["DatasetItemRow", "DatasetRow", "DatasetVersionRow"]


# ----------------------------------------------------------------------------------------------
# Data sets (radstack.ai.datasets): a name, its immutable versions, and each version's items.
# A version is never updated once written; a change of content makes a new version.
# ----------------------------------------------------------------------------------------------


class DatasetRow(Base):
    """A data set: a name that versions are made under."""

    __tablename__ = "ai_datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DatasetVersionRow(Base):
    """One immutable snapshot: its items' content hash, how it was split, and its counts."""

    __tablename__ = "ai_dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version", name="uq_ai_dataset_versions_dataset_version"),
        # The same content is one version, even with concurrent writers.
        UniqueConstraint("dataset_id", "content_hash", name="uq_ai_dataset_versions_dataset_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("ai_datasets.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    #: SHA-256 of the canonical JSON of the items (references, instance content, patient, split, label).
    content_hash: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    #: JSON ``[train, validation, test]`` fractions.
    ratios: Mapped[str] = mapped_column(Text)
    #: JSON: patients, images, positive and negative images (and by type) per split and in all.
    counts: Mapped[str] = mapped_column(Text)
    #: JSON: where the items came from (``{"kind": "folder", "path": …}`` or ``{"kind": "instances"}``).
    source: Mapped[str] = mapped_column(Text)
    item_count: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DatasetItemRow(Base):
    """One image of a version: the stored instance (pinned by content), its patient, split and label."""

    __tablename__ = "ai_dataset_items"
    __table_args__ = (
        UniqueConstraint("version_id", "position", name="uq_ai_dataset_items_version_position"),
        Index("ix_ai_dataset_items_version_split", "version_id", "split", "position"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("ai_dataset_versions.id", ondelete="CASCADE"))
    #: Order within the version (by split, patient, SOP Instance UID): the readers' order.
    position: Mapped[int] = mapped_column(Integer)
    #: ``train``, ``validation`` or ``test`` (:class:`radstack.ai.datasets.SplitValues`).
    split: Mapped[str] = mapped_column(String(16))
    study_uid: Mapped[str] = mapped_column(UID)
    series_uid: Mapped[str] = mapped_column(UID)
    sop_uid: Mapped[str] = mapped_column(UID)
    #: The stored instance's content hash: the version reads exactly these pixels, even after a replace.
    instance_hash: Mapped[str] = mapped_column(String(64))
    #: The patient as the de-identified view names them (a keyed pseudonym, never the real ID).
    patient_key: Mapped[str] = mapped_column(String(64))
    fracture: Mapped[bool] = mapped_column(Boolean)
    #: JSON: ``{"fracture": bool, "type": str | null, "boxes": [[x0, y0, x1, y1], …], …}``.
    label: Mapped[str] = mapped_column(Text)
