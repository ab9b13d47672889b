"""Labels from DICOM: the SR or SEG a reader saves becomes structured labels on that reader's task.

A reader draws in OHIF and saves (STOW-RS of an Enhanced SR, a Segmentation or Label Map
Segmentation), or in 3D Slicer (C-STORE, or DICOMweb one file per POST). Each such object arrives
through the one ingest pipeline, whose :class:`~radstack.ingest.pipeline.Screen` (here
:meth:`LabelIntake.screen`, one per request or association, for its principal) sees it after analysis
and before its index row commits:

1. An SR (any SR storage SOP class, ``1.2.840.10008.5.1.4.1.1.88.*``) or a SEG (Segmentation
   ``…66.4``, Label Map Segmentation ``…66.7``) from a principal who reads, in an open labeling
   project, a cohort that holds the object's study, is a **label object**. Anything else is stored as
   it always was (an SR from a radiologist in no project for that study is a clinical report).
2. A label object must label one of the principal's tasks on that study: the task must exist
   (``no labeling task of rita in project 'wrists' holds study …``) and be ``assigned``; its labels
   must be readable (:func:`~radstack.labeling.labels.labels_of_sr`,
   :func:`~radstack.labeling.labels.labels_of_seg`), each a label of the project's schema (found by
   its code, else its text: key or code meaning, case-insensitive) with a geometry the schema allows
   for it, on an image of the task's study (a SEG's every referenced image too), inside that image.
   An ellipse or a polygon is its extent where the label takes a box; a polyline is no geometry of a
   schema. Where the principal has tasks on the study in several projects, the object labels the
   one whose schema it fits (fitting several is refused: radstack cannot tell which was meant).
3. Refused, the object is not stored (its blobs are content-addressed orphans, collected later) and
   the sender is told why: a STOW-RS Failed SOP Sequence item with its Failure Reason and the reason
   in the Warning header (PS3.18 §10.5.3), a C-STORE status with an Error Comment. The refusals are
   :class:`~radstack.errors.RadstackError` s: :class:`~radstack.errors.Forbidden` (0x0124) for no
   task, :class:`~radstack.errors.Conflict` for a task no longer assigned, ``LabelParseError``
   (0xC000) for an object whose labels cannot be read, :class:`~radstack.errors.BadRequest` (0xC000)
   for a label outside the schema, a geometry it does not take, an image outside the study.
4. Admitted, its rows commit **in the same transaction** as the instance's index row
   (:meth:`radstack.store.studies.StudyStore.commit_instance`'s ``also``): a ``labeling_objects`` row
   (what blinding hides from other readers) and the task's new revision of labels
   (:meth:`ProjectService._replace_labels <radstack.labeling.projects.ProjectService>`), source ``sr`` or
   ``seg`` and ``source_uid`` the object's SOP Instance UID. Both are stored, or neither.

**Several objects for one task.** A label object replaces only the task's current labels *of its own
source kind*: a new SR replaces the labels read from SRs, a new SEG those read from SEGs, and the
others are carried into the new revision unchanged. So a reader who saves boxes (SR) and then a mask
(SEG) keeps both, and OHIF's re-save of a report (a new SR in the same series naming the older one in
Predecessor Documents Sequence) replaces that report's labels: one revision per save, earlier
revisions kept. (Labels sent as JSON, ``POST …/labels``, replace everything, as before.)

**The same object twice** (a re-send, a retry) is stored once and writes no new revision: the
``labeling_objects`` row of its SOP Instance UID and the stored content tell it apart, even once
the task is submitted. The same SOP Instance UID with new content is a new save.

**Who.** Over DICOMweb the principal is the token's user; over DIMSE the service account of the
calling AE title (:meth:`radstack.security.authn.Accounts.dicom_principal`): a reader's workstation
calls with an AE title that is the reader's account's (``radstack user create rita --role annotator
--ae-title RITA_SLICER``). The ``annotator`` role has ``label`` but not ``ingest``: it may store label
objects of its tasks and nothing else (:meth:`radstack.security.policy.Policy.require_store`).

Every label object admitted or refused is audited (``event`` ``labels``, its source and SOP Instance
UID, the task, the revision).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from radstack.errors import BadRequest, Conflict, Forbidden, RadstackError
from radstack.ingest.pipeline import Admission, Screen
from radstack.labeling.blinding import insert_object
from radstack.labeling.labels import DrawnLabel, labels_of_seg, labels_of_sr
from radstack.labeling.labels import Geometry as Drawn
from radstack.labeling.models import ItemRow, LabelObjectRow, ProjectRow, TaskRow
from radstack.labeling.projects import (
    LABELS_MAX,
    LabelSet,
    LabelSource,
    Member,
    ProjectService,
    ProjectState,
    TaskKind,
    TaskState,
)
from radstack.labeling.schema import (
    CheckedLabel,
    Geometry,
    LabelDef,
    LabelSchema,
    check_label,
    check_on_image,
)
from radstack.labeling.schema import choices as listed
from radstack.security.audit import AuditActionValues, audit_entry
from radstack.security.policy import ActionValues, Principal
from radstack.store.models import InstanceRow
from radstack.store.records import CommitOutcome, InstanceRecord, StoreOutcomeValues

__all__ = ["MEMBER_TASKS", "SEG_CLASSES", "SR_CLASS_PREFIX", "LabelIntake", "source_of"]

#: Every SR storage SOP class (PS3.4 §B.5) is ``1.2.840.10008.5.1.4.1.1.88.<n>``.
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Segmentation and Label Map Segmentation Storage.
SEG_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})

#: The tasks a member's SR or SEG labels, by their part in the project. Readers' ``read`` tasks for
#: now; a reviewer's or adjudicator's objects are for their ``review`` and ``adjudicate`` tasks
#: (add ``Member.REVIEWER: (TaskKind.REVIEW, TaskKind.ADJUDICATE)`` here when those tasks exist).
MEMBER_TASKS: Mapping[Member, tuple[TaskKind, ...]] = {Member.READER: (TaskKind.READ,)}

#: What a drawn geometry is in a schema (an ellipse or a polygon is a box where the label takes one).
_AS_SCHEMA = {
    Drawn.BOX: Geometry.BOX,
    Drawn.POINT: Geometry.POINT,
    Drawn.LINE: Geometry.LINE,
    Drawn.MASK: Geometry.MASK,
    Drawn.CLASS: Geometry.CLASS,
}
_EXTENT_OF = frozenset({Drawn.ELLIPSE, Drawn.POLYGON})

JsonDict = dict[str, Any]


def source_of(sop_class_uid: str) -> LabelSource | None:
    """``sr`` or ``seg`` for an SR or a SEG storage SOP class; None for any other."""
    if sop_class_uid.startswith(SR_CLASS_PREFIX):
        return LabelSource.SR
    if sop_class_uid in SEG_CLASSES:
        return LabelSource.SEG
    return None


@dataclass(frozen=True, slots=True)
class _Task:
    id: int
    state: str
    kind: str


@dataclass(frozen=True, slots=True)
class _Part:
    """An open project whose cohort holds the study, where the principal has a part with tasks."""

    project_id: int
    name: str
    schema: LabelSchema
    tasks: tuple[_Task, ...]


@dataclass(frozen=True, slots=True)
class _Fit:
    """A label object's labels, checked for one task."""

    part: _Part
    task: _Task
    labels: tuple[CheckedLabel, ...]


