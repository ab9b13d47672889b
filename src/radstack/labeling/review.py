"""Review, consensus and adjudication of a labeling project's items, and AI reviews as labels.

**Review.** When every read task of an item is submitted or skipped, the item gets one ``review`` task
(:func:`open_review`, in the transaction that finishes the last read), given to the project's reviewer
with the fewest open tasks in open projects (ties: the order listed). A project without reviewers has
no review. The reviewer sees every reader's current labels side by side and the consensus the
project's rules propose (:mod:`radstack.labeling.proposal`), then

* **rejects** (or **restores**) readers' labels: a rejected label stays as it was, in its task's
  history, with the decision beside it, and is left out of the proposal (rejecting the outlier is how
  a reviewer settles a disagreement themselves);
* **accepts**: the proposed consensus becomes the item's consensus labels; or
* **edits**: sends the consensus labels as JSON, checked as a reader's are (the schema, the study's
  images, the coordinates).

Either decision writes the consensus labels (source ``consensus``) as the review task's labels (a new
revision each time), submits the task, and writes the consensus back into the study
(:mod:`radstack.labeling.writeback`): a TID 1500 SR in the series "Consensus <project>" and, for masks,
a SEG per image in a second series of that name. Both series' UIDs are derived from the project and the
study, and each decision makes one study version that removes what the series held and adds the new
objects: deciding again (a re-review) replaces the consensus, never adds a second one. The objects are
registered as the reviewer's label objects of the project (blinding hides them from its readers).

**Adjudication.** When the reviewer decides while the readers' (not rejected) labels disagree (a tied
class vote, a box or mask short of the quorum, agreement below the project's minimum: see
:mod:`radstack.labeling.proposal`), the item gets an ``adjudicate`` task, given to another reviewer (the
least loaded; the same one when the project has only one). The reviewer's consensus is stored as
*preliminary* meanwhile, and the review can no longer be changed. The adjudicator decides like a
reviewer (reject, restore, accept, edit; again as often as they like) and their decision is final: it
replaces the consensus and opens nothing more.

**Who may.** Membership of the project decides, through the policy
(:meth:`ProjectService._task_access <radstack.labeling.projects.ProjectService>`): a review's reviewer,
the project's other reviewers and its owner may see it; only the task's own reviewer may decide, with
``label`` on the study; a reader is told the task does not exist. Every decision (and refusal) is
audited.

**Consensus rules** are a project setting (:meth:`ReviewService.set_rules`, its owner); until set, the
defaults of :class:`~radstack.labeling.proposal.ConsensusRules`.

**An item's consensus** for other packages (exports, agreement): :func:`consensus_labels`.

**AI reviews as labels.** In a project that shows AI proposals, a radiologist's decision on an AI
finding of a cohort study (:meth:`ReviewService.ai_reviewed`, called by the platform after
:meth:`radstack.ai.findings.AiResults.review`) becomes a label of theirs on their open read task of that
study: the finding's box (source ``ai-review``) when accepted, a negative box (value
:data:`~radstack.labeling.proposal.NEGATIVE`) when rejected; deciding again replaces it.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from radstack.errors import BadRequest, Conflict, NotFound, ProcessingFailure
from radstack.ingest.pipeline import stage_file
from radstack.labeling.labels import SEG_SOP_CLASSES
from radstack.labeling.models import DecisionRow, ItemRow, LabelObjectRow, LabelRow, ProjectRow, TaskRow
from radstack.labeling.projects import (
    LABELS_MAX,
    Assignment,
    Label,
    LabelSet,
    LabelSource,
    Member,
    ProjectService,
    ProjectState,
    Task,
    TaskKind,
    TaskState,
    _label,
    assign_readers,
)
from radstack.labeling.proposal import NEGATIVE, ConsensusRules, Proposal, Read, propose
from radstack.labeling.schema import CheckedLabel, Geometry, LabelSchema
from radstack.labeling.writeback import (
    WrittenLabel,
    consensus_report,
    consensus_segmentation,
    derived_uid,
)
from radstack.security.audit import AuditActionValues, AuditEntry, audited
from radstack.security.policy import ActionValues, Principal
from radstack.store.records import BatchReason, InstanceRecord
from radstack.store.retrieve import header_dataset

__all__ = [
    "Consensus",
    "Decision",
    "DecisionRecord",
    "ItemReview",
    "ReaderRead",
    "ReviewService",
    "consensus_labels",
    "open_review",
]

JsonDict = dict[str, Any]
COMMENT_MAX = 4000
_DECIDING = (TaskKind.REVIEW.value, TaskKind.ADJUDICATE.value)


class Decision(StrEnum):
    """What a reviewer or adjudicator decided: an item's consensus, or a reader's label."""

    ACCEPT = "accept"
    EDIT = "edit"
    REJECT = "reject"
    RESTORE = "restore"


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One decision, as stored."""

    id: int
    task_id: int
    reviewer: str
    decision: Decision
    #: The reader's label a reject or restore is about.
    label_id: int | None
    #: The consensus revision an accept or edit made.
    revision: int | None
    comment: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ReaderRead:
    """One reader's read of the item: their task, its state, their current labels and which of them
    are rejected."""

    reader: str
    task_id: int
    state: TaskState
    labels: tuple[Label, ...]
    rejected: frozenset[int]

    def read(self) -> Read:
        """What the proposal counts: a submitted read's labels, less the rejected ones."""
        kept = tuple(label for label in self.labels if label.id not in self.rejected)
        return Read(self.reader, self.task_id, self.state is TaskState.SUBMITTED, kept)


