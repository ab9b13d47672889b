"""Labeling projects: a coded label schema, a frozen cohort, readers and their tasks, labels as JSON.

A project is made by someone who may manage data sets (:meth:`ProjectService.create`), who becomes its
*owner*. It holds

* a **label schema** (:class:`LabelSchema`): each label a key, a code (value, scheme, meaning: SNOMED CT,
  RadLex, …), the geometries a reader may give it (box, point, line, mask, image-level class), and
  whether it takes a laterality and a site;
* a **cohort**, frozen when the project is made: a QIDO-style query (as ``GET /dicomweb/studies``
  takes it) or a list of Study Instance UIDs, each study one *item*, in the order readers get them;
* its **readers** (each item is read by ``readers_per_item`` of them, 1 to 9) and **reviewers**;
* an **assignment policy** (:class:`Assignment`) that decides which readers read which item:

  - ``round-robin``: readers in turn, in the order they are listed, continuing from item to item;
  - ``least-loaded``: for each item, the readers with the fewest open (``assigned``) tasks in every
    open project, counting those this project has given them so far (ties: the order listed);
  - ``uncertainty``: the items are ordered so that the studies an AI model was least sure of come
    first (``studies.ai_priority`` nearest 50, the boundary of the *suspicious* band, see
    :func:`radstack.ai.findings.priority_of`; studies no model scored last, in cohort order), then
    readers are chosen as ``least-loaded`` does. With ``next_task`` following the item order, the
    readers label the most informative studies first (active learning).

All of it (project, items, tasks) is written in one transaction. Each task is one reader's ``read``
of one item: ``assigned``, then ``submitted`` or ``skipped``.

**Who may do what** is decided in one place (:meth:`ProjectService._access`): a caller's *membership*
of the project (owner, reviewer, reader; an administrator, who may ``manage-system``, counts as owner)
and the action its role needs for that membership, checked by :meth:`Policy.require`
(``manage-datasets`` for the owner, ``label`` for readers and reviewers). Someone who is not a member
is told the project (or task) does not exist. A reader sees and acts only on their own tasks; a
reviewer sees every task and label of the project; the owner manages it (and sees everything).

**Labels** sent as JSON (:meth:`ProjectService.submit_labels`) are checked against the schema and the
task's study (:mod:`radstack.labeling.schema`): the label must be in the schema (by key or code
meaning, case-insensitive), its geometry allowed for it, its image an image of the task's study and
its coordinates inside that image. Each submission replaces the task's current labels: those are kept
with ``superseded_at`` set, and the new ones carry the next revision.

Creating, closing, submitting, skipping and every submission of labels are audited, refusals too.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.orm import Session

from radstack.dicom.uids import check_uid
from radstack.errors import BadRequest, Conflict, Forbidden, NotFound
from radstack.labeling.models import ItemRow, LabelRow, ProjectRow, TaskRow
from radstack.labeling.schema import (
    CheckedLabel,
    Geometry,
    ImageSize,
    LabelSchema,
    check_flag,
    check_label,
    check_name,
    check_on_image,
    check_text,
    choices,
)
from radstack.security.audit import AuditActionValues, AuditEntry, audited
from radstack.security.policy import ActionValues, Policy, Principal
from radstack.store.index import write_transaction
from radstack.store.matching import QueryLevelValues, parse_query
from radstack.store.models import InstanceRow, StudyRow
from radstack.store.search import search_studies
from radstack.store.studies import StudyStore

__all__ = [
    "COHORT_MAX",
    "VIEWER_TASK_PREFIX",
    "Assignment",
    "Label",
    "LabelSet",
    "LabelSource",
    "Member",
    "Progress",
    "Project",
    "ProjectService",
    "ProjectState",
    "Task",
    "TaskKind",
    "TaskState",
    "assign_readers",
    "check_project_name",
    "members_of",
    "uncertainty_order",
]

#: The most studies one cohort may hold.
COHORT_MAX = 100_000
#: A task's viewer URL names the task as OHIF's ``customization`` parameter, ``/task/<id>``: OHIF
#: fetches it (``radstack.web.viewer``) and offers the project's labels on every measurement.
VIEWER_TASK_PREFIX = "/task/"
#: The most readers (or reviewers) of one project, and labels in one submission.
PEOPLE_MAX = 100
LABELS_MAX = 1000
DESCRIPTION_MAX = 4000
#: Readers per item: 1 to 9.
READERS_PER_ITEM_MAX = 9
#: The priority at the boundary of the suspicious band (``store.worklist.HIGH_PRIORITY``).
UNCERTAIN_PRIORITY = 50
_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)
JsonDict = dict[str, Any]


class Assignment(StrEnum):
    """How a project's items are shared among its readers (see the module's docstring)."""

    ROUND_ROBIN = "round-robin"
    LEAST_LOADED = "least-loaded"
    UNCERTAINTY = "uncertainty"


class ProjectState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class TaskKind(StrEnum):
    READ = "read"
    REVIEW = "review"
    ADJUDICATE = "adjudicate"


class TaskState(StrEnum):
    ASSIGNED = "assigned"
    SUBMITTED = "submitted"
    SKIPPED = "skipped"


class LabelSource(StrEnum):
    """Where a label came from: a reader's SR or SEG, the JSON API, an AI finding's review, a consensus."""

    SR = "sr"
    SEG = "seg"
    API = "api"
    AI_REVIEW = "ai-review"
    CONSENSUS = "consensus"


class Member(StrEnum):
    """A caller's part in a project."""

    OWNER = "owner"
    REVIEWER = "reviewer"
    READER = "reader"


#: The columns a label keeps when it is carried into its task's next revision (its source and time too).
_CARRIED = (
    "project_id",
    "item_id",
    "task_id",
    "reader",
    "label",
    "geometry",
    "data",
    "value",
    "sop_uid",
    "frame",
    "laterality",
    "site",
    "source",
    "source_uid",
    "created_at",
)

