"""Review and adjudication of labeling items over HTTP: the API and the ``/labeling/review`` pages.

Routes are thin over :class:`radstack.labeling.review.ReviewService`, which checks who may do what
(the project's membership, through the policy: a task's own reviewer decides, the other reviewers and
the owner may look, a reader is told the task does not exist) and audits every decision:

* ``GET /api/v1/labeling/tasks/{id}/review``: a review or adjudication task's item: every reader's
  labels side by side (rejected ones marked), the proposed consensus with its disagreements and
  agreement, the consensus decided so far, the decisions, the item's review tasks;
* ``POST …/review/accept`` (``{"comment"?}``): the proposal becomes the consensus (labels, an SR and
  SEGs in the study); ``POST …/review/edit`` (``{"labels": [...], "comment"?}``): these labels do;
  ``POST …/review/reject`` and ``…/review/restore`` (``{"labels": [label ids], "comment"?}``);
  each answers the review as it is then;
* ``GET /api/v1/labeling/projects/{name}/consensus-rules``, ``PUT`` (its owner) with the rules.

Pages: ``/labeling/review`` lists the caller's review and adjudication tasks; ``/labeling/review/{id}``
shows the readers' labels side by side with Reject / Restore buttons, the proposed consensus with
Accept, an Edit form (the consensus as JSON), and a link that opens the study in OHIF. Forms post to
``/labeling/review/{id}/{action}`` and come back (POST-redirect-GET).

A de-identified role sees pseudonymous UIDs, and the images it names in an edit are mapped back.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import dataclass, fields, replace
from datetime import datetime
from itertools import cycle
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from radstack.errors import BadRequest, NotFound
from radstack.labeling.projects import Label, Task, TaskKind, TaskState
from radstack.labeling.proposal import ConsensusRules
from radstack.labeling.review import DecisionRecord, ItemReview, ReviewService
from radstack.labeling.schema import Geometry
from radstack.security.audit import AuditActionValues
from radstack.security.views import View
from radstack.web.deps import note, page_or_error, platform_of, principal_of, signed_in_page, view_of
from radstack.web.labeling import LabelOut

__all__ = ["pages", "router"]

router = APIRouter(tags=["labeling"])
pages = APIRouter(include_in_schema=False)

#: Review tasks listed on the page.
TASKS_SHOWN = 200


# ----------------------------------------------------------------------------- bodies
class ReviewTaskOut(BaseModel):
    id: int
    project: str
    kind: TaskKind
    reader: str = Field(description="the reviewer or adjudicator it is given to")
    state: TaskState
    position: int
    study_uid: str
    sop_uid: str | None
    viewer_url: str
    revision: int = Field(description="the revision of its consensus labels (0: none decided)")
    assigned_at: datetime
    submitted_at: datetime | None

    @classmethod
    def of(cls, task: Task) -> ReviewTaskOut:
        return cls.model_validate({name: getattr(task, name) for name in cls.model_fields})


class ReviewLabelOut(LabelOut):
    """A reader's (or the consensus') label as a reviewer sees it."""

    rejected: bool = Field(description="a reviewer rejected it: it is left out of the proposal")

    @classmethod
    def of(cls, label: Label, rejected: bool = False) -> ReviewLabelOut:
        return cls.model_validate({**LabelOut.of(label).model_dump(), "rejected": rejected})


class ReaderOut(BaseModel):
    reader: str
    task_id: int
    state: TaskState
    labels: list[ReviewLabelOut]


class ProposedOut(BaseModel):
    label: str
    geometry: Geometry
    data: dict[str, Any]
    value: str | None
    sop_uid: str
    frame: int | None
    laterality: str | None
    site: str | None
    readers: list[str] = Field(description="the readers behind it")
    members: list[int] = Field(description="the ids of their labels")


class DisagreementOut(BaseModel):
    kind: str = Field(description="tie, quorum or agreement")
    label: str
    geometry: Geometry
    sop_uid: str
    frame: int | None
    readers: list[str]
    members: list[int]
    detail: str


class ProposalOut(BaseModel):
    labels: list[ProposedOut]
    disagreements: list[DisagreementOut]
    needs_adjudication: bool
    agreement: float | None = Field(description="the lowest per-question agreement (Fleiss' P_i)")
    voters: list[str] = Field(description="readers who submitted (a skipped read gives no vote)")
    quorum: int
    unfused: list[int] = Field(description="ids of point and line labels no rule combines")


class DecisionOut(BaseModel):
    id: int
    task_id: int
    reviewer: str
    decision: str
    label_id: int | None
    revision: int | None
    comment: str
    created_at: datetime


class ConsensusOut(BaseModel):
    revision: int
    labels: list[ReviewLabelOut]


class ReviewOut(BaseModel):
    task: ReviewTaskOut
    rules: dict[str, Any]
    readers: list[ReaderOut]
    proposal: ProposalOut
    consensus: ConsensusOut = Field(description="this task's consensus labels, as decided")
    decisions: list[DecisionOut] = Field(description="every decision on the item, oldest first")
    tasks: list[ReviewTaskOut] = Field(description="the item's review and adjudication tasks")
    adjudication: int | None = Field(description="the item's adjudication task, if it has one")


class DecisionIn(BaseModel):
    comment: str = Field(default="", max_length=4000)


class EditIn(BaseModel):
    labels: list[Any] = Field(description="the consensus labels, as the JSON label API takes them")
    comment: str = Field(default="", max_length=4000)


class MarkIn(BaseModel):
    labels: list[Any] = Field(description="ids of readers' labels")
    comment: str = Field(default="", max_length=4000)


# ----------------------------------------------------------------------------- shaping
def _service(request: Request) -> ReviewService:
    return platform_of(request).review


def _shown(view: View, review: ItemReview) -> ItemReview:
    """``review`` with pseudonymous UIDs for a de-identified view (labels, proposal, tasks)."""
    deid = view.deid
    if deid is None:
        return review
    uid = deid.uid
    proposal = review.proposal
    return replace(
        review,
        task=review.task.shown(uid),
        reads=tuple(replace(r, labels=tuple(label.shown(uid) for label in r.labels)) for r in review.reads),
        proposal=replace(
            proposal,
            labels=tuple(replace(p, sop_uid=uid(p.sop_uid)) for p in proposal.labels),
            disagreements=tuple(replace(d, sop_uid=uid(d.sop_uid)) for d in proposal.disagreements),
        ),
        consensus=replace(
            review.consensus, labels=tuple(label.shown(uid) for label in review.consensus.labels)
        ),
        tasks=tuple(task.shown(uid) for task in review.tasks),
    )


def _fields(record: Any) -> dict[str, Any]:
    """A dataclass's fields, shallow (its values as they are)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _out(review: ItemReview) -> ReviewOut:
    proposal = review.proposal
    adjudication = review.adjudication
    return ReviewOut(
        task=ReviewTaskOut.of(review.task),
        rules=review.rules.to_json(),
        readers=[
            ReaderOut(
                reader=r.reader,
                task_id=r.task_id,
                state=r.state,
                labels=[ReviewLabelOut.of(label, label.id in r.rejected) for label in r.labels],
            )
            for r in review.reads
        ],
        proposal=ProposalOut(
            labels=[ProposedOut.model_validate(_fields(p)) for p in proposal.labels],
            disagreements=[
                DisagreementOut.model_validate({**_fields(d), "kind": d.kind.value})
                for d in proposal.disagreements
            ],
            needs_adjudication=proposal.needs_adjudication,
            agreement=proposal.agreement,
            voters=list(proposal.voters),
            quorum=proposal.quorum,
            unfused=list(proposal.unfused),
        ),
        consensus=ConsensusOut(
            revision=review.consensus.revision,
            labels=[ReviewLabelOut.of(label) for label in review.consensus.labels],
        ),
        decisions=[_decision(d) for d in review.decisions],
        tasks=[ReviewTaskOut.of(task) for task in review.tasks],
        adjudication=adjudication.id if adjudication is not None else None,
    )


