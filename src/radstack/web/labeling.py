"""Labeling projects and reader tasks over HTTP: the API at ``/api/v1/labeling`` and the ``/labeling`` page.

Routes are thin over :class:`radstack.labeling.projects.ProjectService`, which checks who may do what
(membership of the project, through the policy) and audits every change:

* ``POST /api/v1/labeling/projects``: make a project (``manage-datasets``; 201), ``GET`` the caller's
  projects; ``GET /api/v1/labeling/projects/{name}`` with its progress; ``POST …/{name}/close`` (owner);
* ``GET /api/v1/labeling/tasks?project=&state=``: the caller's tasks (a reviewer or the owner of
  ``project``: all of its tasks); ``GET /api/v1/labeling/tasks/next?project=``: the caller's next case
  (204 when none is left); ``GET /api/v1/labeling/tasks/{id}``;
* ``GET /api/v1/labeling/tasks/{id}/labels?all=true`` (the current labels, or every revision) and
  ``POST`` with ``{"labels": [...]}`` (replaces the current ones: a new revision);
  ``POST /api/v1/labeling/tasks/{id}/submit`` and ``…/skip``.

The page ``/labeling`` lists the projects the caller takes part in with their progress, the caller's
open tasks with a "Next case" link that opens OHIF on the study, Submit and Skip buttons (plain forms:
POST-redirect-GET), and for a role that may manage data sets a form that makes a project.

A de-identified role names studies and images by their pseudonyms: the UIDs it sends (a cohort, a
label's image) are mapped back to the stored ones, and those it is sent are pseudonyms.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from radstack.errors import BadRequest, Forbidden, NotFound
from radstack.labeling.projects import (
    Assignment,
    Label,
    LabelSet,
    Project,
    ProjectService,
    Task,
    TaskKind,
    TaskState,
)
from radstack.labeling.schema import Geometry
from radstack.security.audit import AuditActionValues
from radstack.security.policy import ActionValues
from radstack.security.views import View
from radstack.web.deps import note, page_or_error, platform_of, principal_of, signed_in_page, view_of

__all__ = ["pages", "router"]

router = APIRouter(tags=["labeling"])
pages = APIRouter(include_in_schema=False)

#: Most tasks in one answer, and on the page.
TASKS_MAX = 10_000
TASKS_SHOWN = 100

#: The schema the page's form starts from (LABELING.md's example).
EXAMPLE_SCHEMA = """{"labels": [
  {"key": "fracture", "code": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
   "geometry": ["box", "point", "class"], "laterality": true, "site": true},
  {"key": "dislocation", "code": {"value": "87642003", "scheme": "SCT", "meaning": "Dislocation of joint"},
   "geometry": ["box", "class"]}
]}"""


# ----------------------------------------------------------------------------- bodies
class ProjectIn(BaseModel):
    """A new project; the service checks every field and names the one it refuses."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(examples=["wrist-fractures"], description="[a-z0-9][a-z0-9._-]{0,63}")
    description: str = ""
    label_schema: dict[str, Any] = Field(
        alias="schema", description='the coded labels: {"labels": [{"key", "code", "geometry", …}]}'
    )
    cohort: dict[str, str | list[str]] | list[str] = Field(
        description="a QIDO-style study query ({'ModalitiesInStudy': 'DX'}) or a list of StudyInstanceUIDs"
    )
    readers: list[str]
    reviewers: list[str] = Field(default_factory=list)
    readers_per_item: int = Field(default=1, description="1 to 9, at most the number of readers")
    blinded: bool = True
    show_ai: bool = False
    assignment: Assignment = Assignment.ROUND_ROBIN
    due_at: datetime | None = None


class ProgressOut(BaseModel):
    items: int
    tasks: dict[str, int] = Field(description="tasks by state")
    done: int = Field(description="tasks submitted or skipped")
    total: int


class ProjectOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: int
    name: str
    description: str
    label_schema: dict[str, Any] = Field(alias="schema")
    cohort: dict[str, Any] = Field(description="how the cohort was chosen; its studies are the items")
    readers_per_item: int
    blinded: bool
    show_ai: bool
    assignment: Assignment
    due_at: datetime | None
    owner: str
    readers: list[str]
    reviewers: list[str]
    state: str
    created_at: datetime
    closed_at: datetime | None
    progress: ProgressOut
    member: list[str] = Field(description="the caller's parts in it: owner, reviewer, reader")
    mine: dict[str, int] = Field(description="the caller's own tasks by state")

    @classmethod
    def of(cls, project: Project) -> ProjectOut:
        progress = project.progress
        return cls(
            id=project.id,
            name=project.name,
            description=project.description,
            label_schema=project.schema.to_json(),
            cohort=project.cohort,
            readers_per_item=project.readers_per_item,
            blinded=project.blinded,
            show_ai=project.show_ai,
            assignment=project.assignment,
            due_at=project.due_at,
            owner=project.owner,
            readers=list(project.readers),
            reviewers=list(project.reviewers),
            state=project.state.value,
            created_at=project.created_at,
            closed_at=project.closed_at,
            progress=ProgressOut(
                items=progress.items, tasks=progress.tasks, done=progress.done, total=progress.total
            ),
            member=[m.value for m in project.member],
            mine=project.mine,
        )


