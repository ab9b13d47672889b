"""The labeling package's tables, on the one :class:`~radstack.store.models.Base` of the index.

A project (``labeling_projects``) holds a coded label schema, its readers and reviewers and how its
work is shared out. Its cohort is frozen when it is made: one item per study (``labeling_items``), in
the order readers get them. Each item has one ``read`` task per assigned reader (``labeling_tasks``).
What readers draw or send becomes rows of ``labeling_labels``: a new submission for a task supersedes
that task's current labels (``superseded_at`` set, ``revision`` one higher), so the history stays.
``labeling_objects`` names the DICOM objects (SR, SEG) readers stored for a project, so that reads
can be blinded to other readers' objects. ``labeling_decisions`` records what reviewers and
adjudicators decided on an item (accept, edit) and on readers' labels (reject, restore); a project's
``consensus`` column holds its consensus rules (:mod:`radstack.labeling.proposal`).

Every JSON column holds compact JSON text; :mod:`radstack.labeling.projects` is the one place that
reads and writes these rows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from radstack.store.models import UID, Base

__all__ = ["DecisionRow", "ItemRow", "LabelObjectRow", "LabelRow", "ProjectRow", "TaskRow"]

#: A subject (user name, OIDC subject) as the security package stores it.
SUBJECT = String(256)


class ProjectRow(Base):
    """A labeling project: its schema, people, assignment policy and state."""

    __tablename__ = "labeling_projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``[a-z0-9][a-z0-9._-]{0,63}``: how URLs and pages name it.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    #: JSON: the label schema (:class:`radstack.labeling.projects.LabelSchema`).
    schema: Mapped[str] = mapped_column(Text)
    #: JSON: how the cohort was chosen (``{"query": {...}}`` or ``{"studies": n}``); the items are the cohort.
    cohort: Mapped[str] = mapped_column(Text)
    #: 1–9 distinct readers read each item.
    readers_per_item: Mapped[int] = mapped_column(Integer)
    blinded: Mapped[bool] = mapped_column(Boolean)
    show_ai: Mapped[bool] = mapped_column(Boolean)
    #: ``round-robin``, ``least-loaded`` or ``uncertainty`` (:class:`radstack.labeling.projects.Assignment`).
    assignment: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    owner: Mapped[str] = mapped_column(SUBJECT)
    #: JSON lists of subjects.
    readers: Mapped[str] = mapped_column(Text)
    reviewers: Mapped[str] = mapped_column(Text)
    #: ``open`` or ``closed`` (:class:`radstack.labeling.projects.ProjectState`).
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: JSON: the consensus rules (:class:`radstack.labeling.proposal.ConsensusRules`); null: the defaults.
    consensus: Mapped[str | None] = mapped_column(Text)


class ItemRow(Base):
    """One study of a project's frozen cohort, at its position in the readers' order."""

    __tablename__ = "labeling_items"
    __table_args__ = (
        UniqueConstraint("project_id", "study_uid", name="uq_labeling_items_project_study"),
        UniqueConstraint("project_id", "position", name="uq_labeling_items_project_position"),
        # Which projects a study is in (an SR or SEG arriving in it finds its task by this).
        Index("ix_labeling_items_study", "study_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("labeling_projects.id", ondelete="CASCADE"))
    #: 0, 1, …: the order readers get the items in.
    position: Mapped[int] = mapped_column(Integer)
    study_uid: Mapped[str] = mapped_column(UID)


class TaskRow(Base):
    """One reader's work on one item: read it (or review, adjudicate), then submit or skip."""

    __tablename__ = "labeling_tasks"
    __table_args__ = (
        UniqueConstraint("item_id", "reader", "kind", name="uq_labeling_tasks_item_reader_kind"),
        Index("ix_labeling_tasks_reader_state", "reader", "state"),
        Index("ix_labeling_tasks_project_state", "project_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("labeling_projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("labeling_items.id", ondelete="CASCADE"))
    reader: Mapped[str] = mapped_column(SUBJECT)
    #: ``read``, ``review`` or ``adjudicate`` (:class:`radstack.labeling.projects.TaskKind`).
    kind: Mapped[str] = mapped_column(String(16))
    #: ``assigned``, ``submitted`` or ``skipped`` (:class:`radstack.labeling.projects.TaskState`).
    state: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The revision of the task's current labels (0 before the first submission of labels).
    revision: Mapped[int] = mapped_column(Integer)


class LabelRow(Base):
    """One label a reader gave on one image: what (a schema key), where (its geometry), and its history."""

    __tablename__ = "labeling_labels"
    __table_args__ = (
        Index("ix_labeling_labels_task_current", "task_id", "superseded_at"),
        Index("ix_labeling_labels_project_label", "project_id", "label"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("labeling_projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("labeling_items.id", ondelete="CASCADE"))
    #: The task it was given in (null for labels no reader's task made, such as a consensus).
    task_id: Mapped[int | None] = mapped_column(ForeignKey("labeling_tasks.id", ondelete="CASCADE"))
    reader: Mapped[str] = mapped_column(SUBJECT)
    #: The schema label's key.
    label: Mapped[str] = mapped_column(String(64))
    #: ``box``, ``point``, ``line``, ``mask`` or ``class`` (:class:`radstack.labeling.projects.Geometry`).
    geometry: Mapped[str] = mapped_column(String(16))
    #: JSON: ``{"box": [x0, y0, x1, y1]}``, ``{"point": [x, y]}``, ``{"line": [x0, y0, x1, y1]}``,
    #: ``{"mask": {"rows", "columns", "rle"}}`` or ``{}`` for a class; pixel-edge coordinates.
    data: Mapped[str] = mapped_column(Text)
    #: A class label's value (null for the others).
    value: Mapped[str | None] = mapped_column(String(64))
    sop_uid: Mapped[str] = mapped_column(UID)
    #: 1-based frame of a multi-frame image (null: a single-frame image).
    frame: Mapped[int | None] = mapped_column(Integer)
    laterality: Mapped[str | None] = mapped_column(String(16))
    site: Mapped[str | None] = mapped_column(String(64))
    #: ``sr``, ``seg``, ``api``, ``ai-review`` or ``consensus`` (:class:`radstack.labeling.projects.LabelSource`).
    source: Mapped[str] = mapped_column(String(16))
    #: The SR or SEG it was read from (its SOP Instance UID); null for the JSON API.
    source_uid: Mapped[str | None] = mapped_column(UID)
    #: Which submission of the task it belongs to (1, 2, …).
    revision: Mapped[int] = mapped_column(Integer)
    #: When a newer submission for the same task replaced it; null while it is current.
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LabelObjectRow(Base):
    """A DICOM object (SR, SEG) a reader stored for a project: what blinding hides from other readers."""

    __tablename__ = "labeling_objects"
    __table_args__ = (
        Index("ix_labeling_objects_project_reader", "project_id", "reader"),
        Index("ix_labeling_objects_study", "study_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_uid: Mapped[str] = mapped_column(UID)
    study_uid: Mapped[str] = mapped_column(UID)
    project_id: Mapped[int] = mapped_column(ForeignKey("labeling_projects.id", ondelete="CASCADE"))
    reader: Mapped[str] = mapped_column(SUBJECT)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DecisionRow(Base):
    """One decision of a reviewer or adjudicator: on an item (``accept``, ``edit``: its consensus) or on
    one reader's label (``reject``, ``restore``). A label is rejected while its newest decision is
    ``reject``; the label itself is never changed."""

    __tablename__ = "labeling_decisions"
    __table_args__ = (
        Index("ix_labeling_decisions_item", "item_id"),
        Index("ix_labeling_decisions_label", "label_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("labeling_projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("labeling_items.id", ondelete="CASCADE"))
    #: The review or adjudication task it was made in.
    task_id: Mapped[int] = mapped_column(ForeignKey("labeling_tasks.id", ondelete="CASCADE"))
    reviewer: Mapped[str] = mapped_column(SUBJECT)
    #: ``accept``, ``edit``, ``reject`` or ``restore`` (:class:`radstack.labeling.review.Decision`).
    decision: Mapped[str] = mapped_column(String(16))
    #: The reader's label a ``reject`` or ``restore`` is about (null for ``accept`` and ``edit``).
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labeling_labels.id", ondelete="CASCADE"))
    #: The revision of the task's consensus labels an ``accept`` or ``edit`` made.
    revision: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