@dataclass(frozen=True, slots=True)
class ItemReview:
    """What a reviewer (or adjudicator) sees of an item: the readers' labels side by side, the proposed
    consensus, the consensus decided so far, every decision, and the item's review tasks."""

    task: Task
    rules: ConsensusRules
    reads: tuple[ReaderRead, ...]
    proposal: Proposal
    #: The task's current consensus labels (none before its first decision).
    consensus: LabelSet
    decisions: tuple[DecisionRecord, ...]
    #: The item's review and adjudication tasks, oldest first.
    tasks: tuple[Task, ...]

    @property
    def adjudication(self) -> Task | None:
        return next((t for t in self.tasks if t.kind is TaskKind.ADJUDICATE), None)


@dataclass(frozen=True, slots=True)
class Consensus:
    """An item's decided consensus (:func:`consensus_labels`)."""

    item_id: int
    study_uid: str
    #: The review or adjudication task whose decision it is.
    task_id: int
    kind: TaskKind
    reviewer: str
    #: False while an adjudication of the item is pending (the review's consensus is preliminary).
    final: bool
    revision: int
    labels: tuple[Label, ...]


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _rules(project: ProjectRow) -> ConsensusRules:
    return ConsensusRules.from_json(json.loads(project.consensus) if project.consensus else None)


def _least_loaded(session: Session, people: Sequence[str]) -> str:
    """Of ``people``, the one with the fewest ``assigned`` tasks in open projects (ties: listed first)."""
    load = ProjectService._open_tasks(session, people)
    return assign_readers(1, people, 1, Assignment.LEAST_LOADED, load)[0][0]


def _new_task(session: Session, like: TaskRow, reviewer: str, kind: TaskKind, due_at: datetime | None) -> int:
    row = TaskRow(
        project_id=like.project_id,
        item_id=like.item_id,
        reader=reviewer,
        kind=kind.value,
        state=TaskState.ASSIGNED.value,
        due_at=due_at,
        assigned_at=_now(),
        submitted_at=None,
        revision=0,
    )
    session.add(row)
    session.flush()
    return row.id


# ---------------------------------------------------------------------------------------------- the hook
def open_review(session: Session, task_id: int) -> int | None:
    """Give the item of read task ``task_id`` its review task once every read task of it is submitted
    or skipped (a hook of :attr:`ProjectService.finished`, in the transaction that finished the task).

    Returns the new review task's id; None when reads are open, the item has its review already, the
    task is no read, or the project has no reviewer.
    """
    task = session.get(TaskRow, task_id)
    if task is None or task.kind != TaskKind.READ.value:
        return None
    # The item's row is the lock two readers finishing at once queue on (PostgreSQL: each then sees
    # the other's state; SQLite has one writer anyway).
    session.execute(select(ItemRow.id).where(ItemRow.id == task.item_id).with_for_update())
    states = session.scalars(
        select(TaskRow.state).where(TaskRow.item_id == task.item_id, TaskRow.kind == TaskKind.READ.value)
    ).all()
    if TaskState.ASSIGNED.value in states:
        return None
    exists = session.scalar(
        select(TaskRow.id).where(TaskRow.item_id == task.item_id, TaskRow.kind == TaskKind.REVIEW.value)
    )
    if exists is not None:
        return None
    project = session.get(ProjectRow, task.project_id)
    assert project is not None
    reviewers: list[str] = json.loads(project.reviewers)
    if not reviewers:
        return None
    return _new_task(session, task, _least_loaded(session, reviewers), TaskKind.REVIEW, project.due_at)