def _decision(record: DecisionRecord) -> DecisionOut:
    return DecisionOut.model_validate({**_fields(record), "decision": record.decision.value})


def _answer(request: Request, review: ItemReview) -> ReviewOut:
    return _out(_shown(view_of(request), review))


def _stored_labels(view: View, labels: list[Any]) -> list[Any]:
    """The labels of an edit with the images a de-identified caller names by pseudonym mapped back."""
    if view.deid is None:
        return labels
    mapped = []
    for label in labels:
        if isinstance(label, dict) and isinstance(label.get("sop_uid"), str):
            # An unknown pseudonym is kept: the service then says it is no image of the study.
            with suppress(NotFound):
                label = {**label, "sop_uid": view.real_uid("instance", label["sop_uid"])}
        mapped.append(label)
    return mapped


# ----------------------------------------------------------------------------- API
@router.get(
    "/labeling/tasks/{task_id}/review",
    response_model=ReviewOut,
    summary="A review or adjudication: every reader's labels side by side and the proposed consensus",
)
def get_review(request: Request, task_id: int) -> ReviewOut:
    note(request, AuditActionValues.READ, labeling_task=task_id, labeling="review")
    return _answer(request, _service(request).review(principal_of(request), task_id))


@router.post(
    "/labeling/tasks/{task_id}/review/accept",
    response_model=ReviewOut,
    summary="Accept the proposed consensus: the item's consensus labels, SR and SEG",
)
def accept(request: Request, task_id: int, body: DecisionIn | None = None) -> ReviewOut:
    comment = body.comment if body is not None else ""
    return _answer(request, _service(request).accept(principal_of(request), task_id, comment))