class TaskOut(BaseModel):
    id: int
    project: str
    position: int = Field(description="the item's place in the project's order (0, 1, …)")
    study_uid: str
    sop_uid: str | None = Field(description="the study's one image, when it has exactly one")
    reader: str
    kind: TaskKind
    state: TaskState
    due_at: datetime | None
    assigned_at: datetime
    submitted_at: datetime | None
    revision: int = Field(description="the revision of its current labels (0: none yet)")
    viewer_url: str = Field(description="where OHIF opens the study")

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        fields = {name: getattr(task, name) for name in cls.model_fields}
        return cls.model_validate(fields)


class LabelOut(BaseModel):
    id: int
    task_id: int | None
    reader: str
    label: str = Field(description="the schema label's key")
    geometry: Geometry
    data: dict[str, Any]
    value: str | None
    sop_uid: str
    frame: int | None
    laterality: str | None
    site: str | None
    source: str
    source_uid: str | None
    revision: int
    created_at: datetime
    superseded_at: datetime | None

    @classmethod
    def of(cls, label: Label) -> LabelOut:
        fields = {name: getattr(label, name) for name in cls.model_fields}
        return cls.model_validate({**fields, "source": label.source.value})


class LabelSetOut(BaseModel):
    task_id: int
    revision: int = Field(description="the task's current revision")
    labels: list[LabelOut]

    @classmethod
    def of(cls, labels: LabelSet, view: View) -> LabelSetOut:
        uid = view.deid.uid if view.deid is not None else None
        return cls(
            task_id=labels.task_id,
            revision=labels.revision,
            labels=[LabelOut.of(label.shown(uid) if uid else label) for label in labels.labels],
        )


class LabelsIn(BaseModel):
    labels: list[Any] = Field(
        description='each {"label", "geometry", "data", "sop_uid", "frame"?, "laterality"?, "site"?, "value"?}',
        examples=[
            [
                {
                    "label": "fracture",
                    "geometry": "box",
                    "data": {"box": [120, 80, 180, 150]},
                    "sop_uid": "1.2.3.4",
                    "laterality": "L",
                }
            ]
        ],
    )


# ----------------------------------------------------------------------------- helpers
def _service(request: Request) -> ProjectService:
    return platform_of(request).labeling


def _stored_uid(view: View, level: str, uid: str) -> str:
    """The stored UID a de-identified caller names by its pseudonym (an unknown one is kept: the
    service then says it is not stored)."""
    try:
        return view.real_uid(level, uid)
    except NotFound:
        return uid


def _stored_cohort(view: View, cohort: Any) -> Any:
    if view.deid is None:
        return cohort
    if isinstance(cohort, dict):
        pairs = [
            (key, v) for key, value in cohort.items() for v in (value if isinstance(value, list) else [value])
        ]
        mapped: dict[str, Any] = {}
        for key, value in view.query(pairs):
            mapped.setdefault(key, []).append(value)
        return {key: values[0] if len(values) == 1 else values for key, values in mapped.items()}
    return [_stored_uid(view, "study", uid) if isinstance(uid, str) else uid for uid in cohort]


def _stored_labels(view: View, labels: list[Any]) -> list[Any]:
    if view.deid is None:
        return labels
    return [
        {**label, "sop_uid": _stored_uid(view, "instance", label["sop_uid"])}
        if isinstance(label, dict) and isinstance(label.get("sop_uid"), str)
        else label
        for label in labels
    ]


def _task_out(request: Request, task: Task) -> TaskOut:
    view = view_of(request)
    return TaskOut.of(task.shown(view.deid.uid) if view.deid is not None else task)


def _create(request: Request, name: str, cohort: Any, **fields: Any) -> Project:
    """Make the project (``fields``: as :meth:`ProjectService.create` takes them), its cohort's UIDs
    mapped back from a de-identified caller's pseudonyms."""
    cohort = _stored_cohort(view_of(request), cohort)
    return _service(request).create(principal_of(request), name, cohort=cohort, **fields)


