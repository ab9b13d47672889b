"""The AI package's tables, on the one :class:`~radstack.store.models.Base` of the index.

Model registry: models, their versions, each version's artifacts, and the stage history. A version's
artifacts are blobs in the (encrypted) blob store under their SHA-256; the rows here name them. At most
one version of a model is in production, even with concurrent writers (a partial unique index, as
``ux_instances_sop_live`` does for instances). The stage history is append-only: rollback reads it to
find the production version before the current one.

Data sets: a name, its immutable versions, and each version's items.

AI results: one row per stored inference run of a model on a study, its findings (JSON), and the
radiologists' decisions on each finding. At most one result per (study, model) is current, even with
concurrent writers (a partial unique index on the rows not superseded).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from radstack.store.models import UID, Base

__all__ = [
    "AiFindingReviewRow",
    "AiResultRow",
    "DatasetItemRow",
    "DatasetRow",
    "DatasetVersionRow",
    "ModelArtifactRow",
    "ModelRow",
    "ModelStageChangeRow",
    "ModelVersionRow",
]

# ----------------------------------------------------------------------------------------------
# Model registry (radstack.ai.registry)
# ----------------------------------------------------------------------------------------------


class ModelRow(Base):
    """A model (``fracture``): a name that versions are registered under."""

    __tablename__ = "ai_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelVersionRow(Base):
    """One registered version: its approval status, stage, contract, lineage, metrics and card."""

    __tablename__ = "ai_model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_ai_model_versions_model_version"),
        # One production version per model, enforced by the database.
        Index(
            "ux_ai_model_versions_production",
            "model_id",
            unique=True,
            sqlite_where=text("stage = 'production'"),
            postgresql_where=text("stage = 'production'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("ai_models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    #: ``onnx`` or ``monai-bundle`` (:class:`radstack.ai.registry.ModelFormat`).
    format: Mapped[str] = mapped_column(String(32))
    #: ``pending``, ``approved`` or ``rejected`` (:class:`radstack.ai.registry.ApprovalStatus`).
    status: Mapped[str] = mapped_column(String(16))
    #: Null (none), ``staging``, ``production`` or ``archived`` (:class:`radstack.ai.registry.Stage`).
    stage: Mapped[str | None] = mapped_column(String(16))
    #: Who trained it (may not approve it), and who registered it.
    trained_by: Mapped[str] = mapped_column(String(256))
    registered_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reviewed_by: Mapped[str | None] = mapped_column(String(256))
    review_comment: Mapped[str | None] = mapped_column(Text)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stage_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: JSON documents: the input/output contract, lineage, evaluation metrics and model card text.
    contract: Mapped[str] = mapped_column(Text)
    lineage: Mapped[str] = mapped_column(Text)
    metrics: Mapped[str] = mapped_column(Text)
    card: Mapped[str] = mapped_column(Text)


class ModelArtifactRow(Base):
    """One file of a version (ONNX graph, weights, preprocessing spec, bundle config): a blob's name."""

    __tablename__ = "ai_model_artifacts"
    __table_args__ = (UniqueConstraint("version_id", "name", name="uq_ai_model_artifacts_version_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("ai_model_versions.id", ondelete="CASCADE"), index=True
    )
    #: :class:`radstack.ai.registry.ArtifactKind`.
    kind: Mapped[str] = mapped_column(String(32))
    #: Its path in the model (``model.onnx``, ``configs/metadata.json``).
    name: Mapped[str] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(String(128))


class ModelStageChangeRow(Base):
    """A stage change of a version (promotion, rollback, archiving); never updated or deleted."""

    __tablename__ = "ai_model_stage_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("ai_models.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("ai_model_versions.id", ondelete="CASCADE"))
    #: The production version this one displaced when it entered production: what a rollback returns to.
    previous_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("ai_model_versions.id", ondelete="SET NULL")
    )
    from_stage: Mapped[str | None] = mapped_column(String(16))
    to_stage: Mapped[str | None] = mapped_column(String(16))
    #: ``promote``, ``rollback`` or ``archive`` (the one a promotion or rollback displaced).
    reason: Mapped[str] = mapped_column(String(16))
    changed_by: Mapped[str] = mapped_column(String(256))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


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


# ----------------------------------------------------------------------------------------------
# AI results (radstack.ai.findings): what a model found in a study, and what radiologists decided.
# ----------------------------------------------------------------------------------------------


class AiResultRow(Base):
    """One inference run of a model version on a study that was stored (its SR written)."""

    __tablename__ = "ai_results"
    __table_args__ = (
        Index("ix_ai_results_study_model", "study_uid", "model"),
        Index("ix_ai_results_model_version_created", "model", "model_version", "created_at"),
        # One current (not superseded) result per study and model, even with concurrent writers.
        Index(
            "ux_ai_results_current",
            "study_uid",
            "model",
            unique=True,
            sqlite_where=text("superseded_at IS NULL"),
            postgresql_where=text("superseded_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID)
    #: The model's name in the registry and the version that ran.
    model: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[int] = mapped_column(Integer)
    #: The study-level probability (the highest of its images).
    probability: Mapped[float] = mapped_column(Float)
    #: 0–100 and its band (:class:`radstack.ai.findings.PriorityLevel`), from the operating points.
    priority: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(16))
    #: JSON list of findings (label, probability, box, image, tracking UID, level); and how many.
    findings: Mapped[str] = mapped_column(Text)
    finding_count: Mapped[int] = mapped_column(Integer)
    #: A hash of the run's inputs (images, model version, settings): a run with the same is skipped.
    input_key: Mapped[str] = mapped_column(String(64))
    #: The SR the run wrote into the study.
    sr_series_uid: Mapped[str | None] = mapped_column(UID)
    sr_sop_uid: Mapped[str | None] = mapped_column(UID)
    #: What started it: ``rule:<name>``, ``user:<subject>`` or ``job:<id>``.
    trigger: Mapped[str] = mapped_column(String(256))
    job_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: When a newer run of the same model on the same study replaced it; null while it is current.
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AiFindingReviewRow(Base):
    """A radiologist's current decision on one finding of a result (every decision is in the audit trail)."""

    __tablename__ = "ai_finding_reviews"
    __table_args__ = (
        UniqueConstraint("result_id", "finding_index", name="uq_ai_finding_reviews_result_finding"),
        Index("ix_ai_finding_reviews_reviewed_at", "reviewed_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("ai_results.id", ondelete="CASCADE"))
    #: The finding's position in its result's list.
    finding_index: Mapped[int] = mapped_column(Integer)
    #: What the finding was (copied from the result, so a label reads without it).
    tracking_uid: Mapped[str] = mapped_column(UID)
    sop_uid: Mapped[str] = mapped_column(UID)
    #: JSON ``[x0, y0, x1, y1]`` in the image's pixels.
    box: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(64))
    #: ``accepted`` or ``rejected`` (:class:`radstack.ai.findings.ReviewDecision`).
    decision: Mapped[str] = mapped_column(String(16))
    reviewed_by: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str] = mapped_column(Text)
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
