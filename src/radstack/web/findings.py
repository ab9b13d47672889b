"""AI results and their review over HTTP: the API at ``/api/v1`` and the study's AI page.

Routes are thin over :class:`radstack.ai.findings.AiResults`:

* ``GET /api/v1/studies/{study}/ai-results``: the study's current results, each finding with its
  current review (``read-metadata`` on the study);
* ``POST /api/v1/ai-results/{id}/findings/{index}/review`` with ``{"decision": "accepted"|"rejected",
  "comment": ""}`` (``label`` on the study; 404 for an unknown result or finding, 409 for a superseded
  result, 400 for another decision);
* ``GET /api/v1/ai-labels?model=&decision=&since=``: reviewed findings as labels (``label`` or
  ``read-datasets``);
* ``GET /api/v1/models/{name}/score-distribution?days=``: the scores per version per day (``read-models``).

Pages: ``/studies/{study}/ai`` lists each current result and its findings on their images with Accept
and Reject buttons (plain forms posting to ``/ai-results/{id}/findings/{index}/review``, then back:
POST-redirect-GET; the auth middleware's same-origin check guards a cookie POST).

A de-identified role sees pseudonymous UIDs and no review comments in every answer, as in the rest of
the API; the UIDs it names in a path are mapped back by the auth middleware.
"""

from __future__ import annotations

from datetime import date, datetime
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from radstack.ai.findings import (
    SCORE_BINS,
    AiResults,
    FindingRecord,
    Label,
    PriorityLevel,
    ResultRecord,
    Review,
    ReviewDecision,
    ScoreDay,
)
from radstack.errors import BadRequest, NotFound
from radstack.security.policy import ActionValues
from radstack.web.deps import (
    authorize,
    guard,
    page_or_error,
    platform_of,
    principal_of,
    signed_in_page,
    view_of,
)

__all__ = ["pages", "router"]

router = APIRouter(tags=["AI results"])
pages = APIRouter(include_in_schema=False)

#: Most labels in one answer.
LABELS_MAX = 10_000


class ReviewOut(BaseModel):
    result_id: int
    index: int
    decision: ReviewDecision
    reviewed_by: str
    role: str
    comment: str = Field(description="empty in a de-identified view")
    reviewed_at: datetime

    @classmethod
    def of(cls, review: Review) -> ReviewOut:
        return cls.model_validate(review, from_attributes=True)


class FindingOut(BaseModel):
    index: int
    label: str
    probability: float
    box: tuple[float, float, float, float] = Field(description="[x0, y0, x1, y1] in pixels of the image")
    sop_uid: str
    series_uid: str
    tracking_uid: str = Field(description="its Tracking Unique Identifier in the SR")
    level: PriorityLevel
    review: ReviewOut | None = Field(description="the current decision; null while unreviewed")

    @classmethod
    def of(cls, finding: FindingRecord, review: Review | None) -> FindingOut:
        fields = {name: getattr(finding, name) for name in cls.model_fields if name != "review"}
        return cls.model_validate({**fields, "review": ReviewOut.of(review) if review else None})


class ResultOut(BaseModel):
    id: int
    study_uid: str
    model: str
    model_version: int
    probability: float = Field(description="the study-level probability")
    priority: int = Field(description="0–100: urgent 80–100, high 50–79, routine 0–49")
    level: PriorityLevel
    findings: list[FindingOut]
    input_key: str
    sr_series_uid: str | None
    sr_sop_uid: str | None
    trigger: str
    job_id: str | None
    created_at: datetime
    superseded_at: datetime | None

    @classmethod
    def of(cls, result: ResultRecord) -> ResultOut:
        fields = {name: getattr(result, name) for name in cls.model_fields if name != "findings"}
        findings = [FindingOut.of(f, result.reviews.get(f.index)) for f in result.findings]
        return cls.model_validate({**fields, "findings": findings})