#: The action each membership needs of the caller's role.
_MEMBER_ACTION = {
    Member.OWNER: ActionValues.MANAGE_DATASETS,
    Member.REVIEWER: ActionValues.LABEL,
    Member.READER: ActionValues.LABEL,
}


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return _utc(value) if value is not None else None


def _dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------- schema
# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Progress:
    """How far a project is: its items, and its read tasks by state (every state present); reviews
    and adjudications are not counted (:mod:`radstack.labeling.review` lists them)."""

    items: int
    tasks: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.tasks.values())

    @property
    def done(self) -> int:
        """Tasks no longer waiting for a reader (submitted or skipped)."""
        return self.total - self.tasks.get(TaskState.ASSIGNED.value, 0)


def _no_tasks() -> dict[str, int]:
    return {state.value: 0 for state in TaskState}


@dataclass(frozen=True, slots=True)
class Project:
    """A labeling project as one caller sees it (``member``: their parts in it; ``mine``: their tasks)."""

    id: int
    name: str
    description: str
    schema: LabelSchema
    #: How the cohort was chosen: ``{"kind": "query", "query": {...}}`` or ``{"kind": "list"}``.
    cohort: JsonDict
    readers_per_item: int
    blinded: bool
    show_ai: bool
    assignment: Assignment
    due_at: datetime | None
    owner: str
    readers: tuple[str, ...]
    reviewers: tuple[str, ...]
    state: ProjectState
    created_at: datetime
    closed_at: datetime | None
    progress: Progress
    member: tuple[Member, ...] = ()
    mine: dict[str, int] = field(default_factory=_no_tasks)


@dataclass(frozen=True, slots=True)
class Task:
    """One reader's task on one item of a project."""

    id: int
    project: str
    project_id: int
    item_id: int
    #: The item's place in the project's order (0, 1, …).
    position: int
    study_uid: str
    #: The study's one image, when it has exactly one (the viewer opens on it); else None.
    sop_uid: str | None
    reader: str
    kind: TaskKind
    state: TaskState
    due_at: datetime | None
    assigned_at: datetime
    submitted_at: datetime | None
    #: The revision of its current labels (0: none submitted yet).
    revision: int

    @property
    def viewer_url(self) -> str:
        """Where OHIF opens the task's study (on its image, when it has one), with the project's labels."""
        params = {"StudyInstanceUIDs": self.study_uid}
        if self.sop_uid is not None:
            params["initialSOPInstanceUID"] = self.sop_uid
        params["customization"] = f"{VIEWER_TASK_PREFIX}{self.id}"
        return "/viewer/viewer?" + urlencode(params, safe="/")

    def shown(self, uid: Callable[[str], str]) -> Task:
        """This task with its UIDs as ``uid`` maps them (a de-identified view's pseudonyms)."""
        return replace(
            self, study_uid=uid(self.study_uid), sop_uid=uid(self.sop_uid) if self.sop_uid else None
        )


@dataclass(frozen=True, slots=True)
class Label:
    """One stored label."""

    id: int
    task_id: int | None
    reader: str
    label: str
    geometry: Geometry
    data: JsonDict
    value: str | None
    sop_uid: str
    frame: int | None
    laterality: str | None
    site: str | None
    source: LabelSource
    source_uid: str | None
    revision: int
    created_at: datetime
    superseded_at: datetime | None

    @property
    def current(self) -> bool:
        return self.superseded_at is None

    def shown(self, uid: Callable[[str], str]) -> Label:
        """This label with its UIDs as ``uid`` maps them (a de-identified view's pseudonyms)."""
        return replace(
            self, sop_uid=uid(self.sop_uid), source_uid=uid(self.source_uid) if self.source_uid else None
        )


@dataclass(frozen=True, slots=True)
class LabelSet:
    """A task's labels: the current ones (or, asked for, every revision), and the current revision."""

    task_id: int
    revision: int
    labels: tuple[Label, ...]


def _project(
    row: ProjectRow, progress: Progress, member: tuple[Member, ...], mine: dict[str, int]
) -> Project:
    return Project(
        id=row.id,
        name=row.name,
        description=row.description,
        schema=LabelSchema.from_json(json.loads(row.schema)),
        cohort=json.loads(row.cohort),
        readers_per_item=row.readers_per_item,
        blinded=row.blinded,
        show_ai=row.show_ai,
        assignment=Assignment(row.assignment),
        due_at=_opt_utc(row.due_at),
        owner=row.owner,
        readers=tuple(json.loads(row.readers)),
        reviewers=tuple(json.loads(row.reviewers)),
        state=ProjectState(row.state),
        created_at=_utc(row.created_at),
        closed_at=_opt_utc(row.closed_at),
        progress=progress,
        member=member,
        mine=mine,
    )


def _label(row: LabelRow) -> Label:
    return Label(
        id=row.id,
        task_id=row.task_id,
        reader=row.reader,
        label=row.label,
        geometry=Geometry(row.geometry),
        data=json.loads(row.data),
        value=row.value,
        sop_uid=row.sop_uid,
        frame=row.frame,
        laterality=row.laterality,
        site=row.site,
        source=LabelSource(row.source),
        source_uid=row.source_uid,
        revision=row.revision,
        created_at=_utc(row.created_at),
        superseded_at=_opt_utc(row.superseded_at),
    )


def members_of(
    policy: Policy, principal: Principal, owner: str, readers: str, reviewers: str
) -> tuple[Member, ...]:
    """The principal's parts in a project of ``owner`` and the JSON lists ``readers`` and
    ``reviewers`` (as its row holds them); an administrator (``manage-system``) counts as its owner."""
    found = []
    if owner == principal.subject or policy.allows(principal, ActionValues.MANAGE_SYSTEM):
        found.append(Member.OWNER)
    if principal.subject in json.loads(reviewers):
        found.append(Member.REVIEWER)
    if principal.subject in json.loads(readers):
        found.append(Member.READER)
    return tuple(found)


