"""A project's labels as agreement figures and exports read them: each item's reads and its consensus.

A **read** is a reader's ``read`` task that is *submitted*, with its current labels (superseded ones
and consensus labels are not part of it; none means the reader found nothing). An assigned task is
not a read yet (its labels may be half done) and a skipped one never is.

An item **has a consensus** when it was decided for good (:func:`radstack.labeling.review.consensus_labels`,
``final``): its review was submitted and no adjudication is pending, or its adjudication was
submitted. Its consensus is those labels (none: the consensus is that there is nothing). A review's
preliminary consensus, while an adjudication is open, is no consensus yet.

A label is **present** on an item (or an image) when a label of that key is there, in any geometry,
except one whose value says absence (:data:`ABSENT_VALUES`, case-insensitive): a reader who ticks
"fracture: absent" has not found one. A negative box (an AI finding the reader rejected,
:data:`radstack.labeling.proposal.NEGATIVE`) says where there is none: it is no read label at all.
"""

from __future__ import annotations

import builtins
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from radstack.labeling.models import ItemRow, LabelRow, ProjectRow, TaskRow
from radstack.labeling.projects import (
    Label,
    LabelSource,
    Member,
    ProjectService,
    TaskKind,
    TaskState,
    _label,
)
from radstack.labeling.proposal import is_negative
from radstack.labeling.review import consensus_labels
from radstack.labeling.schema import Geometry, LabelSchema
from radstack.security.policy import Principal

__all__ = ["ABSENT_VALUES", "ImageKey", "Item", "LabelLike", "ProjectLabels", "image_key", "load", "present"]

#: Class values that say a label is absent.
ABSENT_VALUES = frozenset({"absent", "no", "false", "negative", "0", "none"})

#: An image a label lies on: its SOP Instance UID and frame (1 for a single-frame image).
ImageKey = tuple[str, int]


class LabelLike(Protocol):
    """What :func:`present` reads of a label (a stored one, or one an export decided)."""

    @property
    def label(self) -> str: ...

    @property
    def geometry(self) -> Geometry: ...

    @property
    def value(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Item:
    """One study of the project's cohort."""

    id: int
    position: int
    study_uid: str


@dataclass(frozen=True, slots=True)
class ProjectLabels:
    """What agreement and exports need of a project, read in one session."""

    name: str
    schema: LabelSchema
    #: The readers, in the project's order.
    readers: tuple[str, ...]
    readers_per_item: int
    #: Every item, by position.
    items: tuple[Item, ...]
    #: Item id → reader → the current labels of their submitted read (items without reads absent).
    reads: Mapping[int, Mapping[str, tuple[Label, ...]]]
    #: Item id → its current consensus labels, for the items that have a consensus.
    consensus: Mapping[int, tuple[Label, ...]]

    def reads_of(self, item: int) -> builtins.list[tuple[str, tuple[Label, ...]]]:
        """The item's reads, ``(reader, labels)`` in the project's reader order."""
        order = {reader: i for i, reader in enumerate(self.readers)}
        found = self.reads.get(item, {})
        return sorted(found.items(), key=lambda entry: (order.get(entry[0], len(order)), entry[0]))


def image_key(label: Label) -> ImageKey:
    """The image ``label`` lies on (a single-frame image's labels name no frame: frame 1)."""
    return label.sop_uid, label.frame or 1


def present(labels: Iterable[LabelLike], key: str) -> bool:
    """Whether ``labels`` say the label ``key`` is present (see the module docstring)."""
    return any(
        label.label == key and (label.value or "").strip().lower() not in ABSENT_VALUES for label in labels
    )


def load(
    service: ProjectService, principal: Principal, name: str, *allowed: Member
) -> tuple[ProjectLabels, tuple[Member, ...]]:
    """The project's items, reads and consensus, once the caller may act as one of ``allowed``.

    Membership is checked by the one check of :class:`ProjectService` (through the policy).

    Raises
    ------
    NotFound
        No such project, or the caller has no part in it.
    Forbidden
        The caller's part is not one of ``allowed``, or their role lacks the action it needs.
    """
    with Session(service.engine) as session:
        # The package's one membership check (ProjectService's, through the policy).
        row = service._row(session, name)
        members = service._access(principal, row, *allowed)
        return _read(session, row, service.engine), members


def _read(session: Session, row: ProjectRow, engine: Engine) -> ProjectLabels:
    items = tuple(
        Item(item.id, item.position, item.study_uid)
        for item in session.scalars(
            select(ItemRow).where(ItemRow.project_id == row.id).order_by(ItemRow.position)
        )
    )
    tasks = session.execute(
        select(TaskRow.id, TaskRow.item_id, TaskRow.reader, TaskRow.kind, TaskRow.state).where(
            TaskRow.project_id == row.id
        )
    ).all()
    read_tasks = {
        task_id: (item_id, reader)
        for task_id, item_id, reader, kind, state in tasks
        if kind == TaskKind.READ.value and state == TaskState.SUBMITTED.value
    }
    reads: dict[int, dict[str, list[Label]]] = defaultdict(dict)
    for item_id, reader in read_tasks.values():
        reads[item_id][reader] = []
    labels = session.scalars(
        select(LabelRow)
        .where(
            LabelRow.task_id.in_(list(read_tasks)),
            LabelRow.superseded_at.is_(None),
            LabelRow.source != LabelSource.CONSENSUS.value,
        )
        .order_by(LabelRow.item_id, LabelRow.id)
    )
    for stored in labels:
        label = _label(stored)
        if stored.task_id is not None and not is_negative(label):
            item_id, reader = read_tasks[stored.task_id]
            reads[item_id][reader].append(label)
    consensus = {
        item_id: decided.labels
        for item_id, decided in consensus_labels(engine, row.id).items()
        if decided.final
    }
    return ProjectLabels(
        name=row.name,
        schema=LabelSchema.from_json(json.loads(row.schema)),
        readers=tuple(json.loads(row.readers)),
        readers_per_item=row.readers_per_item,
        items=items,
        reads={item: {r: tuple(ls) for r, ls in by_reader.items()} for item, by_reader in reads.items()},
        consensus=consensus,
    )