class ReviewIn(BaseModel):
    decision: str = Field(examples=["accepted"], description="accepted or rejected")
    comment: str = Field(default="", max_length=4000)


class LabelOut(BaseModel):
    study_uid: str
    series_uid: str
    sop_uid: str
    tracking_uid: str
    box: tuple[float, float, float, float] = Field(description="[x0, y0, x1, y1] in pixels of the image")
    label: str
    decision: ReviewDecision
    model: str
    model_version: int
    probability: float
    result_id: int
    index: int
    reviewed_by: str
    role: str
    comment: str = Field(description="empty in a de-identified view")
    reviewed_at: datetime

    @classmethod
    def of(cls, label: Label) -> LabelOut:
        return cls.model_validate(label, from_attributes=True)


class ScoreDayOut(BaseModel):
    model_version: int
    day: date
    n: int = Field(description="runs recorded that day")
    studies: int = Field(description="distinct studies they scored")
    mean: float
    bins: list[int] = Field(description=f"counts in {SCORE_BINS} bins: [0, 0.1), …, [0.9, 1]")

    @classmethod
    def of(cls, day: ScoreDay) -> ScoreDayOut:
        return cls.model_validate(day, from_attributes=True)


class ScoreDistributionOut(BaseModel):
    model: str
    days: int
    bin_edges: list[float]
    scores: list[ScoreDayOut] = Field(description="newest version first, then newest day first")


def _results(request: Request) -> AiResults:
    return platform_of(request).ai_results


def _current(request: Request, study: str) -> list[ResultRecord]:
    """The study's current results; none for a reader that labeling's blinding keeps from the AI."""
    if view_of(request).ai_hidden([study]):
        return []
    return _results(request).current(study)


def _shown_results(request: Request, study: str) -> list[ResultRecord]:
    view = view_of(request)
    return [result.shown(view) for result in _current(request, study)]


# ----------------------------------------------------------------------------- API
@router.get(
    "/studies/{study}/ai-results",
    response_model=list[ResultOut],
    summary="A study's current AI results, each finding with its current review",
)
def study_results(request: Request, study: str) -> list[ResultOut]:
    guard(request, ActionValues.READ_METADATA, study)
    platform_of(request).store.require_study(study)
    return [ResultOut.of(result) for result in _shown_results(request, study)]


@router.post(
    "/ai-results/{result_id}/findings/{index}/review",
    response_model=ReviewOut,
    summary="Accept or reject a finding of a current AI result (replaces an earlier decision)",
)
def review_finding(request: Request, result_id: int, index: int, body: ReviewIn) -> ReviewOut:
    _result, review = _review(request, result_id, index, body.decision, body.comment)
    return ReviewOut.of(review.shown(view_of(request)))


def _review(
    request: Request, result_id: int, index: int, decision: str, comment: str
) -> tuple[ResultRecord, Review]:
    """The caller's decision on finding ``index`` of result ``result_id`` (``label`` on its study)."""
    results = _results(request)
    result = results.get(result_id)
    authorize(request, ActionValues.LABEL, study=result.study_uid, ai_result=result_id, finding=index)
    if view_of(request).ai_hidden([result.study_uid]):
        raise NotFound(f"AI result {result_id} not found")
    return result, results.review(result_id, index, decision, by=principal_of(request), comment=comment)


@router.get(
    "/ai-labels",
    response_model=list[LabelOut],
    summary="Reviewed AI findings as labels, oldest review first (label or read-datasets)",
)
def ai_labels(
    request: Request,
    model: str | None = None,
    decision: str | None = None,
    since: datetime | None = None,
    offset: int = 0,
    limit: int = 1000,
) -> list[LabelOut]:
    principal, policy = principal_of(request), platform_of(request).policy
    readable = policy.allows(principal, ActionValues.READ_DATASETS)
    authorize(request, ActionValues.READ_DATASETS if readable else ActionValues.LABEL, labels="ai")
    if offset < 0 or not 0 < limit <= LABELS_MAX:
        raise BadRequest(f"offset {offset} and limit {limit}: offset is 0 or more, limit 1 to {LABELS_MAX}")
    labels = _results(request).labels(
        model=model,
        decision=decision,
        since=since,
        scope=policy.study_condition(principal),
        offset=offset,
        limit=limit,
    )
    view = view_of(request)
    hidden = view.ai_hidden(label.study_uid for label in labels)
    return [LabelOut.of(label.shown(view)) for label in labels if label.study_uid not in hidden]