# ---------------------------------------------------------------------------------------------- checks
def check_project_name(name: Any) -> str:
    """``name`` itself when it is a valid project name.

    Raises
    ------
    BadRequest
        ``name`` is not 1 to 64 lowercase letters, digits, '.', '_' or '-' starting with a letter or digit.
    """
    return check_name(name, "project name")


def _people(values: Any, what: str, *, required: bool) -> tuple[str, ...]:
    if not isinstance(values, list | tuple):
        raise BadRequest(f"{what} must be a list of user names")
    if required and not values:
        raise BadRequest(f"{what} is empty: a project needs at least one reader")
    if len(values) > PEOPLE_MAX:
        raise BadRequest(f"{what} lists {len(values)} people; at most {PEOPLE_MAX}")
    people: list[str] = []
    for i, value in enumerate(values):
        name = check_text(value, f"{what}[{i}]", 256)
        if name in people:
            raise BadRequest(f"{what} lists {name!r} twice")
        people.append(name)
    return tuple(people)


def _choice(enum: type[_E], value: Any, what: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        raise BadRequest(f"{what} {value!r} is not one of {choices(enum)}") from None


def _read_only(task: TaskRow, done: str) -> None:
    """Refuse a review or adjudication task where only a read task may be ``done`` (its decisions go
    through :class:`radstack.labeling.review.ReviewService`).

    Raises
    ------
    Conflict
        ``task`` is not a read task.
    """
    if task.kind != TaskKind.READ.value:
        raise Conflict(
            f"labeling task {task.id} is a {task.kind} task: it is decided by accepting, editing or "
            f"rejecting labels (/api/v1/labeling/tasks/{task.id}/review), not {done} as a read task"
        )


# ---------------------------------------------------------------------------------------------- assignment
def uncertainty_order(studies: Sequence[str], priorities: Mapping[str, int | None]) -> list[str]:
    """``studies`` with those whose AI priority is nearest 50 (the *suspicious* band's boundary) first,
    then studies no model scored; ties keep the cohort's order."""
    position = {uid: i for i, uid in enumerate(studies)}

    def key(uid: str) -> tuple[int, int, int]:
        priority = priorities.get(uid)
        if priority is None:
            return (1, 0, position[uid])
        return (0, abs(priority - UNCERTAIN_PRIORITY), position[uid])

    return sorted(studies, key=key)


def assign_readers(
    items: int,
    readers: Sequence[str],
    per_item: int,
    policy: Assignment,
    open_tasks: Mapping[str, int] | None = None,
) -> list[tuple[str, ...]]:
    """The readers of each of ``items`` items, ``per_item`` distinct ones each.

    ``round-robin`` takes the readers in turn, continuing from one item to the next; ``least-loaded``
    (and ``uncertainty``, whose order the caller has already applied) takes, for each item, the
    readers with the fewest open tasks (``open_tasks``, plus those given so far), ties by their order
    in ``readers``.
    """
    if policy is Assignment.ROUND_ROBIN:
        n = len(readers)
        return [tuple(readers[(i * per_item + j) % n] for j in range(per_item)) for i in range(items)]
    load = {reader: (open_tasks or {}).get(reader, 0) for reader in readers}
    order = {reader: i for i, reader in enumerate(readers)}
    chosen: list[tuple[str, ...]] = []
    for _ in range(items):
        picks = tuple(sorted(readers, key=lambda r: (load[r], order[r]))[:per_item])
        for reader in picks:
            load[reader] += 1
        chosen.append(picks)
    return chosen


# ---------------------------------------------------------------------------------------------- service
class ProjectService:
    """Labeling projects, their tasks and the labels readers send: the one place their rows are written.

    Parameters
    ----------
    store
        The study store: the cohort's studies and the tasks' images are looked up in its index, where
        the labeling tables are too.
    policy
        Authorisation: each call names its principal (see the module's docstring).
    audit
        Where audit entries go (:meth:`radstack.security.audit.AuditWriter.submit`).
    """

    def __init__(self, store: StudyStore, policy: Policy, audit: Callable[[AuditEntry], None]) -> None:
        self.store = store
        self.engine: Engine = store.engine
        self.policy = policy
        self._audit = audit
        #: Called with the session and the task's id in the transaction that submits or skips a read
        #: task (:func:`radstack.labeling.review.open_review` opens the item's review).
        self.finished: builtins.list[Callable[[Session, int], object]] = []

    def _write(self, work: Callable[[Session], _T]) -> _T:
        """Run ``work`` in one write transaction (:func:`radstack.store.index.write_transaction`)."""
        return write_transaction(self.engine, work)

    # ------------------------------------------------------------------ membership: the one check
    def _members(self, principal: Principal, row: ProjectRow) -> tuple[Member, ...]:
        return members_of(self.policy, principal, row.owner, row.readers, row.reviewers)

    def _access(self, principal: Principal, row: ProjectRow, *allowed: Member) -> tuple[Member, ...]:
        """The caller's parts in the project, once allowed as one of ``allowed`` (all, when none named).

        The part must be one of ``allowed`` and the caller's role must have the action that part
        needs (``manage-datasets`` for the owner, ``label`` for readers and reviewers), checked by
        the policy.

        Raises
        ------
        NotFound
            The caller has no part in the project (its existence is not revealed).
        Forbidden
            The caller's part is not one of ``allowed``, or their role lacks the action it needs.
        """
        members = self._members(principal, row)
        if not members:
            raise NotFound(f"labeling project {row.name!r} not found")
        wanted = allowed or tuple(Member)
        usable = [m for m in members if m in wanted]
        if not usable:
            raise Forbidden(
                f"only the {' or '.join(m.value for m in wanted)} of labeling project {row.name!r} may do "
                f"this; you are its {' and '.join(m.value for m in members)}"
            )
        if not any(self.policy.allows(principal, _MEMBER_ACTION[m]) for m in usable):
            self.policy.require(principal, _MEMBER_ACTION[usable[0]])
        return members

    def _task_access(
        self, principal: Principal, task: TaskRow, project: ProjectRow, *, act: bool
    ) -> tuple[Member, ...]:
        """The caller's parts in the task's project, once they may see the task (its reader, a reviewer,
        the owner) or, with ``act``, act on it (its reader only).

        Raises
        ------
        NotFound
            The caller may not see the task (another reader's task: not revealed).
        Forbidden
            ``act`` and the caller sees the task but is not its reader; or as :meth:`_access`.
        """
        mine = task.reader == principal.subject
        if mine:
            return self._access(principal, project, Member.READER, Member.REVIEWER, Member.OWNER)
        members = self._members(principal, project)
        if not (set(members) & {Member.OWNER, Member.REVIEWER}):
            raise NotFound(f"labeling task {task.id} not found")
        members = self._access(principal, project, Member.REVIEWER, Member.OWNER)
        if act:
            raise Forbidden(f"labeling task {task.id} is {task.reader}'s; only its reader may act on it")
        return members

    # ------------------------------------------------------------------ projects
    def create(
        self,
        principal: Principal,
        name: str,
        *,
        schema: LabelSchema | Mapping[str, Any],
        cohort: Mapping[str, Any] | Sequence[str],
        readers: Sequence[str],
        reviewers: Sequence[str] = (),
        description: str = "",
        readers_per_item: int = 1,
        blinded: bool = True,
        show_ai: bool = False,
        assignment: Assignment | str = Assignment.ROUND_ROBIN,
        due_at: datetime | None = None,
    ) -> Project:
        """Make a project, freeze its cohort into items and assign every item's readers, in one transaction.

        Parameters
        ----------
        principal
            Its owner (needs ``manage-datasets``; the cohort is searched within their study scope).
        schema
            The label schema (:meth:`LabelSchema.from_json` of a JSON document).
        cohort
            A QIDO-style query (attribute → value or list of values, as ``GET /studies`` takes them;
            ``limit`` caps it) or a list of Study Instance UIDs, in the order the items take.
        readers, reviewers
            User names (subjects); a reviewer may not also be a reader (a reviewer sees every label).
        readers_per_item
            1 to 9, and no more than there are readers.
        assignment
            ``round-robin``, ``least-loaded`` or ``uncertainty``.
        due_at
            When the tasks are due (None: no date); not in the past.

        Raises
        ------
        Forbidden
            ``principal`` may not manage data sets.
        BadRequest
            A bad name, description, schema, list of people, readers per item, assignment or due
            date; an empty cohort; a cohort with studies that are not stored (or outside the owner's
            scope); a malformed query.
        Conflict
            A project of that name exists.
        """
        resource: JsonDict = {"labeling_project": name, "event": "create"}
        with audited(self._audit, principal, AuditActionValues.WRITE, resource):
            self.policy.require(principal, ActionValues.MANAGE_DATASETS)
            check_project_name(name)
            parsed = schema if isinstance(schema, LabelSchema) else LabelSchema.from_json(schema)
            if not isinstance(description, str) or len(description) > DESCRIPTION_MAX:
                raise BadRequest(f"description must be text of at most {DESCRIPTION_MAX} characters")
            read_by = _people(readers, "readers", required=True)
            reviewed_by = _people(reviewers, "reviewers", required=False)
            both = [person for person in reviewed_by if person in read_by]
            if both:
                raise BadRequest(
                    f"{both[0]!r} is both a reader and a reviewer; a reviewer sees every reader's labels"
                )
            if (
                isinstance(readers_per_item, bool)
                or not isinstance(readers_per_item, int)
                or not 1 <= readers_per_item <= READERS_PER_ITEM_MAX
            ):
                raise BadRequest(f"readers_per_item {readers_per_item!r} must be 1 to {READERS_PER_ITEM_MAX}")
            if readers_per_item > len(read_by):
                raise BadRequest(
                    f"readers_per_item {readers_per_item} is more than the project's {len(read_by)} "
                    f"reader{'s' if len(read_by) != 1 else ''}"
                )
            policy = _choice(Assignment, assignment, "assignment")
            due = _opt_utc(due_at)
            if due is not None and due <= _now():
                raise BadRequest(f"due_at {due.isoformat()} is in the past")
            for flag, value in (("blinded", blinded), ("show_ai", show_ai)):
                check_flag(value, flag)
            studies, origin = self._cohort(principal, cohort)
            resource.update(studies=len(studies), readers=len(read_by), assignment=policy.value)
            values = dict(
                name=name,
                description=description,
                schema=_dumps(parsed.to_json()),
                cohort=_dumps(origin),
                readers_per_item=readers_per_item,
                blinded=blinded,
                show_ai=show_ai,
                assignment=policy.value,
                due_at=due,
                owner=principal.subject,
                readers=_dumps(list(read_by)),
                reviewers=_dumps(list(reviewed_by)),
                state=ProjectState.OPEN.value,
            )
            project_id = self._write(partial(self._create, values, studies))
            resource["project_id"] = project_id
        return self.get(principal, name)

    def _create(self, values: JsonDict, studies: list[str], session: Session) -> int:
        if session.scalar(select(ProjectRow.id).where(ProjectRow.name == values["name"])) is not None:
            raise Conflict(f"a labeling project named {values['name']!r} exists")
        now = _now()
        fresh = ProjectRow(**values, created_at=now)
        session.add(fresh)
        session.flush()
        policy = Assignment(fresh.assignment)
        readers: list[str] = json.loads(fresh.readers)
        if policy is Assignment.UNCERTAINTY:
            studies = uncertainty_order(studies, self._priorities(session, studies))
        session.execute(
            insert(ItemRow),
            [{"project_id": fresh.id, "position": i, "study_uid": uid} for i, uid in enumerate(studies)],
        )
        item_ids = {
            position: item_id
            for position, item_id in session.execute(
                select(ItemRow.position, ItemRow.id).where(ItemRow.project_id == fresh.id)
            )
        }
        open_tasks = None if policy is Assignment.ROUND_ROBIN else self._open_tasks(session, readers)
        picks = assign_readers(len(studies), readers, fresh.readers_per_item, policy, open_tasks)
        session.execute(
            insert(TaskRow),
            [
                {
                    "project_id": fresh.id,
                    "item_id": item_ids[position],
                    "reader": reader,
                    "kind": TaskKind.READ.value,
                    "state": TaskState.ASSIGNED.value,
                    "due_at": fresh.due_at,
                    "assigned_at": now,
                    "submitted_at": None,
                    "revision": 0,
                }
                for position, chosen in enumerate(picks)
                for reader in chosen
            ],
        )
        return fresh.id

    @staticmethod
    def _priorities(session: Session, studies: Sequence[str]) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for start in range(0, len(studies), 500):
            chunk = studies[start : start + 500]
            query = select(StudyRow.study_uid, StudyRow.ai_priority).where(StudyRow.study_uid.in_(chunk))
            found.update({uid: priority for uid, priority in session.execute(query)})
        return found

    @staticmethod
    def _open_tasks(session: Session, readers: Sequence[str]) -> dict[str, int]:
        """Each reader's ``assigned`` tasks in open projects."""
        query = (
            select(TaskRow.reader, func.count())
            .join(ProjectRow, ProjectRow.id == TaskRow.project_id)
            .where(
                TaskRow.reader.in_(list(readers)),
                TaskRow.state == TaskState.ASSIGNED.value,
                ProjectRow.state == ProjectState.OPEN.value,
            )
            .group_by(TaskRow.reader)
        )
        return {reader: int(n) for reader, n in session.execute(query)}

    def _cohort(self, principal: Principal, cohort: Any) -> tuple[list[str], JsonDict]:
        """The cohort's Study Instance UIDs, in item order, and how it was chosen.

        Raises
        ------
        BadRequest
            Neither a query nor a list; an empty cohort; more than :data:`COHORT_MAX` studies;
            studies not stored or outside the caller's scope; a malformed query or UID.
        """
        scope = self.policy.study_condition(principal)
        if isinstance(cohort, Mapping):
            if not any(key != "limit" for key in cohort):
                raise BadRequest(
                    "the cohort query names no attribute; give at least one (ModalitiesInStudy, StudyDate, …) "
                    "or a list of StudyInstanceUIDs"
                )
            params: list[tuple[str, str]] = []
            for key, value in cohort.items():
                values = value if isinstance(value, list) else [value]
                if not isinstance(key, str) or not values or not all(isinstance(v, str) for v in values):
                    raise BadRequest(f"cohort query {key!r}: the value must be a string or a list of strings")
                if key in ("offset", "includefield", "fuzzymatching"):
                    raise BadRequest(
                        f"cohort query {key!r} is not accepted; use the attribute keys and limit"
                    )
                params.extend((key, v) for v in values)
            limited = any(key == "limit" for key, _ in params)
            if not limited:
                params.append(("limit", str(COHORT_MAX)))
            query = parse_query(params, QueryLevelValues.STUDY)
            if query.warnings:
                # QIDO ignores such a key; a cohort chosen without it would hold studies not asked for.
                raise BadRequest(
                    f"the cohort query is refused: {'; '.join(query.warnings)}; a cohort is chosen by "
                    "study-level keys (ModalitiesInStudy, StudyDate, PatientID, …)"
                )
            found = search_studies(self.store, query, base_url="", max_limit=COHORT_MAX, scope=scope)
            if found.truncated and not limited:
                raise BadRequest(
                    f"the cohort query matches more than {COHORT_MAX} studies; narrow it or give a limit"
                )
            studies = [str(match["0020000D"]["Value"][0]) for match in found.matches]
            if not studies:
                raise BadRequest(
                    f"the cohort is empty: the query {dict(cohort)} matches no study you may see"
                )
            return studies, {"kind": "query", "query": dict(cohort)}
        if isinstance(cohort, str) or not isinstance(cohort, Sequence):
            raise BadRequest("cohort must be a QIDO-style query (an object) or a list of StudyInstanceUIDs")
        studies = list(
            dict.fromkeys(check_uid(uid, f"cohort[{i}]", in_request=True) for i, uid in enumerate(cohort))
        )
        if not studies:
            raise BadRequest("the cohort is empty: give a QIDO-style query or a list of StudyInstanceUIDs")
        if len(studies) > COHORT_MAX:
            raise BadRequest(f"the cohort lists {len(studies)} studies; at most {COHORT_MAX}")
        stored: set[str] = set()
        with Session(self.engine) as session:
            for start in range(0, len(studies), 500):
                chunk = studies[start : start + 500]
                statement = select(StudyRow.study_uid).where(
                    StudyRow.study_uid.in_(chunk), StudyRow.num_instances > 0
                )
                if scope is not None:
                    statement = statement.where(scope)
                stored.update(session.scalars(statement))
        missing = [uid for uid in studies if uid not in stored]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise BadRequest(f"{len(missing)} of the cohort's studies are not stored: {shown}")
        return studies, {"kind": "list"}

    def _row(self, session: Session, name: str) -> ProjectRow:
        row = session.scalar(select(ProjectRow).where(ProjectRow.name == name))
        if row is None:
            raise NotFound(f"labeling project {name!r} not found")
        return row

    def _progress(
        self, session: Session, ids: Sequence[int], reader: str | None = None
    ) -> dict[int, Progress]:
        items = {
            project_id: int(n)
            for project_id, n in session.execute(
                select(ItemRow.project_id, func.count())
                .where(ItemRow.project_id.in_(ids))
                .group_by(ItemRow.project_id)
            )
        }
        tasks: dict[int, dict[str, int]] = {i: _no_tasks() for i in ids}
        query = select(TaskRow.project_id, TaskRow.state, func.count()).where(
            TaskRow.project_id.in_(ids), TaskRow.kind == TaskKind.READ.value
        )
        if reader is not None:
            query = query.where(TaskRow.reader == reader)
        for project_id, state, n in session.execute(query.group_by(TaskRow.project_id, TaskRow.state)):
            tasks[project_id][state] = int(n)
        return {i: Progress(items=int(items.get(i, 0)), tasks=tasks[i]) for i in ids}

    def _projects(self, principal: Principal, session: Session, rows: Sequence[ProjectRow]) -> list[Project]:
        ids = [row.id for row in rows]
        progress = self._progress(session, ids)
        mine = self._progress(session, ids, principal.subject)
        return [
            _project(row, progress[row.id], self._members(principal, row), mine[row.id].tasks) for row in rows
        ]

    def get(self, principal: Principal, name: str) -> Project:
        """A project with its progress, for one of its members.

        Raises
        ------
        NotFound
            No such project, or the caller has no part in it.
        Forbidden
            The caller's role lacks the action their part needs.
        """
        with Session(self.engine) as session:
            row = self._row(session, name)
            self._access(principal, row)
            return self._projects(principal, session, [row])[0]

    def list(self, principal: Principal) -> builtins.list[Project]:
        """The projects the caller takes part in (every project, for an administrator), newest first.

        Raises
        ------
        Forbidden
            The caller's role may neither label nor manage data sets.
        """
        if not self.policy.allows(principal, ActionValues.MANAGE_DATASETS):
            self.policy.require(principal, ActionValues.LABEL)
        with Session(self.engine) as session:
            rows = session.scalars(
                select(ProjectRow).order_by(ProjectRow.created_at.desc(), ProjectRow.id.desc())
            )
            mine = []
            for row in rows:
                members = self._members(principal, row)
                if members and any(self.policy.allows(principal, _MEMBER_ACTION[m]) for m in members):
                    mine.append(row)
            return self._projects(principal, session, mine)

    def close(self, principal: Principal, name: str) -> Project:
        """Close an open project: its tasks can no longer be submitted, skipped or given labels.

        Raises
        ------
        NotFound, Forbidden
            Only its owner (or an administrator) may close it.
        Conflict
            It is closed already.
        """
        resource: JsonDict = {"labeling_project": name, "event": "close"}
        with audited(self._audit, principal, AuditActionValues.WRITE, resource):
            with Session(self.engine) as session:
                self._access(principal, self._row(session, name), Member.OWNER)
            self._write(partial(self._close, name))
        return self.get(principal, name)

    def _close(self, name: str, session: Session) -> None:
        done = session.execute(
            update(ProjectRow)
            .where(ProjectRow.name == name, ProjectRow.state == ProjectState.OPEN.value)
            .values(state=ProjectState.CLOSED.value, closed_at=_now())
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict(f"labeling project {name!r} is closed already")

    # ------------------------------------------------------------------ tasks
    def _tasks(
        self, session: Session, rows: Sequence[tuple[TaskRow, ItemRow, ProjectRow]]
    ) -> builtins.list[Task]:
        """Tasks with their study's one image, where it has exactly one."""
        studies = sorted({item.study_uid for _, item, _ in rows})
        single: dict[str, str] = {}
        for start in range(0, len(studies), 500):
            chunk = studies[start : start + 500]
            query = (
                select(InstanceRow.study_uid, func.count(), func.min(InstanceRow.sop_uid))
                .where(
                    InstanceRow.study_uid.in_(chunk),
                    InstanceRow.version_removed.is_(None),
                    InstanceRow.rows.is_not(None),
                )
                .group_by(InstanceRow.study_uid)
            )
            single.update({uid: sop for uid, n, sop in session.execute(query) if n == 1})
        return [
            Task(
                id=task.id,
                project=project.name,
                project_id=project.id,
                item_id=item.id,
                position=item.position,
                study_uid=item.study_uid,
                sop_uid=single.get(item.study_uid),
                reader=task.reader,
                kind=TaskKind(task.kind),
                state=TaskState(task.state),
                due_at=_opt_utc(task.due_at),
                assigned_at=_utc(task.assigned_at),
                submitted_at=_opt_utc(task.submitted_at),
                revision=task.revision,
            )
            for task, item, project in rows
        ]

    @staticmethod
    def _task_query() -> Any:
        return (
            select(TaskRow, ItemRow, ProjectRow)
            .join(ItemRow, ItemRow.id == TaskRow.item_id)
            .join(ProjectRow, ProjectRow.id == TaskRow.project_id)
        )

    def tasks_of(
        self,
        principal: Principal,
        project: str | None = None,
        state: TaskState | str | None = None,
        *,
        offset: int = 0,
        limit: int | None = None,
    ) -> builtins.list[Task]:
        """Tasks: the caller's own (in every project, or in ``project``), or, for a reviewer or the
        owner of ``project``, every task of it. Oldest assignment first, then by item position.

        Raises
        ------
        NotFound
            ``project`` does not exist or the caller has no part in it.
        Forbidden
            The caller's role may not label (or, as owner, manage data sets).
        BadRequest
            An unknown state.
        """
        wanted = _choice(TaskState, state, "state") if state is not None else None
        query = self._task_query()
        with Session(self.engine) as session:
            if project is None:
                self.policy.require(principal, ActionValues.LABEL)
                query = query.where(TaskRow.reader == principal.subject)
            else:
                row = self._row(session, project)
                members = self._access(principal, row)
                query = query.where(TaskRow.project_id == row.id)
                if not set(members) & {Member.OWNER, Member.REVIEWER}:
                    query = query.where(TaskRow.reader == principal.subject)
            if wanted is not None:
                query = query.where(TaskRow.state == wanted.value)
            query = query.order_by(TaskRow.assigned_at, TaskRow.project_id, ItemRow.position, TaskRow.id)
            query = query.offset(offset)
            if limit is not None:
                query = query.limit(limit)
            return self._tasks(session, [(t, i, p) for t, i, p in session.execute(query)])

    def next_task(self, principal: Principal, project: str | None = None) -> Task | None:
        """The caller's next case: their oldest ``assigned`` task of an open project (of ``project``),
        the first by item position; None when none is left.

        Raises
        ------
        NotFound
            ``project`` does not exist or the caller has no part in it.
        Forbidden
            The caller's role may not label.
        """
        self.policy.require(principal, ActionValues.LABEL)
        query = self._task_query().where(
            TaskRow.reader == principal.subject,
            TaskRow.state == TaskState.ASSIGNED.value,
            ProjectRow.state == ProjectState.OPEN.value,
        )
        with Session(self.engine) as session:
            if project is not None:
                row = self._row(session, project)
                self._access(principal, row)
                query = query.where(TaskRow.project_id == row.id)
            query = query.order_by(
                TaskRow.assigned_at, TaskRow.project_id, ItemRow.position, TaskRow.id
            ).limit(1)
            found = self._tasks(session, [(t, i, p) for t, i, p in session.execute(query)])
        return found[0] if found else None

    def _load_task(self, session: Session, task_id: int) -> tuple[TaskRow, ItemRow, ProjectRow]:
        found = session.execute(self._task_query().where(TaskRow.id == task_id)).first()
        if found is None:
            raise NotFound(f"labeling task {task_id} not found")
        task, item, project = found
        return task, item, project

    def task(self, principal: Principal, task_id: int) -> Task:
        """One task, for its reader, a reviewer or the owner.

        Raises
        ------
        NotFound
            No such task, or not one the caller may see.
        """
        with Session(self.engine) as session:
            task, item, project = self._load_task(session, task_id)
            self._task_access(principal, task, project, act=False)
            return self._tasks(session, [(task, item, project)])[0]

    def _acting(self, principal: Principal, task_id: int) -> tuple[TaskRow, ItemRow, ProjectRow]:
        """The task, once its reader may act on it: the project open, the study within their scope.

        Raises
        ------
        NotFound, Forbidden
            As :meth:`_task_access`; the study is outside the caller's scope.
        Conflict
            The project is closed.
        """
        with Session(self.engine) as session:
            task, item, project = self._load_task(session, task_id)
        self._task_access(principal, task, project, act=True)
        self.policy.require(principal, ActionValues.LABEL, item.study_uid)
        if project.state != ProjectState.OPEN.value:
            raise Conflict(f"labeling project {project.name!r} is closed")
        return task, item, project

    def submit(self, principal: Principal, task_id: int) -> Task:
        """The reader is done with the task: it is ``submitted`` with its current labels (none: nothing
        found). Submitting a submitted task again changes nothing.

        Raises
        ------
        NotFound, Forbidden
            Not the caller's task.
        Conflict
            The project is closed, or the task was skipped.
        """
        return self._finish(principal, task_id, TaskState.SUBMITTED)

    def skip(self, principal: Principal, task_id: int) -> Task:
        """The reader cannot read the case: it is ``skipped`` (labels given before are kept).

        Raises
        ------
        NotFound, Forbidden
            Not the caller's task.
        Conflict
            The project is closed, or the task was submitted.
        """
        return self._finish(principal, task_id, TaskState.SKIPPED)

    def _finish(self, principal: Principal, task_id: int, state: TaskState) -> Task:
        resource: JsonDict = {
            "labeling_task": task_id,
            "event": "submit" if state is TaskState.SUBMITTED else "skip",
        }
        with audited(self._audit, principal, AuditActionValues.WRITE, resource):
            task, item, project = self._acting(principal, task_id)
            resource.update(labeling_project=project.name, study=item.study_uid)
            _read_only(task, "submitted or skipped")
            self._write(partial(self._finished, task_id, state))
        return self.task(principal, task_id)

    def _finished(self, task_id: int, state: TaskState, session: Session) -> None:
        self._set_state(task_id, state, session)
        for hook in self.finished:
            hook(session, task_id)

    @staticmethod
    def _set_state(task_id: int, state: TaskState, session: Session) -> None:
        current = session.scalar(select(TaskRow.state).where(TaskRow.id == task_id).with_for_update())
        if current == state.value:
            return
        if current != TaskState.ASSIGNED.value:
            raise Conflict(
                f"labeling task {task_id} is {current}; only an assigned task can be {state.value}"
            )
        session.execute(
            update(TaskRow).where(TaskRow.id == task_id).values(state=state.value, submitted_at=_now())
        )

    # ------------------------------------------------------------------ labels
    def submit_labels(self, principal: Principal, task_id: int, labels: Sequence[Any]) -> LabelSet:
        """Replace the task's current labels with ``labels`` (JSON objects, see the module's docstring);
        the replaced ones are kept, superseded. An empty list means: nothing found.

        Each label is ``{"label", "geometry", "data", "sop_uid", "frame"?, "laterality"?, "site"?,
        "value"?}``.

        Returns
        -------
        LabelSet
            The task's new revision and its labels (``source`` ``api``).

        Raises
        ------
        NotFound, Forbidden
            Not the caller's task.
        BadRequest
            Naming the label and field: outside the schema (the accepted labels listed), a geometry
            that label may not have, malformed data or coordinates outside the image, an image that
            is not one of the task's study, more than :data:`LABELS_MAX` labels.
        Conflict
            The project is closed, or the task is no longer assigned (submitted or skipped).
        """
        resource: JsonDict = {"labeling_task": task_id, "event": "labels", "source": LabelSource.API.value}
        with audited(self._audit, principal, AuditActionValues.WRITE, resource):
            task, item, project = self._acting(principal, task_id)
            resource.update(labeling_project=project.name, study=item.study_uid)
            if not isinstance(labels, list | tuple):
                raise BadRequest("labels must be a list of label objects")
            if len(labels) > LABELS_MAX:
                raise BadRequest(f"{len(labels)} labels in one submission; at most {LABELS_MAX}")
            _read_only(task, "given labels")
            if task.state != TaskState.ASSIGNED.value:
                raise Conflict(f"labeling task {task_id} is {task.state}; labels go to an assigned task")
            schema = LabelSchema.from_json(json.loads(project.schema))
            checked = self.check_labels(schema, item.study_uid, labels, task_id)
            result = self._write(
                partial(self._replace_labels, task_id, principal.subject, checked, LabelSource.API, None)
            )
            resource.update(labels=len(result.labels), revision=result.revision)
        return result

    def check_labels(
        self, schema: LabelSchema, study_uid: str, labels: Sequence[Any], task_id: int
    ) -> builtins.list[CheckedLabel]:
        """``labels`` (JSON objects) checked against the schema and the images of the study.

        Raises
        ------
        BadRequest
            As :meth:`submit_labels` says.
        """
        checked = [check_label(schema, raw, i) for i, raw in enumerate(labels)]
        images = self._images(study_uid, {c.sop_uid for c in checked})
        for c in checked:
            image = images.get(c.sop_uid)
            if image is None:
                raise BadRequest(
                    f"labels[{c.index}].sop_uid {c.sop_uid} is not an image of study {study_uid} "
                    f"(task {task_id})"
                )
            check_on_image(c, image)
        return checked

    def _images(self, study_uid: str, sop_uids: Iterable[str]) -> dict[str, ImageSize]:
        """The current images of the study among ``sop_uids`` (instances with pixels), by SOP Instance UID."""
        wanted = sorted(sop_uids)
        if not wanted:
            return {}
        with Session(self.engine) as session:
            rows = session.execute(
                select(
                    InstanceRow.sop_uid, InstanceRow.rows, InstanceRow.columns, InstanceRow.number_of_frames
                ).where(
                    InstanceRow.study_uid == study_uid,
                    InstanceRow.sop_uid.in_(wanted),
                    InstanceRow.version_removed.is_(None),
                    InstanceRow.rows.is_not(None),
                    InstanceRow.columns.is_not(None),
                )
            )
            return {sop: ImageSize(int(r), int(c), int(f or 1)) for sop, r, c, f in rows if r and c}

    @staticmethod
    def _replace_labels(
        task_id: int,
        reader: str,
        checked: Sequence[CheckedLabel],
        source: LabelSource,
        source_uid: str | None,
        session: Session,
        *,
        keep: Callable[[LabelRow], bool] | None = None,
    ) -> LabelSet:
        """The task's next revision: ``checked`` (from ``source``), plus the current labels ``keep``
        says to carry over as they were (none without it); every current label is superseded.

        Raises
        ------
        Conflict
            The task is no longer assigned, or its project was closed.
        """
        # The write comes first: it takes the task's lock (and SQLite's write lock) before anything is
        # read, so two submissions for one task get consecutive revisions.
        open_projects = select(ProjectRow.id).where(ProjectRow.state == ProjectState.OPEN.value)
        bumped = session.execute(
            update(TaskRow)
            .where(
                TaskRow.id == task_id,
                TaskRow.state == TaskState.ASSIGNED.value,
                TaskRow.project_id.in_(open_projects),
            )
            .values(revision=TaskRow.revision + 1)
        )
        if bumped.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict(f"labeling task {task_id} is no longer assigned, or its project was closed")
        task = session.get(TaskRow, task_id)
        assert task is not None
        now = _now()
        current = session.scalars(
            select(LabelRow)
            .where(LabelRow.task_id == task_id, LabelRow.superseded_at.is_(None))
            .order_by(LabelRow.id)
        ).all()
        carried = [
            LabelRow(
                **{name: getattr(row, name) for name in _CARRIED},
                revision=task.revision,
                superseded_at=None,
            )
            for row in current
            if keep is not None and keep(row)
        ]
        session.execute(
            update(LabelRow)
            .where(LabelRow.task_id == task_id, LabelRow.superseded_at.is_(None))
            .values(superseded_at=now)
        )
        rows = carried + [
            LabelRow(
                project_id=task.project_id,
                item_id=task.item_id,
                task_id=task_id,
                reader=reader,
                label=c.label.key,
                geometry=c.geometry.value,
                data=_dumps(c.data),
                value=c.value,
                sop_uid=c.sop_uid,
                frame=c.frame,
                laterality=c.laterality,
                site=c.site,
                source=source.value,
                source_uid=source_uid,
                revision=task.revision,
                superseded_at=None,
                created_at=now,
            )
            for c in checked
        ]
        session.add_all(rows)
        session.flush()
        return LabelSet(task_id=task_id, revision=task.revision, labels=tuple(_label(row) for row in rows))

    def labels_of(self, principal: Principal, task_id: int, *, history: bool = False) -> LabelSet:
        """The task's current labels, or with ``history`` every revision (oldest first), for its reader,
        a reviewer or the owner.

        Raises
        ------
        NotFound
            No such task, or not one the caller may see (another reader's, in a blinded project too).
        """
        with Session(self.engine) as session:
            task, _item, project = self._load_task(session, task_id)
            self._task_access(principal, task, project, act=False)
            query = select(LabelRow).where(LabelRow.task_id == task_id)
            if not history:
                query = query.where(LabelRow.superseded_at.is_(None))
            rows = session.scalars(query.order_by(LabelRow.revision, LabelRow.id)).all()
            return LabelSet(
                task_id=task_id, revision=task.revision, labels=tuple(_label(row) for row in rows)
            )
