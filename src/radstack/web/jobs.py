"""Jobs API at ``/api/v1``: import jobs (HealthImaging's StartDICOMImportJob), job records, requeue, cancel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from radstack.errors import NotFound
from radstack.ingest.importjobs import IMPORT_KIND, check_source
from radstack.jobs.queue import JobQueue
from radstack.jobs.records import Job, JobState
from radstack.security.policy import ActionValues
from radstack.web.deps import authorize, platform_of, principal_of

__all__ = ["router"]

router = APIRouter(tags=["jobs"])

_MANIFEST_COLUMNS = ("path", "sop_class_uid", "sop_uid", "study_uid", "series_uid", "outcome")


class ImportJobIn(BaseModel):
    source: str = Field(description="absolute directory path on the server", examples=["/mnt/archive/2024"])
    client_token: str | None = Field(
        default=None,
        max_length=128,
        description="idempotency token: a retry gets the job the first call made",
    )


class JobOut(BaseModel):
    id: str
    kind: str
    state: JobState
    params: dict[str, Any]
    client_token: str | None
    attempts: int
    max_attempts: int
    last_error: str | None
    progress: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls.model_validate(job, from_attributes=True)


def _jobs(request: Request) -> JobQueue:
    return platform_of(request).jobs


@router.post(
    "/import-jobs",
    response_model=JobOut,
    status_code=202,
    summary="Start an import job",
    responses={200: {"model": JobOut, "description": "the job an earlier call with this client_token made"}},
)
def start_import(request: Request, body: ImportJobIn) -> JSONResponse:
    source = check_source(body.source)
    principal = principal_of(request)
    authorize(request, ActionValues.INGEST, source=source)
    params = {"source": source, "submitted_by": {"subject": principal.subject, "role": principal.role}}
    job, created = _jobs(request).submit(IMPORT_KIND, params, client_token=body.client_token)
    return JSONResponse(JobOut.of(job).model_dump(mode="json"), status_code=202 if created else 200)


@router.get("/import-jobs/{job_id}", response_model=JobOut, summary="An import job and its progress")
def get_import(request: Request, job_id: str) -> JobOut:
    authorize(request, ActionValues.INGEST, job=job_id)
    return JobOut.of(_import_job(request, job_id))


@router.get(
    "/import-jobs/{job_id}/{manifest}.ndjson",
    summary="Manifest of an import job: success (stored, duplicate, replaced) or failure",
    response_class=StreamingResponse,
)
def manifest(request: Request, job_id: str, manifest: str) -> StreamingResponse:
    authorize(request, ActionValues.INGEST, job=job_id)
    if manifest not in ("success", "failure"):
        raise NotFound(f"manifest {manifest!r} does not exist; there are success.ndjson and failure.ndjson")
    job = _import_job(request, job_id)
    rows = platform_of(request).import_items.items(job.id, failed=manifest == "failure")
    columns = (*_MANIFEST_COLUMNS, "status", "reason") if manifest == "failure" else _MANIFEST_COLUMNS

    def lines() -> Iterator[bytes]:
        for row in rows:
            yield (json.dumps({c: getattr(row, c) for c in columns}) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/jobs", response_model=list[JobOut], summary="Jobs, newest first (state=DEAD: the dead letters)")
def list_jobs(
    request: Request, kind: str | None = None, state: JobState | None = None, limit: int = 100
) -> list[JobOut]:
    authorize(request, ActionValues.MANAGE_SYSTEM)
    return [
        JobOut.of(job) for job in _jobs(request).records.find(kind=kind, state=state, limit=min(limit, 1000))
    ]


@router.get("/jobs/{job_id}", response_model=JobOut, summary="A job")
def get_job(request: Request, job_id: str) -> JobOut:
    authorize(request, ActionValues.MANAGE_SYSTEM, job=job_id)
    return JobOut.of(_jobs(request).records.get(job_id))


@router.post(
    "/jobs/{job_id}/requeue", response_model=JobOut, summary="Run a FAILED, DEAD or CANCELLED job again"
)
def requeue(request: Request, job_id: str) -> JobOut:
    authorize(request, ActionValues.MANAGE_SYSTEM, job=job_id)
    return JobOut.of(_jobs(request).requeue(job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a QUEUED or RUNNING job")
def cancel(request: Request, job_id: str) -> JobOut:
    authorize(request, ActionValues.MANAGE_SYSTEM, job=job_id)
    reason = f"cancelled by {principal_of(request).subject}"
    return JobOut.of(_jobs(request).records.cancel(job_id, reason))


def _import_job(request: Request, job_id: str) -> Job:
    job = _jobs(request).records.get(job_id)
    if job.kind != IMPORT_KIND:
        raise NotFound(f"job {job_id!r} is not an import job")
    return job