# ----------------------------------------------------------------------------- API: projects
@router.post(
    "/labeling/projects",
    response_model=ProjectOut,
    status_code=201,
    summary="Make a labeling project: freeze its cohort and assign every item's readers",
)
def create_project(request: Request, body: ProjectIn) -> ProjectOut:
    fields = body.model_dump(exclude={"name", "cohort", "label_schema"})
    return ProjectOut.of(_create(request, body.name, body.cohort, schema=body.label_schema, **fields))


@router.get(
    "/labeling/projects",
    response_model=list[ProjectOut],
    summary="The labeling projects you take part in, newest first, with their progress",
)
def list_projects(request: Request) -> list[ProjectOut]:
    note(request, AuditActionValues.READ, labeling="projects")
    return [ProjectOut.of(project) for project in _service(request).list(principal_of(request))]


@router.get(
    "/labeling/projects/{name}",
    response_model=ProjectOut,
    summary="A labeling project with its progress (items, tasks by state)",
)
def get_project(request: Request, name: str) -> ProjectOut:
    note(request, AuditActionValues.READ, labeling_project=name)
    return ProjectOut.of(_service(request).get(principal_of(request), name))


@router.post(
    "/labeling/projects/{name}/close",
    response_model=ProjectOut,
    summary="Close a labeling project (its owner): its tasks take no more labels",
)
def close_project(request: Request, name: str) -> ProjectOut:
    return ProjectOut.of(_service(request).close(principal_of(request), name))


# ----------------------------------------------------------------------------- API: tasks
@router.get(
    "/labeling/tasks",
    response_model=list[TaskOut],
    summary="Your tasks (a reviewer or the owner of 'project': all of its tasks), oldest first",
)
def list_tasks(
    request: Request,
    project: str | None = None,
    state: str | None = None,
    offset: int = 0,
    limit: int = 1000,
) -> list[TaskOut]:
    note(request, AuditActionValues.READ, labeling="tasks", labeling_project=project)
    if offset < 0 or not 0 < limit <= TASKS_MAX:
        raise BadRequest(f"offset {offset} and limit {limit}: offset is 0 or more, limit 1 to {TASKS_MAX}")
    tasks = _service(request).tasks_of(principal_of(request), project, state, offset=offset, limit=limit)
    return [_task_out(request, task) for task in tasks]


@router.get(
    "/labeling/tasks/next",
    response_model=TaskOut,
    summary="Your next case: the oldest assigned task, first by item position (204: none left)",
    responses={204: {"description": "no task is waiting for you"}},
)
def next_task(request: Request, project: str | None = None) -> Response | TaskOut:
    note(request, AuditActionValues.READ, labeling="next-task", labeling_project=project)
    task = _service(request).next_task(principal_of(request), project)
    return Response(status_code=204) if task is None else _task_out(request, task)


@router.get("/labeling/tasks/{task_id}", response_model=TaskOut, summary="One task")
def get_task(request: Request, task_id: int) -> TaskOut:
    note(request, AuditActionValues.READ, labeling_task=task_id)
    return _task_out(request, _service(request).task(principal_of(request), task_id))


@router.get(
    "/labeling/tasks/{task_id}/labels",
    response_model=LabelSetOut,
    summary="A task's current labels (all=true: every revision, oldest first)",
)
def task_labels(
    request: Request, task_id: int, all_revisions: bool = Query(False, alias="all")
) -> LabelSetOut:
    note(request, AuditActionValues.READ, labeling_task=task_id)
    labels = _service(request).labels_of(principal_of(request), task_id, history=all_revisions)
    return LabelSetOut.of(labels, view_of(request))


@router.post(
    "/labeling/tasks/{task_id}/labels",
    response_model=LabelSetOut,
    summary="Replace your task's labels (a new revision; the previous ones are kept, superseded)",
)
def submit_labels(request: Request, task_id: int, body: LabelsIn) -> LabelSetOut:
    view = view_of(request)
    labels = _service(request).submit_labels(
        principal_of(request), task_id, _stored_labels(view, body.labels)
    )
    return LabelSetOut.of(labels, view)


@router.post("/labeling/tasks/{task_id}/submit", response_model=TaskOut, summary="Submit your task")
def submit_task(request: Request, task_id: int) -> TaskOut:
    return _task_out(request, _service(request).submit(principal_of(request), task_id))


