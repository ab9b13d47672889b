"""Inference over HTTP: the real-time endpoint and batch jobs (thin over :mod:`radstack.ai.inference`).

``POST /api/v1/models/{name}/infer`` runs the model's production version (or ``version``, which must be
approved) in this process, on a stored study, series or instance named in a JSON body, or on a DICOM
file sent as the body (``Content-Type: application/dicom``), and answers::

    {"model": {"name": "fracture", "version": 1}, "probability": 0.93, "priority": 91, "level": "urgent",
     "findings": [{"label": "fracture", "probability": 0.91, "box": [x0, y0, x1, y1], "instance": "1.2…",
                   "definite": true}],
     "images": 1, "seconds": 0.06}

With ``"store": true`` the result is also stored in the study as an SR (``stored`` names it), as the
automatic runs do. It needs ``read-models`` and ``read-pixels`` (and ``ingest`` to store).

``POST /api/v1/inference-jobs`` runs a model on every study a QIDO-RS query matches, as an
``infer-batch`` job (``/api/v1/jobs/{id}`` shows its progress); each study's result is stored as it
comes.
"""

from __future__ import annotations

from collections.abc import Callable

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radstack.ai.inference import INFER_BATCH, BatchInferParams, Outcome
from radstack.errors import BadRequest, Forbidden, PayloadTooLarge, UnsupportedMediaType
from radstack.jobs.kinds import Submitter, validation_message
from radstack.security.audit import AuditActionValues
from radstack.security.policy import ActionValues
from radstack.web.deps import authorize, check_path_uids, platform_of, principal_of, view_of

__all__ = ["router"]

router = APIRouter(tags=["inference"])

#: Largest uploaded file (a radiograph is tens of MB at most).
UPLOAD_MAX_BYTES = 256 * 1024 * 1024


class InferIn(BaseModel):
    """The image to check: a stored study (all its radiographs), one series of it, or one instance."""

    model_config = ConfigDict(extra="forbid")

    study: str = Field(description="StudyInstanceUID")
    series: str | None = Field(default=None, description="SeriesInstanceUID (only this series)")
    instance: str | None = Field(default=None, description="SOPInstanceUID (only this image)")
    version: int | None = Field(default=None, description="an approved version (default: production)")
    store: bool = Field(default=False, description="also store the result in the study as a DICOM SR")


class InferenceJobIn(BaseModel):
    """A batch: the model, and the QIDO-RS study query whose matches it runs on."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(examples=["fracture"])
    query: dict[str, str] = Field(
        default_factory=dict, examples=[{"ModalitiesInStudy": "DX", "StudyDate": "20260101-"}]
    )
    version: int | None = None
    force: bool = Field(default=False, description="run even where the current result read the same images")


@router.post(
    "/models/{name}/infer",
    summary="Run a model on a stored or uploaded radiograph now",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": InferIn.model_json_schema()},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
            }
        }
    },
)
async def infer(request: Request, name: str, version: int | None = None) -> JSONResponse:
    platform = platform_of(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/dicom":
        upload = await _body(request)
        authorize(request, ActionValues.READ_MODELS, audit=AuditActionValues.READ, model=name)
        outcome = await _run(
            lambda: platform.inference.infer(principal_of(request), name, upload=upload, version=version)
        )
        return JSONResponse(outcome.to_json())
    if content_type not in ("application/json", ""):
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not accepted; send application/json naming a stored image, "
            "or application/dicom with the file"
        )
    try:
        body = InferIn.model_validate_json(await _body(request))
    except ValidationError as exc:
        raise BadRequest(f"the request body is not valid: {validation_message(exc)}") from None
    check_path_uids(body.study, body.series, body.instance)
    view = view_of(request)
    study = view.real_uid("study", body.study)
    series = view.real_uid("series", body.series) if body.series else None
    instance = view.real_uid("instance", body.instance) if body.instance else None
    authorize(request, ActionValues.READ_MODELS, study=study, audit=AuditActionValues.READ, model=name)
    outcome = await _run(
        lambda: platform.inference.infer(
            principal_of(request),
            name,
            study_uid=study,
            series_uid=series,
            sop_uid=instance,
            version=body.version if body.version is not None else version,
            store=body.store,
        )
    )
    answer = outcome.to_json()
    if view.shapes:  # a de-identified caller sees the pseudonyms it named the study by
        shown = platform.deidentifier.uid
        for finding in answer["findings"]:
            finding["instance"] = shown(finding["instance"])
        if "stored" in answer:
            answer["stored"]["series"] = shown(answer["stored"]["series"])
            answer["stored"]["instance"] = shown(answer["stored"]["instance"])
    return JSONResponse(answer)


@router.post(
    "/inference-jobs",
    status_code=201,
    summary="Run a model on every study a QIDO-RS query matches (an infer-batch job)",
)
def submit_batch(request: Request, body: InferenceJobIn) -> JSONResponse:
    platform = platform_of(request)
    principal = principal_of(request)
    for action in (ActionValues.READ_MODELS, ActionValues.READ_PIXELS, ActionValues.INGEST):
        authorize(request, action, audit=AuditActionValues.WRITE, model=body.model)
    if platform.policy.study_condition(principal) is not None:
        # The worker searches the whole index: a role that sees only some studies names them one by one.
        raise Forbidden(
            f"role {principal.role!r} sees only some studies; a batch runs over every study the query matches"
        )
    platform.inference.models.get(body.model, body.version)  # a model that cannot run is refused now
    query = dict(view_of(request).query(body.query.items()))
    job, created = platform.jobs.submit(
        INFER_BATCH,
        BatchInferParams(
            model=body.model,
            query=query,
            version=body.version,
            force=body.force,
            submitted_by=Submitter(subject=principal.subject, role=principal.role),
        ),
    )
    return JSONResponse(
        {"id": job.id, "kind": job.kind, "state": job.state, "params": job.params},
        status_code=201 if created else 200,
        headers={"Location": f"/api/v1/jobs/{job.id}"},
    )


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > UPLOAD_MAX_BYTES:
            raise PayloadTooLarge(f"the body is larger than {UPLOAD_MAX_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _run(work: Callable[[], Outcome]) -> Outcome:
    """The model runs in a worker thread: the event loop keeps serving."""
    return await to_thread.run_sync(work)