def _open_adjudication(session: Session, review: TaskRow) -> int:
    """The item's adjudication task, made for another reviewer than ``review``'s when there is one."""
    exists = session.scalar(
        select(TaskRow.id).where(TaskRow.item_id == review.item_id, TaskRow.kind == TaskKind.ADJUDICATE.value)
    )
    if exists is not None:
        return int(exists)
    project = session.get(ProjectRow, review.project_id)
    assert project is not None
    reviewers: list[str] = json.loads(project.reviewers)
    others = [person for person in reviewers if person != review.reader] or [review.reader]
    return _new_task(session, review, _least_loaded(session, others), TaskKind.ADJUDICATE, project.due_at)


# ---------------------------------------------------------------------------------------------- reading
def _rejected(session: Session, item_id: int) -> frozenset[int]:
    """The labels of the item whose newest reject or restore is a reject."""
    newest: dict[int, str] = {}
    query = (
        select(DecisionRow.label_id, DecisionRow.decision)
        .where(DecisionRow.item_id == item_id, DecisionRow.label_id.is_not(None))
        .order_by(DecisionRow.id)
    )
    for label_id, decision in session.execute(query):
        if label_id is not None:
            newest[label_id] = decision
    return frozenset(i for i, d in newest.items() if d == Decision.REJECT.value)


def _reads(session: Session, item_id: int) -> list[ReaderRead]:
    tasks = session.scalars(
        select(TaskRow)
        .where(TaskRow.item_id == item_id, TaskRow.kind == TaskKind.READ.value)
        .order_by(TaskRow.id)
    ).all()
    rows = session.scalars(
        select(LabelRow)
        .where(LabelRow.task_id.in_([t.id for t in tasks]), LabelRow.superseded_at.is_(None))
        .order_by(LabelRow.id)
    ).all()
    rejected = _rejected(session, item_id)
    return [
        ReaderRead(
            reader=task.reader,
            task_id=task.id,
            state=TaskState(task.state),
            labels=tuple(_label(row) for row in rows if row.task_id == task.id),
            rejected=frozenset(row.id for row in rows if row.task_id == task.id and row.id in rejected),
        )
        for task in tasks
    ]


def _decisions(session: Session, item_id: int) -> tuple[DecisionRecord, ...]:
    rows = session.scalars(
        select(DecisionRow).where(DecisionRow.item_id == item_id).order_by(DecisionRow.id)
    ).all()
    return tuple(
        DecisionRecord(
            id=row.id,
            task_id=row.task_id,
            reviewer=row.reviewer,
            decision=Decision(row.decision),
            label_id=row.label_id,
            revision=row.revision,
            comment=row.comment,
            created_at=_utc(row.created_at),
        )
        for row in rows
    )


def consensus_labels(
    engine: Engine, project_id: int, item_ids: Sequence[int] | None = None
) -> dict[int, Consensus]:
    """Each decided item's consensus labels, by item id: the adjudicator's once they decided, else the
    reviewer's (``final`` False while an adjudication is pending). Items no one has decided are absent.

    No authorisation here: the caller (an export, an agreement report) has checked who may read the
    project.
    """
    with Session(engine) as session:
        query = (
            select(TaskRow, ItemRow)
            .join(ItemRow, ItemRow.id == TaskRow.item_id)
            .where(TaskRow.project_id == project_id, TaskRow.kind.in_(_DECIDING))
            .order_by(TaskRow.id)
        )
        if item_ids is not None:
            query = query.where(TaskRow.item_id.in_(list(item_ids)))
        by_item: dict[int, dict[str, tuple[TaskRow, ItemRow]]] = {}
        for task, item in session.execute(query):
            by_item.setdefault(item.id, {})[task.kind] = (task, item)
        chosen: dict[int, tuple[TaskRow, ItemRow, bool]] = {}
        for item_id, kinds in by_item.items():
            adjudication = kinds.get(TaskKind.ADJUDICATE.value)
            review = kinds.get(TaskKind.REVIEW.value)
            if adjudication is not None and adjudication[0].state == TaskState.SUBMITTED.value:
                chosen[item_id] = (*adjudication, True)
            elif review is not None and review[0].state == TaskState.SUBMITTED.value:
                chosen[item_id] = (*review, adjudication is None)
        rows = session.scalars(
            select(LabelRow)
            .where(
                LabelRow.task_id.in_([task.id for task, _, _ in chosen.values()]),
                LabelRow.superseded_at.is_(None),
                LabelRow.source == LabelSource.CONSENSUS.value,
            )
            .order_by(LabelRow.id)
        ).all()
        return {
            item_id: Consensus(
                item_id=item_id,
                study_uid=item.study_uid,
                task_id=task.id,
                kind=TaskKind(task.kind),
                reviewer=task.reader,
                final=final,
                revision=task.revision,
                labels=tuple(_label(row) for row in rows if row.task_id == task.id),
            )
            for item_id, (task, item, final) in chosen.items()
        }