class LabelIntake:
    """Readers' SR and SEG as they are stored: screened, then their task's labels (see the module).

    Parameters
    ----------
    projects
        The labeling service: its index, policy, audit trail, and the one writer of labels.
    """

    def __init__(self, projects: ProjectService) -> None:
        self.projects = projects
        self.policy = projects.policy
        self._audit = projects._audit

    def screen(self, principal: Principal) -> Screen:
        """The screen of what ``principal`` stores (one STOW-RS request, one C-STORE association)."""
        return partial(self._screen, principal)

    # ------------------------------------------------------------------ before the commit
    def _screen(
        self, principal: Principal, record: InstanceRecord, dataset: Callable[[], Dataset]
    ) -> Admission | None:
        """An admission of a label object of ``principal``'s task; None for anything else they may store.

        Raises
        ------
        Forbidden
            Not a label object, from a role that may store nothing else (the annotator); no task of
            the principal holds the study; the SOP Instance UID is another reader's label object.
        Conflict
            The principal's task on the study is no longer assigned.
        LabelParseError
            The object's labels cannot be read.
        BadRequest
            A label outside the schema, a geometry it does not take, an image outside the study.
        RadstackError
            Each of these is audited, then re-raised.
        """
        source = source_of(record.sop_class_uid)
        parts = self._parts(principal, record.study_uid) if source is not None else []
        if source is None or not parts:
            self.policy.require_store(principal, label_object=False)
            if source is not None:
                self._refuse_reviewer(principal, record.study_uid)
            return None
        resource: JsonDict = {
            "event": "labels",
            "source": source.value,
            "source_uid": record.sop_uid,
            "study": record.study_uid,
        }
        try:
            self.policy.require_store(principal, record.study_uid, label_object=True)
            self.policy.require(principal, ActionValues.LABEL, record.study_uid)
            if self._stored_before(principal, record):
                return None  # the same object again: stored once, no new revision
            ds = dataset()
            drawn = labels_of_sr(ds) if source is LabelSource.SR else labels_of_seg(ds)
            fit = self._fit(principal, record, source, ds, parts, drawn)
        except RadstackError as error:
            resource["labeling_project"] = ", ".join(part.name for part in parts)
            self._audit(audit_entry(principal, AuditActionValues.WRITE, resource, error))
            raise
        resource.update(labeling_project=fit.part.name, labeling_task=fit.task.id, labels=len(fit.labels))
        return _Admission(self, principal, record, fit, source, resource)

    def _refuse_reviewer(self, principal: Principal, study_uid: str) -> None:
        """Refuse an SR or SEG of a reviewer into a study of an open blinded project they review: stored
        as a clinical object it would be shown to the project's blinded readers. A reviewer decides on
        the review page (accept, reject, edit), which writes the consensus SR and SEG itself.

        Raises
        ------
        Forbidden
            The principal reviews an open blinded project whose cohort holds the study.
        """
        query = (
            select(ProjectRow)
            .join(ItemRow, ItemRow.project_id == ProjectRow.id)
            .where(
                ItemRow.study_uid == study_uid,
                ProjectRow.state == ProjectState.OPEN.value,
                ProjectRow.blinded.is_(True),
            )
        )
        with Session(self.projects.engine) as session:
            for project in session.scalars(query):
                if principal.subject in json.loads(project.reviewers):
                    raise Forbidden(
                        f"{principal.subject} reviews the blinded labeling project {project.name!r}, whose "
                        f"cohort holds study {study_uid}: an SR or SEG stored there would be shown to its "
                        "readers; decide on the review page, which stores the consensus SR and SEG"
                    )

    def _parts(self, principal: Principal, study_uid: str) -> list[_Part]:
        """The open projects whose cohort holds the study and where the principal has a part whose
        tasks take label objects (:data:`MEMBER_TASKS`), with the principal's tasks on the study."""
        if not self.policy.allows(principal, ActionValues.LABEL):
            return []
        query = (
            select(ProjectRow, ItemRow.id)
            .join(ItemRow, ItemRow.project_id == ProjectRow.id)
            .where(ItemRow.study_uid == study_uid, ProjectRow.state == ProjectState.OPEN.value)
            .order_by(ProjectRow.id)
        )
        parts = []
        with Session(self.projects.engine) as session:
            for project, item_id in session.execute(query):
                members = self.projects._members(principal, project)
                kinds = [kind.value for member in members for kind in MEMBER_TASKS.get(member, ())]
                if not kinds:
                    continue
                tasks = session.execute(
                    select(TaskRow.id, TaskRow.state, TaskRow.kind)
                    .where(
                        TaskRow.item_id == item_id,
                        TaskRow.reader == principal.subject,
                        TaskRow.kind.in_(kinds),
                    )
                    .order_by(TaskRow.id)
                )
                parts.append(
                    _Part(
                        project_id=project.id,
                        name=project.name,
                        schema=LabelSchema.from_json(json.loads(project.schema)),
                        tasks=tuple(_Task(*row) for row in tasks),
                    )
                )
        return parts

    def _stored_before(self, principal: Principal, record: InstanceRecord) -> bool:
        """Whether this very object (its SOP Instance UID, the same content) is already one of the
        principal's label objects.

        Raises
        ------
        Forbidden
            The SOP Instance UID is another reader's label object.
        """
        with Session(self.projects.engine) as session:
            earlier = session.scalar(select(LabelObjectRow).where(LabelObjectRow.sop_uid == record.sop_uid))
            if earlier is None:
                return False
            if earlier.reader != principal.subject:
                raise Forbidden(
                    f"SOP instance {record.sop_uid} is another reader's label object; a new save needs "
                    "a new SOP Instance UID"
                )
            stored = session.scalar(
                select(InstanceRow.content_hash).where(
                    InstanceRow.sop_uid == record.sop_uid, InstanceRow.version_removed.is_(None)
                )
            )
        return stored == record.content_hash

    def _fit(
        self,
        principal: Principal,
        record: InstanceRecord,
        source: LabelSource,
        ds: Dataset,
        parts: Sequence[_Part],
        drawn: Sequence[DrawnLabel],
    ) -> _Fit:
        """The task the object labels, with its labels checked.

        Raises
        ------
        Forbidden
            No task of the principal holds the study.
        Conflict
            The task (every task) is no longer assigned.
        BadRequest
            The labels fit no task (the reasons named), or several.
        """
        tasks = [(part, task) for part in parts for task in part.tasks]
        if not tasks:
            names = ", ".join(repr(part.name) for part in parts)
            plural = "s" if len(parts) > 1 else ""
            raise Forbidden(
                f"no labeling task of {principal.subject} in project{plural} {names} holds study "
                f"{record.study_uid}"
            )
        open_tasks = [(part, task) for part, task in tasks if task.state == TaskState.ASSIGNED.value]
        if not open_tasks:
            part, task = tasks[0]
            raise Conflict(
                f"labeling task {task.id} of {principal.subject} in project {part.name!r} is {task.state}; "
                "labels go to an assigned task"
            )
        if len(drawn) > LABELS_MAX:
            raise BadRequest(
                f"{_kind(source)} {record.sop_uid} holds {len(drawn)} labels; at most {LABELS_MAX}"
            )
        fits: list[_Fit] = []
        refusals: list[tuple[_Part, BadRequest]] = []
        for part, task in open_tasks:
            try:
                fits.append(_Fit(part, task, self._check(part, task, record, source, ds, drawn)))
            except BadRequest as error:
                refusals.append((part, error))
        if len(fits) == 1:
            return fits[0]
        if not fits:
            if len(refusals) == 1:
                raise refusals[0][1]
            raise BadRequest("; ".join(f"project {part.name!r}: {error.message}" for part, error in refusals))
        raise BadRequest(
            f"{_kind(source)} {record.sop_uid} fits labeling tasks of {principal.subject} in "
            f"{len(fits)} projects ({', '.join(repr(fit.part.name) for fit in fits)}); one object labels "
            "one task, and which one cannot be told"
        )

    def _check(
        self,
        part: _Part,
        task: _Task,
        record: InstanceRecord,
        source: LabelSource,
        ds: Dataset,
        drawn: Sequence[DrawnLabel],
    ) -> tuple[CheckedLabel, ...]:
        """The object's labels checked against the project's schema and the task's study.

        Raises
        ------
        BadRequest
            Naming the object, the label and what the project accepts: a label outside the schema
            (or none), a geometry the label does not take, malformed coordinates, an image (or a
            SEG's referenced image) that is not one of the study's, coordinates outside the image.
        """
        what = f"{_kind(source)} {record.sop_uid}"
        checked = []
        for index, label in enumerate(drawn):
            where = f"{what}, label {index + 1} ({_describe(label)})"
            definition = _definition(part.schema, label)
            if definition is None:
                accepted = listed(part.schema.keys)
                if not label.text.strip() and label.code is None:
                    raise BadRequest(f"{where} has no label; project {part.name!r} takes {accepted}")
                raise BadRequest(
                    f"{where}: {label.text or label.code!r} is not a label of project {part.name!r}; "
                    f"accepted: {accepted}"
                )
            geometry, data = _geometry(label, definition, where, part.name)
            raw: JsonDict = {
                "label": definition.key,
                "geometry": geometry.value,
                "data": data,
                "sop_uid": label.sop_uid,
            }
            if label.frame is not None:
                raw["frame"] = label.frame
            try:
                checked.append(check_label(part.schema, raw, index))
            except BadRequest as error:
                raise BadRequest(f"{where}: {_unprefixed(error, index)}") from None
        referenced = _referenced_images(ds) if source is LabelSource.SEG else []
        images = self.projects._images(record.study_uid, {c.sop_uid for c in checked} | set(referenced))
        for uid in referenced:
            if uid not in images:
                raise BadRequest(
                    f"{what} references image {uid}, which is not an image of study {record.study_uid} "
                    f"(task {task.id} in project {part.name!r})"
                )
        done = []
        for index, (label, one) in enumerate(zip(drawn, checked, strict=True)):
            where = f"{what}, label {index + 1} ({_describe(label)})"
            image = images.get(one.sop_uid)
            if image is None:
                raise BadRequest(
                    f"{where} lies on image {one.sop_uid}, which is not an image of study {record.study_uid} "
                    f"(task {task.id} in project {part.name!r})"
                )
            if image.frames == 1 and one.frame == 1:
                one = replace(one, frame=None)  # OHIF's SEG names frame 1 of a single-frame image
            try:
                check_on_image(one, image)
            except BadRequest as error:
                raise BadRequest(f"{where}: {_unprefixed(error, index)}") from None
            done.append(one)
        return tuple(done)

    # ------------------------------------------------------------------ in the commit
    @staticmethod
    def _record(
        principal: Principal,
        record: InstanceRecord,
        fit: _Fit,
        source: LabelSource,
        session: Session,
        outcome: CommitOutcome,
    ) -> LabelSet | None:
        """The label object's rows, in the transaction of its instance's row; None when this very
        object was recorded before (a duplicate: no new revision).

        Raises
        ------
        Conflict
            The task is no longer assigned, or its project was closed, since the object was screened.
        """
        earlier = session.scalar(select(LabelObjectRow).where(LabelObjectRow.sop_uid == record.sop_uid))
        if earlier is not None and outcome.outcome is StoreOutcomeValues.DUPLICATE:
            return None
        if earlier is None:
            insert_object(
                session,
                sop_uid=record.sop_uid,
                series_uid=record.series_uid,
                study_uid=record.study_uid,
                project_id=fit.part.project_id,
                reader=principal.subject,
            )
        # Labels of the other sources (a SEG's masks beside an SR's boxes, JSON labels) stay current.
        return ProjectService._replace_labels(
            fit.task.id,
            principal.subject,
            fit.labels,
            source,
            record.sop_uid,
            session,
            keep=lambda row: row.source != source.value,
        )


