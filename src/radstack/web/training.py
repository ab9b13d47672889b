"""Training jobs over HTTP: the API at ``/api/v1/training-jobs`` and their pages under ``/models``.

Routes are thin over :class:`radstack.ai.training.TrainingService`; every route needs
``manage-models`` (data scientists and admins), which the service checks as well, and it records every
submission and cancellation in the audit trail.

API: ``POST /training-jobs`` (201 and ``Location``; a refusal is a problem naming the data set, the
version, the split or the config field), ``GET /training-jobs`` (``?model=&state=&limit=``),
``GET /training-jobs/{id}`` (state, progress, per-epoch history, attempts, result or error),
``POST /training-jobs/{id}/cancel``.

Pages: ``/models/{name}/training-jobs/{id}`` (one job: progress, every epoch's losses and validation
metrics, the version it registered; a cancel button while it runs). The ``/models`` and
``/models/{name}`` pages list the newest jobs (:mod:`radstack.web.models`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from radstack.ai.training import TrainingJob, TrainingService
from radstack.errors import NotFound
from radstack.jobs.records import JobState
from radstack.security.policy import ActionValues
from radstack.web.deps import authorize, page_or_error, platform_of, principal_of, signed_in_page

__all__ = ["pages", "router"]

router = APIRouter(tags=["training"])
pages = APIRouter(include_in_schema=False)


class TrainingJobIn(BaseModel):
    """A training job: a data set version, the model to register into, the training config."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(examples=["wrist-fractures"])
    dataset_version: int | None = Field(default=None, description="the version (default: the newest)")
    model: str = Field(examples=["fracture"], description="the model the result is a new version of")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="training config: TrainConfig fields (radstack.ai.train), the others take their defaults",
        examples=[{"epochs": 20, "seed": 7, "preprocess": {"size": 512}}],
    )
    description: str = Field(default="", max_length=2000, description="the model's, for its first version")
    client_token: str | None = Field(
        default=None,
        max_length=128,
        description="idempotency token: a retry gets the job the first call made",
    )


class TrainingJobOut(BaseModel):
    id: str
    state: JobState
    dataset: str
    dataset_version: int
    model: str
    description: str
    config: dict[str, Any]
    submitted_by: str
    attempts: int
    max_attempts: int
    progress: dict[str, Any] = Field(
        description="stage (training, evaluating, registering, done), fraction, epoch, epochs, batch, batches, loss"
    )
    epochs: list[dict[str, Any]] = Field(
        description="each finished epoch: epoch, train_loss, learning_rate, validation metrics, seconds"
    )
    runs: list[dict[str, Any]] = Field(description="each attempt: attempt, resumed_from_epoch, device")
    result: dict[str, Any] | None = Field(description="the registered version and its test metrics")
    model_version: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: TrainingJob) -> TrainingJobOut:
        fields = {name: getattr(job, name) for name in cls.model_fields}
        return cls.model_validate(fields)


def _service(request: Request, **resource: Any) -> TrainingService:
    authorize(request, ActionValues.MANAGE_MODELS, **resource)
    return platform_of(request).training


# ----------------------------------------------------------------------------- API
@router.post(
    "/training-jobs",
    response_model=TrainingJobOut,
    status_code=201,
    summary="Train a model on a data set version (a job on the training queue)",
    responses={
        200: {"model": TrainingJobOut, "description": "the job an earlier call with this client_token made"}
    },
)
def submit(request: Request, body: TrainingJobIn) -> JSONResponse:
    service = _service(request, model=body.model, dataset=body.dataset, version=body.dataset_version)
    job, created = service.submit(
        principal_of(request),
        dataset=body.dataset,
        version=body.dataset_version,
        model=body.model,
        config=body.config,
        description=body.description,
        client_token=body.client_token,
    )
    return JSONResponse(
        TrainingJobOut.of(job).model_dump(mode="json"),
        status_code=201 if created else 200,
        headers={"Location": str(request.url_for("get_training_job", job_id=job.id))},
    )


@router.get("/training-jobs", response_model=list[TrainingJobOut], summary="Training jobs, newest first")
def list_training_jobs(
    request: Request, model: str | None = None, state: JobState | None = None, limit: int = 100
) -> list[TrainingJobOut]:
    service = _service(request, model=model)
    jobs = service.find(principal_of(request), model=model, state=state, limit=max(1, min(limit, 1000)))
    return [TrainingJobOut.of(job) for job in jobs]


@router.get(
    "/training-jobs/{job_id}",
    response_model=TrainingJobOut,
    summary="A training job: state, progress, per-epoch history, then the registered version",
)
def get_training_job(request: Request, job_id: str) -> TrainingJobOut:
    return TrainingJobOut.of(_service(request, job=job_id).get(principal_of(request), job_id))


@router.post(
    "/training-jobs/{job_id}/cancel",
    response_model=TrainingJobOut,
    summary="Cancel a queued or running training job (its checkpoint is kept)",
)
def cancel_training_job(request: Request, job_id: str) -> TrainingJobOut:
    return TrainingJobOut.of(_service(request, job=job_id).cancel(principal_of(request), job_id))


# ----------------------------------------------------------------------------- pages
def _job_of_model(request: Request, name: str, job_id: str) -> TrainingJob:
    job = _service(request, model=name, job=job_id).get(principal_of(request), job_id)
    if job.model != name:
        raise NotFound(f"training job {job_id!r} trains model {job.model!r}, not {name!r}")
    return job


@pages.get("/models/{name}/training-jobs/{job_id}", response_class=HTMLResponse)
def training_job_page(request: Request, name: str, job_id: str, done: str = "") -> Response:
    """One training job: its progress, every epoch's losses and validation metrics, its result."""

    def build() -> Response:
        job = _job_of_model(request, name, job_id)
        return signed_in_page(
            request, "training_job.html", path="/models", job=job, done=done, can_manage_models=True
        )

    return page_or_error(request, "Models", build, path="/models")


@pages.post("/models/{name}/training-jobs/{job_id}/cancel", response_model=None)
def cancel_form(request: Request, name: str, job_id: str) -> Response:
    """Cancel from the job's page (POST-redirect-GET)."""

    def build() -> Response:
        _job_of_model(request, name, job_id)
        platform_of(request).training.cancel(principal_of(request), job_id)
        target = f"/models/{quote(name)}/training-jobs/{quote(job_id)}"
        return RedirectResponse(f"{target}?{urlencode({'done': 'cancelled'})}", status_code=303)

    return page_or_error(request, "Models", build, path="/models")