@router.post(
    "/labeling/tasks/{task_id}/review/edit",
    response_model=ReviewOut,
    summary="Decide the item's consensus labels yourself (checked as a reader's labels are)",
)
def edit(request: Request, task_id: int, body: EditIn) -> ReviewOut:
    labels = _stored_labels(view_of(request), body.labels)
    return _answer(request, _service(request).edit(principal_of(request), task_id, labels, body.comment))


@router.post(
    "/labeling/tasks/{task_id}/review/reject",
    response_model=ReviewOut,
    summary="Reject readers' labels: kept with the decision, left out of the consensus",
)
def reject(request: Request, task_id: int, body: MarkIn) -> ReviewOut:
    return _answer(
        request, _service(request).reject(principal_of(request), task_id, body.labels, body.comment)
    )


@router.post(
    "/labeling/tasks/{task_id}/review/restore",
    response_model=ReviewOut,
    summary="Take back the rejection of readers' labels",
)
def restore(request: Request, task_id: int, body: MarkIn) -> ReviewOut:
    return _answer(
        request, _service(request).restore(principal_of(request), task_id, body.labels, body.comment)
    )


@router.get(
    "/labeling/projects/{name}/consensus-rules",
    response_model=dict[str, Any],
    summary="A project's consensus rules",
)
def get_rules(request: Request, name: str) -> dict[str, Any]:
    note(request, AuditActionValues.READ, labeling_project=name, labeling="consensus-rules")
    return _service(request).rules(principal_of(request), name).to_json()


@router.put(
    "/labeling/projects/{name}/consensus-rules",
    response_model=dict[str, Any],
    summary="Set a project's consensus rules (its owner); fields left out take their defaults",
    description=f"The rules, e.g. `{json.dumps(ConsensusRules().to_json())}` (the defaults).",
)
def put_rules(
    request: Request,
    name: str,
    body: dict[str, Any],
) -> dict[str, Any]:
    return _service(request).set_rules(principal_of(request), name, body).to_json()


# ----------------------------------------------------------------------------- pages
def _back(task_id: int, message: str) -> RedirectResponse:
    return RedirectResponse(f"/labeling/review/{task_id}?{urlencode({'done': message})}", status_code=303)


#: Each reader's colour on the review page's images (Okabe–Ito, told apart with colour-blindness).
_READER_COLOURS = (
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#F0E442",
    "#0072B2",
    "#D55E00",
    "#CC79A7",
    "#999999",
    "#FFFFFF",
)


@dataclass(frozen=True, slots=True)
class _Box:
    x0: float
    y0: float
    x1: float
    y1: float
    colour: str
    title: str
    proposal: bool = False


@dataclass(frozen=True, slots=True)
class _Figure:
    """One image of the item, rendered, with the boxes on it (readers' and the proposal's)."""

    url: str
    columns: int
    rows: int
    boxes: tuple[_Box, ...]


def _corners(data: dict[str, Any]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(c) for c in data["box"])
    return x0, y0, x1, y1