@dataclass
class _Admission:
    """A label object let in: its rows commit with the instance's; the outcome is audited."""

    intake: LabelIntake
    principal: Principal
    record: InstanceRecord
    fit: _Fit
    source: LabelSource
    resource: JsonDict
    result: LabelSet | None = field(default=None)

    def commit(self, session: Session, outcome: CommitOutcome) -> None:
        """Write the label object's rows (see :meth:`LabelIntake._record`).

        Raises
        ------
        Conflict
            The task is no longer assigned, or its project was closed.
        """
        self.result = self.intake._record(
            self.principal, self.record, self.fit, self.source, session, outcome
        )

    def settled(self, error: RadstackError | None) -> None:
        resource = dict(self.resource)
        if error is None and self.result is None:
            resource["duplicate"] = True
        elif self.result is not None:
            resource["revision"] = self.result.revision
        self.intake._audit(audit_entry(self.principal, AuditActionValues.WRITE, resource, error))


# ---------------------------------------------------------------------------------------------- helpers
def _kind(source: LabelSource) -> str:
    return "SR" if source is LabelSource.SR else "SEG"


def _describe(label: DrawnLabel) -> str:
    text = repr(label.text) if label.text else "no label"
    return f"{text}, a {label.geometry.value} on image {label.sop_uid}"