# ---------------------------------------------------------------------------------------------- service
class ReviewService:
    """Reviews and adjudications of labeling items (see the module's docstring).

    Parameters
    ----------
    projects
        The projects service: its tasks, membership checks and label rows.
    audit
        Where audit entries go.
    """

    def __init__(self, projects: ProjectService, audit: Callable[[AuditEntry], None]) -> None:
        self.projects = projects
        self.store = projects.store
        self.engine: Engine = projects.engine
        self.policy = projects.policy
        self._audit = audit

    # ------------------------------------------------------------------ rules
    def rules(self, principal: Principal, project: str) -> ConsensusRules:
        """The project's consensus rules, for one of its members.

        Raises
        ------
        NotFound, Forbidden
            As :meth:`ProjectService.get`.
        """
        with Session(self.engine) as session:
            row = self.projects._row(session, project)
            self.projects._access(principal, row)
            return _rules(row)

    def set_rules(self, principal: Principal, project: str, document: Any) -> ConsensusRules:
        """Set the project's consensus rules (its owner); they apply to every later proposal.

        Raises
        ------
        NotFound, Forbidden
            Only the project's owner (or an administrator) may.
        BadRequest
            The rules are refused, naming the field.
        Conflict
            The project is closed.
        """
        resource: JsonDict = {"labeling_project": project, "event": "consensus-rules"}
        with audited(self._audit, principal, AuditActionValues.WRITE, resource):
            with Session(self.engine) as session:
                row = self.projects._row(session, project)
                self.projects._access(principal, row, Member.OWNER)
                if row.state != ProjectState.OPEN.value:
                    raise Conflict(f"labeling project {project!r} is closed")
            rules = ConsensusRules.from_json(document)
            text = json.dumps(rules.to_json(), separators=(",", ":"))
            self.projects._write(
                lambda session: session.execute(
                    update(ProjectRow).where(ProjectRow.name == project).values(consensus=text)
                )
            )
            resource["rules"] = rules.to_json()
        return rules

    # ------------------------------------------------------------------ the review
    def review(self, principal: Principal, task_id: int) -> ItemReview:
        """The review of a review or adjudication task: the readers' labels, the proposal, the decisions.

        Raises
        ------
        NotFound
            No such task, not one the caller may see (a reader asking), or a read task.
        Forbidden
            The caller's role lacks what their part needs, or the study is outside their scope.
        """
        with Session(self.engine) as session:
            task, item, project = self.projects._load_task(session, task_id)
            self.projects._task_access(principal, task, project, act=False)
            if task.kind not in _DECIDING:
                raise NotFound(f"labeling task {task_id} is a read task; it has no review")
            self.policy.require(principal, ActionValues.READ_METADATA, item.study_uid)
            reads = _reads(session, item.id)
            rules = _rules(project)
            consensus = session.scalars(
                select(LabelRow)
                .where(LabelRow.task_id == task.id, LabelRow.superseded_at.is_(None))
                .order_by(LabelRow.id)
            ).all()
            deciding = session.execute(
                self.projects._task_query()
                .where(TaskRow.item_id == item.id, TaskRow.kind.in_(_DECIDING))
                .order_by(TaskRow.id)
            ).all()
            return ItemReview(
                task=self.projects._tasks(session, [(task, item, project)])[0],
                rules=rules,
                reads=tuple(reads),
                proposal=propose([r.read() for r in reads], rules),
                consensus=LabelSet(task.id, task.revision, tuple(_label(row) for row in consensus)),
                decisions=_decisions(session, item.id),
                tasks=tuple(self.projects._tasks(session, [(t, i, p) for t, i, p in deciding])),
            )

    def _deciding(self, principal: Principal, task_id: int) -> tuple[TaskRow, ItemRow, ProjectRow]:
        """The review or adjudication task, once its reviewer may decide on it.

        Raises
        ------
        NotFound
            Not the caller's task (as :meth:`ProjectService._acting`), or a read task.
        Forbidden
            As :meth:`ProjectService._acting`.
        Conflict
            The project is closed, or the review went to adjudication (its adjudicator decides).
        """
        task, item, project = self.projects._acting(principal, task_id)
        if task.kind not in _DECIDING:
            raise NotFound(f"labeling task {task_id} is a read task; it has no review")
        if task.kind == TaskKind.REVIEW.value:
            with Session(self.engine) as session:
                adjudication = session.scalar(
                    select(TaskRow.id).where(
                        TaskRow.item_id == item.id, TaskRow.kind == TaskKind.ADJUDICATE.value
                    )
                )
            if adjudication is not None:
                raise Conflict(
                    f"case {item.position + 1} of {project.name!r} went to adjudication (task "
                    f"{adjudication}); its adjudicator decides now"
                )
        return task, item, project

    # ------------------------------------------------------------------ reject, restore
    def reject(
        self, principal: Principal, task_id: int, label_ids: Sequence[Any], comment: str = ""
    ) -> ItemReview:
        """Reject readers' labels of the task's item: kept, marked, left out of the proposal.

        Raises
        ------
        NotFound, Forbidden, Conflict
            As :meth:`_deciding`.
        BadRequest
            No label named, more than :data:`LABELS_MAX`, an id that is not a reader's current label
            of the item, an over-long comment.
        """
        return self._mark(principal, task_id, label_ids, comment, Decision.REJECT)

    def restore(
        self, principal: Principal, task_id: int, label_ids: Sequence[Any], comment: str = ""
    ) -> ItemReview:
        """Take back the rejection of readers' labels: they count again.

        Raises
        ------
        NotFound, Forbidden, Conflict, BadRequest
            As :meth:`reject`.
        """
        return self._mark(principal, task_id, label_ids, comment, Decision.RESTORE)

    def _mark(
        self, principal: Principal, task_id: int, label_ids: Sequence[Any], comment: str, decision: Decision
    ) -> ItemReview:
        resource: JsonDict = {"labeling_task": task_id, "event": f"review-{decision.value}"}
        with audited(self._audit, principal, AuditActionValues.WRITE, resource):
            task, item, project = self._deciding(principal, task_id)
            resource.update(labeling_project=project.name, study=item.study_uid, kind=task.kind)
            _check_comment(comment)
            if not isinstance(label_ids, list | tuple) or not label_ids:
                raise BadRequest("labels must be a non-empty list of label ids")
            if len(label_ids) > LABELS_MAX:
                raise BadRequest(f"{len(label_ids)} labels at once; at most {LABELS_MAX}")
            ids: list[int] = []
            for i, value in enumerate(label_ids):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise BadRequest(f"labels[{i}] {value!r} is not a label id")
                ids.append(value)
            resource["labels"] = ids
            self.projects._write(partial(self._marked, task, item, principal.subject, ids, comment, decision))
        return self.review(principal, task_id)

    @staticmethod
    def _marked(
        task: TaskRow,
        item: ItemRow,
        reviewer: str,
        ids: list[int],
        comment: str,
        decision: Decision,
        session: Session,
    ) -> None:
        found = {
            row.id: row
            for row in session.scalars(
                select(LabelRow)
                .join(TaskRow, TaskRow.id == LabelRow.task_id)
                .where(
                    LabelRow.id.in_(ids),
                    LabelRow.item_id == item.id,
                    LabelRow.superseded_at.is_(None),
                    TaskRow.kind == TaskKind.READ.value,
                )
            )
        }
        for i, label_id in enumerate(ids):
            if label_id not in found:
                raise BadRequest(
                    f"labels[{i}] {label_id} is not a reader's current label of case {item.position + 1} "
                    f"(task {task.id})"
                )
        now = _now()
        session.add_all(
            DecisionRow(
                project_id=task.project_id,
                item_id=item.id,
                task_id=task.id,
                reviewer=reviewer,
                decision=decision.value,
                label_id=label_id,
                revision=None,
                comment=comment,
                created_at=now,
            )
            for label_id in dict.fromkeys(ids)
        )

    # ------------------------------------------------------------------ accept, edit
    def accept(self, principal: Principal, task_id: int, comment: str = "") -> ItemReview:
        """The proposed consensus becomes the item's consensus (labels, SR, SEG); a disagreement among
        the readers opens an adjudication of a review.

        Raises
        ------
        NotFound, Forbidden, Conflict
            As :meth:`_deciding`; also Conflict when every reader skipped the case (nothing to accept).
        BadRequest
            An over-long comment.
        ProcessingFailure
            The consensus could not be written into the study (nothing changed).
        """
        return self._decide(principal, task_id, Decision.ACCEPT, None, comment)

    def edit(
        self, principal: Principal, task_id: int, labels: Sequence[Any], comment: str = ""
    ) -> ItemReview:
        """``labels`` (JSON labels, checked as a reader's) become the item's consensus; a disagreement
        among the readers opens an adjudication of a review.

        Raises
        ------
        NotFound, Forbidden, Conflict
            As :meth:`_deciding`.
        BadRequest
            A label refused (as :meth:`ProjectService.submit_labels` refuses it), more than
            :data:`LABELS_MAX`, an over-long comment.
        ProcessingFailure
            The consensus could not be written into the study (nothing changed).
        """
        return self._decide(principal, task_id, Decision.EDIT, labels, comment)

    def _decide(
        self,
        principal: Principal,
        task_id: int,
        decision: Decision,
        labels: Sequence[Any] | None,
        comment: str,
    ) -> ItemReview:
        resource: JsonDict = {"labeling_task": task_id, "event": f"review-{decision.value}"}
        with audited(self._audit, principal, AuditActionValues.WRITE, resource):
            task, item, project = self._deciding(principal, task_id)
            resource.update(labeling_project=project.name, study=item.study_uid, kind=task.kind)
            _check_comment(comment)
            schema = LabelSchema.from_json(json.loads(project.schema))
            with Session(self.engine) as session:
                reads = _reads(session, item.id)
            proposal = propose([r.read() for r in reads], _rules(project))
            if labels is None:
                if not proposal.voters:
                    raise Conflict(
                        f"every reader skipped case {item.position + 1} of {project.name!r}: there is no "
                        "consensus to accept; send the labels yourself (edit)"
                    )
                checked = [_checked(schema, i, p) for i, p in enumerate(proposal.labels)]
            else:
                if not isinstance(labels, list | tuple):
                    raise BadRequest("labels must be a list of label objects")
                if len(labels) > LABELS_MAX:
                    raise BadRequest(f"{len(labels)} labels in one decision; at most {LABELS_MAX}")
                checked = self.projects.check_labels(schema, item.study_uid, labels, task_id)
            adjudicate = task.kind == TaskKind.REVIEW.value and proposal.needs_adjudication
            sr_uid, seg_uids, objects = self._write_back(
                project, item, task.reader, schema, checked, not adjudicate
            )
            result, adjudication = self.projects._write(
                partial(
                    self._decided,
                    task,
                    principal.subject,
                    decision,
                    checked,
                    sr_uid,
                    seg_uids,
                    objects,
                    comment,
                    adjudicate,
                )
            )
            resource.update(
                labels=len(result.labels),
                revision=result.revision,
                sr=sr_uid,
                disagreements=len(proposal.disagreements),
            )
            if adjudication is not None:
                resource["adjudication_task"] = adjudication
        return self.review(principal, task_id)

    @staticmethod
    def _decided(
        task: TaskRow,
        reviewer: str,
        decision: Decision,
        checked: Sequence[CheckedLabel],
        sr_uid: str,
        seg_uids: dict[str, str],
        objects: Sequence[tuple[str, str, str]],
        comment: str,
        adjudicate: bool,
        session: Session,
    ) -> tuple[LabelSet, int | None]:
        # Reopened for the labels (a re-review), submitted again with them, in one transaction.
        session.execute(update(TaskRow).where(TaskRow.id == task.id).values(state=TaskState.ASSIGNED.value))
        result = ProjectService._replace_labels(
            task.id, reviewer, checked, LabelSource.CONSENSUS, sr_uid, session
        )
        for row in session.scalars(
            select(LabelRow).where(
                LabelRow.task_id == task.id,
                LabelRow.superseded_at.is_(None),
                LabelRow.geometry == Geometry.MASK.value,
            )
        ):
            row.source_uid = seg_uids.get(row.sop_uid, row.source_uid)
        now = _now()
        session.execute(
            update(TaskRow)
            .where(TaskRow.id == task.id)
            .values(state=TaskState.SUBMITTED.value, submitted_at=now)
        )
        session.add(
            DecisionRow(
                project_id=task.project_id,
                item_id=task.item_id,
                task_id=task.id,
                reviewer=reviewer,
                decision=decision.value,
                label_id=None,
                revision=result.revision,
                comment=comment,
                created_at=now,
            )
        )
        session.add_all(
            LabelObjectRow(
                sop_uid=sop_uid,
                series_uid=series_uid,
                study_uid=study_uid,
                project_id=task.project_id,
                reader=reviewer,
                created_at=now,
            )
            for sop_uid, series_uid, study_uid in objects
        )
        adjudication = _open_adjudication(session, task) if adjudicate else None
        session.flush()
        return result, adjudication

    # ------------------------------------------------------------------ DICOM
    def _write_back(
        self,
        project: ProjectRow,
        item: ItemRow,
        reviewer: str,
        schema: LabelSchema,
        checked: Sequence[CheckedLabel],
        final: bool,
    ) -> tuple[str, dict[str, str], list[tuple[str, str, str]]]:
        """Store the consensus in the study: the SR and the SEGs replace what the consensus series held,
        in one study version. Returns the SR's UID, each image's SEG UID and every stored object's
        (SOP Instance UID, series, study).

        Raises
        ------
        BadRequest
            A label lies on an instance that is no image of the study.
        Conflict
            The study holds no image.
        ProcessingFailure
            An object could not be staged (nothing changed).
        """
        study_uid = item.study_uid
        origin = (project.name, _utc(project.created_at).isoformat(), study_uid)
        sr_series, seg_series = derived_uid(*origin, "consensus-sr"), derived_uid(*origin, "consensus-seg")
        records = self.store.current_instances(study_uid)
        images = [
            r
            for r in records
            if r.pixel is not None
            and r.sop_class_uid not in SEG_SOP_CLASSES
            and r.series_uid not in (sr_series, seg_series)
        ]
        if not images:
            raise Conflict(f"study {study_uid} holds no image to write its consensus about")
        headers = {r.sop_uid: header_dataset(self.store, r) for r in images}
        for c in checked:
            if c.sop_uid not in headers:
                raise BadRequest(
                    f"labels[{c.index}].sop_uid {c.sop_uid} is not an image of study {study_uid}"
                )
        written = [WrittenLabel(c.label, c.geometry, c.data, c.value, c.sop_uid, c.frame) for c in checked]
        seed = uuid.uuid4().hex
        sr_uid = derived_uid(sr_series, seed)
        documents: list[tuple[Dataset, str]] = [
            (
                consensus_report(
                    list(headers.values()),
                    written,
                    schema,
                    project=project.name,
                    reviewer=reviewer,
                    series_uid=sr_series,
                    sop_uid=sr_uid,
                    final=final,
                ),
                sr_series,
            )
        ]
        seg_uids: dict[str, str] = {}
        masked = dict.fromkeys(w.sop_uid for w in written if w.geometry is Geometry.MASK)
        for number, sop_uid in enumerate(masked, 1):
            seg_uids[sop_uid] = derived_uid(seg_series, seed, sop_uid)
            segmentation = consensus_segmentation(
                headers[sop_uid],
                written,
                project=project.name,
                reviewer=reviewer,
                series_uid=seg_series,
                sop_uid=seg_uids[sop_uid],
                instance_number=number,
            )
            documents.append((segmentation, seg_series))
        staged = [self._stage(document, study_uid) for document, _ in documents]
        remove = [r for r in records if r.series_uid in (sr_series, seg_series)]
        with self.store.batch(BatchReason.LABELING, f"consensus {project.name}") as batch:
            self.store.replace_instances(study_uid, batch, remove=remove, add=staged)
        objects = [(str(document.SOPInstanceUID), series, study_uid) for document, series in documents]
        return sr_uid, seg_uids, objects

    def _stage(self, document: Dataset, study_uid: str) -> InstanceRecord:
        """Write ``document``'s blobs (the ingest pipeline's checks and encoding): its record to commit.

        Raises
        ------
        ProcessingFailure
            The ingest pipeline refused it.
        """
        buffer = io.BytesIO()
        document.save_as(buffer, enforce_file_format=True)
        staged, record = stage_file(self.store.blobs, buffer.getvalue(), study_uid, True)
        if record is None:
            reason = staged.error.message if staged.error else "unknown error"
            raise ProcessingFailure(f"the consensus {document.Modality} could not be stored: {reason}")
        return record

    # ------------------------------------------------------------------ AI reviews as labels
    def ai_reviewed(
        self,
        principal: Principal,
        *,
        study_uid: str,
        sop_uid: str,
        label: str,
        box: Sequence[float],
        accepted: bool,
        finding_uid: str,
    ) -> list[LabelSet]:
        """An AI finding the caller accepted or rejected, as their label in every open project that
        shows AI proposals, has the study in its cohort, has the label (as a box) in its schema and in
        which the caller has an open read task of the study: the finding's box (source ``ai-review``,
        ``source_uid`` the finding's Tracking Unique Identifier) when accepted, the same box with the
        value :data:`~radstack.labeling.proposal.NEGATIVE` when rejected. It joins the task's current
        labels as a new revision, replacing the label an earlier decision on the same finding gave.

        Returns the new label sets (none when no task takes it). The caller has checked that
        ``principal`` may label the study (the AI review's own check).
        """
        query = (
            self.projects._task_query()
            .where(
                ItemRow.study_uid == study_uid,
                TaskRow.reader == principal.subject,
                TaskRow.kind == TaskKind.READ.value,
                TaskRow.state == TaskState.ASSIGNED.value,
                ProjectRow.show_ai.is_(True),
                ProjectRow.state == ProjectState.OPEN.value,
            )
            .order_by(TaskRow.id)
        )
        with Session(self.engine) as session:
            found = session.execute(query).all()
        x0, y0, x1, y1 = (float(v) for v in box)
        results: list[LabelSet] = []
        for task, _item, project in found:
            definition = LabelSchema.from_json(json.loads(project.schema)).find(label)
            if definition is None or Geometry.BOX not in definition.geometry:
                continue
            resource: JsonDict = {
                "labeling_task": task.id,
                "labeling_project": project.name,
                "study": study_uid,
                "event": "labels",
                "source": LabelSource.AI_REVIEW.value,
                "finding": finding_uid,
                "decision": "accepted" if accepted else "rejected",
            }
            with audited(self._audit, principal, AuditActionValues.WRITE, resource):
                checked = CheckedLabel(
                    index=0,
                    label=definition,
                    geometry=Geometry.BOX,
                    data={"box": [x0, y0, x1, y1]},
                    sop_uid=sop_uid,
                    frame=None,
                    laterality=None,
                    site=None,
                    value=None if accepted else NEGATIVE,
                )
                try:
                    # The label an earlier decision on the same finding gave is replaced.
                    result = self.projects._write(
                        partial(
                            ProjectService._replace_labels,
                            task.id,
                            task.reader,
                            [checked],
                            LabelSource.AI_REVIEW,
                            finding_uid,
                            keep=lambda row: (
                                not (
                                    row.source == LabelSource.AI_REVIEW.value
                                    and row.source_uid == finding_uid
                                )
                            ),
                        )
                    )
                except Conflict:  # the task was submitted or its project closed meanwhile
                    continue
                resource["revision"] = result.revision
                results.append(result)
        return results


# ---------------------------------------------------------------------------------------------- helpers
def _check_comment(comment: Any) -> None:
    """Refuse a comment that is not text of at most :data:`COMMENT_MAX` characters.

    Raises
    ------
    BadRequest
        Otherwise.
    """
    if not isinstance(comment, str) or len(comment) > COMMENT_MAX:
        raise BadRequest(f"the comment must be text of at most {COMMENT_MAX} characters")


def _checked(schema: LabelSchema, index: int, proposed: Any) -> CheckedLabel:
    """A proposed consensus label as the label rows take it (it was checked when its readers gave it).

    Raises
    ------
    BadRequest
        Its label is not in the schema (the schema of a project never changes, so this is a defect).
    """
    definition = schema.find(proposed.label)
    if definition is None:
        raise BadRequest(f"consensus label {proposed.label!r} is not a label of this project")
    return CheckedLabel(
        index=index,
        label=definition,
        geometry=proposed.geometry,
        data=proposed.data,
        sop_uid=proposed.sop_uid,
        frame=proposed.frame,
        laterality=proposed.laterality,
        site=proposed.site,
        value=proposed.value,
    )