@router.post("/labeling/tasks/{task_id}/skip", response_model=TaskOut, summary="Skip your task")
def skip_task(request: Request, task_id: int) -> TaskOut:
    return _task_out(request, _service(request).skip(principal_of(request), task_id))


# ----------------------------------------------------------------------------- page
def _done(message: str) -> RedirectResponse:
    return RedirectResponse(f"/labeling?{urlencode({'done': message})}", status_code=303)


@pages.get("/labeling", response_class=HTMLResponse)
def labeling_page(request: Request, done: str = "") -> Response:
    """The caller's labeling: their projects with progress, their open tasks and the next case."""

    def build() -> Response:
        note(request, AuditActionValues.READ, labeling="page")
        service, principal = _service(request), principal_of(request)
        policy = platform_of(request).policy
        can_label = policy.allows(principal, ActionValues.LABEL)
        can_create = policy.allows(principal, ActionValues.MANAGE_DATASETS)
        try:
            projects = service.list(principal)
        except Forbidden:
            projects = []
        view = view_of(request)
        tasks: list[Task] = []
        upcoming: Task | None = None
        if can_label:
            tasks = service.tasks_of(principal, state=TaskState.ASSIGNED, limit=TASKS_SHOWN)
            upcoming = service.next_task(principal)
        if view.deid is not None:
            tasks = [task.shown(view.deid.uid) for task in tasks]
            upcoming = upcoming.shown(view.deid.uid) if upcoming is not None else None
        return signed_in_page(
            request,
            "labeling.html",
            projects=projects,
            tasks=tasks,
            next_task=upcoming,
            can_label=can_label,
            can_create=can_create,
            assignments=[a.value for a in Assignment],
            example_schema=EXAMPLE_SCHEMA,
            done=done,
        )

    return page_or_error(request, "Labeling", build)


def _names(text: str) -> list[str]:
    return [name for name in text.replace(",", " ").split() if name]


def _form_cohort(text: str) -> dict[str, str | list[str]] | list[str]:
    """The form's cohort: a query string (``ModalitiesInStudy=DX&StudyDate=20240101-``) or UIDs, one a line."""
    if "=" not in text:
        return text.split()
    query: dict[str, str | list[str]] = {}
    for key, value in parse_qsl(text.strip(), keep_blank_values=True):
        before = query.get(key)
        query[key] = value if before is None else [*([before] if isinstance(before, str) else before), value]
    return query


def _form_due(text: str) -> datetime | None:
    """The end of the given day (UTC), from the form's date field.

    Raises
    ------
    BadRequest
        Not a date.
    """
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise BadRequest(f"due date {text!r} is not a date (YYYY-MM-DD)") from None
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC)


@pages.post("/labeling/projects", response_model=None)
def create_project_form(
    request: Request,
    name: str = Form(""),
    description: str = Form(""),
    label_schema: str = Form("", alias="schema"),
    cohort: str = Form(""),
    readers: str = Form(""),
    reviewers: str = Form(""),
    readers_per_item: int = Form(1),
    assignment: str = Form(Assignment.ROUND_ROBIN.value),
    blinded: str = Form(""),
    show_ai: str = Form(""),
    due: str = Form(""),
) -> Response:
    """Make a project from the page's form, then show the page again (POST-redirect-GET)."""

    def build() -> Response:
        try:
            document = json.loads(label_schema)
        except ValueError as error:
            raise BadRequest(f"the schema is not JSON: {error}") from None
        project = _create(
            request,
            name,
            _form_cohort(cohort),
            schema=document,
            readers=_names(readers),
            reviewers=_names(reviewers),
            description=description,
            readers_per_item=readers_per_item,
            assignment=assignment,
            blinded=bool(blinded),
            show_ai=bool(show_ai),
            due_at=_form_due(due),
        )
        made = f"{project.progress.items} studies, {project.progress.total} tasks"
        return _done(f"Project {project.name} made: {made}")

    return page_or_error(request, "Labeling", build)


@pages.post("/labeling/tasks/{task_id}/{action}", response_model=None)
def task_form(request: Request, task_id: int, action: str) -> Response:
    """Submit or skip a task from the page, then show the page again (POST-redirect-GET)."""

    def build() -> Response:
        service, principal = _service(request), principal_of(request)
        if action == "submit":
            task = service.submit(principal, task_id)
        elif action == "skip":
            task = service.skip(principal, task_id)
        else:
            raise NotFound(f"no action {action!r} on a task; submit or skip")
        return _done(f"Task {task.id} ({task.project}, case {task.position + 1}): {task.state.value}")

    return page_or_error(request, "Labeling", build)