@router.get(
    "/models/{name}/score-distribution",
    response_model=ScoreDistributionOut,
    summary="A model's study-level scores per version per day (drift)",
)
def score_distribution(request: Request, name: str, days: int = 30) -> ScoreDistributionOut:
    authorize(request, ActionValues.READ_MODELS, model=name)
    if not 0 < days <= 366:
        raise BadRequest(f"days {days} must be 1 to 366")
    platform_of(request).models.model(name)  # 404 for a model that is not registered
    found = _results(request).score_distribution(name, days=days)
    return ScoreDistributionOut(
        model=name,
        days=days,
        bin_edges=[i / SCORE_BINS for i in range(SCORE_BINS + 1)],
        scores=[ScoreDayOut.of(day) for day in found],
    )


# ----------------------------------------------------------------------------- pages
def _image_sizes(request: Request, study: str, results: list[ResultRecord]) -> dict[str, tuple[int, int]]:
    """Columns and rows of each image a finding is on (by stored SOP Instance UID), to draw its box."""
    store, sizes = platform_of(request).store, {}
    for sop, series in {(f.sop_uid, f.series_uid) for r in results for f in r.findings}:
        try:
            pixel = store.get_instance(study, series, sop).pixel
        except NotFound:  # replaced or deleted since the run: the finding is listed without its image
            continue
        if pixel is not None:
            sizes[sop] = (pixel.columns, pixel.rows)
    return sizes


@pages.get("/studies/{study}/ai", response_class=HTMLResponse)
def study_page(request: Request, study: str, done: str = "") -> Response:
    """The study's current AI results: each finding on its image, its current review, and (for a
    role that may label) Accept and Reject buttons."""

    def build() -> Response:
        guard(request, ActionValues.READ_METADATA, study)
        platform_of(request).store.require_study(study)
        stored = _current(request, study)
        sizes = _image_sizes(request, study, stored)
        view = view_of(request)
        shown = [result.shown(view) for result in stored]
        # The page names images by the UIDs the caller sees; their sizes were found by the stored ones.
        images = {
            (s.id, f.index): sizes.get(r.sop_uid)
            for s, real in zip(shown, stored, strict=True)
            for f, r in zip(s.findings, real.findings, strict=True)
        }
        principal = principal_of(request)
        return signed_in_page(
            request,
            "study_ai.html",
            path="/",
            study_uid=view.deid.uid(study) if view.deid is not None else study,
            results=shown,
            images=images,
            can_label=platform_of(request).policy.allows(principal, ActionValues.LABEL),
            done=done,
        )

    return page_or_error(request, "AI results", build, path="/")


@pages.post("/ai-results/{result_id}/findings/{index}/review", response_model=None)
def review_form(
    request: Request, result_id: int, index: int, decision: str = Form(""), comment: str = Form("")
) -> Response:
    """Accept or reject a finding from the study's AI page, then show the page again (POST-redirect-GET)."""

    def build() -> Response:
        result, review = _review(request, result_id, index, decision, comment)
        view = view_of(request)
        study = view.deid.uid(result.study_uid) if view.deid is not None else result.study_uid
        done = f"Finding {index + 1} of {result.model} v{result.model_version}: {review.decision.value}"
        target = f"/studies/{quote(study)}/ai?{urlencode({'done': done})}#finding-{result_id}-{index}"
        return RedirectResponse(target, status_code=303)

    return page_or_error(request, "AI results", build, path="/")