def _definition(schema: LabelSchema, label: DrawnLabel) -> LabelDef | None:
    """The schema label a drawn one names: by its code (value and scheme), else by its text or its
    code's meaning (a key or a code meaning, case-insensitive)."""
    if label.code is not None:
        value, scheme, _meaning = label.code
        for definition in schema.labels:
            if (definition.code.value, definition.code.scheme.upper()) == (value, scheme.upper()):
                return definition
    for text in (label.text, label.code[2] if label.code is not None else ""):
        if text.strip():
            found = schema.find(text)
            if found is not None:
                return found
    return None


def _geometry(label: DrawnLabel, definition: LabelDef, where: str, project: str) -> tuple[Geometry, JsonDict]:
    """What the drawn label is in the schema's terms, and its data.

    Raises
    ------
    BadRequest
        A geometry the label does not take (a polyline is none a schema has; an ellipse or polygon
        counts as its extent only where the label takes a box).
    """
    allowed = listed(g.value for g in definition.geometry)
    if label.geometry in _EXTENT_OF and Geometry.BOX in definition.geometry:
        return Geometry.BOX, {"box": label.data["box"]}
    geometry = _AS_SCHEMA.get(label.geometry)
    if geometry is None or geometry not in definition.geometry:
        extent = (
            " (an ellipse or a polygon counts as its extent where a label takes a box)"
            if label.geometry in _EXTENT_OF
            else ""
        )
        raise BadRequest(
            f"{where}: a {label.geometry.value} is not allowed for {definition.key!r} in project "
            f"{project!r}; it takes {allowed}{extent}"
        )
    return geometry, label.data


def _unprefixed(error: BadRequest, index: int) -> str:
    """A label check's message without its JSON path's ``labels[i].`` (the object is named instead)."""
    return error.message.removeprefix(f"labels[{index}].").removeprefix(f"labels[{index}]")


def _referenced_images(ds: Dataset) -> list[str]:
    """The SOP Instance UIDs a SEG's Referenced Series Sequence (0008,1115) names."""
    return list(dict.fromkeys(_walk_references(ds)))


def _walk_references(ds: Dataset) -> Iterator[str]:
    for series in ds.get("ReferencedSeriesSequence") or []:
        for instance in series.get("ReferencedInstanceSequence") or []:
            uid = instance.get("ReferencedSOPInstanceUID")
            if uid:
                yield str(uid)