def _figures(request: Request, review: ItemReview) -> tuple[list[_Figure], dict[str, str]]:
    """The images the readers' boxes (rejected ones left out) and the proposal's lie on, each with its
    boxes, and each reader's colour. ``review`` has the stored UIDs; the image URLs the caller's."""
    colours = dict(zip((r.reader for r in review.reads), cycle(_READER_COLOURS), strict=False))
    on_image: dict[str, list[_Box]] = {}
    for read in review.reads:
        for label in read.labels:
            if "box" in label.data and label.id not in read.rejected:
                on_image.setdefault(label.sop_uid, []).append(
                    _Box(*_corners(label.data), colours[read.reader], f"{read.reader}: {label.label}")
                )
    for proposed in review.proposal.labels:
        if "box" in proposed.data:
            on_image.setdefault(proposed.sop_uid, []).append(
                _Box(*_corners(proposed.data), "#FF0000", f"proposed consensus: {proposed.label}", True)
            )
    view, store = view_of(request), platform_of(request).store
    uid = view.deid.uid if view.deid is not None else str
    study = review.task.study_uid
    figures = []
    for sop, boxes in on_image.items():
        try:
            record = store.get_instance(study, None, sop)
        except NotFound:  # deleted since: the labels are still listed
            continue
        if record.pixel is None:
            continue
        url = (
            f"/dicomweb/studies/{uid(study)}/series/{uid(record.series_uid)}/instances/{uid(sop)}"
            "/rendered?viewport=512,512"
        )
        figures.append(_Figure(url, record.pixel.columns, record.pixel.rows, tuple(boxes)))
    return figures, colours


@pages.get("/labeling/review", response_class=HTMLResponse)
def review_list_page(request: Request) -> Response:
    """The caller's review and adjudication tasks, open ones first."""

    def build() -> Response:
        note(request, AuditActionValues.READ, labeling="review-page")
        principal = principal_of(request)
        tasks = [
            task
            for task in platform_of(request).labeling.tasks_of(principal, limit=10 * TASKS_SHOWN)
            if task.kind is not TaskKind.READ
        ]
        tasks.sort(key=lambda t: (t.state is not TaskState.ASSIGNED, t.assigned_at, t.id))
        view = view_of(request)
        if view.deid is not None:
            tasks = [task.shown(view.deid.uid) for task in tasks]
        return signed_in_page(
            request, "labeling_review_list.html", path="/labeling", tasks=tasks[:TASKS_SHOWN]
        )

    return page_or_error(request, "Review", build, path="/labeling")


@pages.get("/labeling/review/{task_id}", response_class=HTMLResponse)
def review_page(request: Request, task_id: int, done: str = "") -> Response:
    """One item's review: readers' labels side by side, the proposal, Accept / Reject / Edit."""

    def build() -> Response:
        note(request, AuditActionValues.READ, labeling_task=task_id, labeling="review-page")
        principal = principal_of(request)
        stored = _service(request).review(principal, task_id)
        figures, colours = _figures(request, stored)
        review = _shown(view_of(request), stored)
        proposal_json = json.dumps([p.to_json() for p in review.proposal.labels], indent=1)
        return signed_in_page(
            request,
            "labeling_review.html",
            path="/labeling",
            review=review,
            figures=figures,
            colours=colours,
            mine=review.task.reader == principal.subject,
            proposal_json=proposal_json,
            done=done,
        )

    return page_or_error(request, "Review", build, path="/labeling")


@pages.post("/labeling/review/{task_id}/{action}", response_model=None)
def review_form(
    request: Request,
    task_id: int,
    action: str,
    label: int | None = Form(None),
    labels: str = Form(""),
    comment: str = Form(""),
) -> Response:
    """Accept, edit, reject or restore from the review page, then show it again (POST-redirect-GET)."""

    def build() -> Response:
        service, principal = _service(request), principal_of(request)
        if action == "accept":
            service.accept(principal, task_id, comment)
            return _back(task_id, "Consensus accepted")
        if action == "edit":
            try:
                document = json.loads(labels)
            except ValueError as error:
                raise BadRequest(f"the consensus labels are not JSON: {error}") from None
            if not isinstance(document, list):
                raise BadRequest("the consensus labels must be a JSON list of labels")
            service.edit(principal, task_id, _stored_labels(view_of(request), document), comment)
            return _back(task_id, "Consensus saved as edited")
        if action in ("reject", "restore") and label is not None:
            marked = service.reject if action == "reject" else service.restore
            marked(principal, task_id, [label], comment)
            return _back(task_id, f"Label {label} {'rejected' if action == 'reject' else 'restored'}")
        raise NotFound(f"no action {action!r} on a review; accept, edit, reject or restore (with a label)")

    return page_or_error(request, "Review", build, path="/labeling")
