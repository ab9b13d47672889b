"""Data sets API at ``/api/v1``: make versions (from a folder, as a job; from stored instances), list
them, show one with its counts per split and class, and page through its items.

Routes parse, authorise, call :class:`radstack.ai.datasets.DatasetService` and serialise; the
service checks the policy too, per study, for callers that are not HTTP requests (the CLI, jobs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from radstack.ai.datasets import (
    DATASET_KIND,
    DatasetItem,
    DatasetService,
    DatasetVersion,
    LabeledInstance,
    SplitValues,
    check_folder,
    folder_job_params,
    parse_ratios,
)
from radstack.errors import BadRequest, NotFound
from radstack.security.policy import ActionValues
from radstack.web.deps import authorize, platform_of, principal_of
from radstack.web.jobs import JobOut

__all__ = ["router"]

router = APIRouter(tags=["data sets"])


class LabelIn(BaseModel):
    """A label; other fields (``anatomy``, ``view``, ``displaced``, …) are kept where the data set keeps them."""

    model_config = ConfigDict(extra="allow")

    fracture: bool
    type: str | None = None
    boxes: list[list[float]] = Field(
        default_factory=list, description="[x0, y0, x1, y1] in pixels of the image"
    )


class LabeledInstanceIn(BaseModel):
    study_uid: str
    series_uid: str | None = None
    sop_uid: str
    label: LabelIn


class DatasetIn(BaseModel):
    """A new version of data set ``name``: from a folder on the server or from stored instances."""

    name: str = Field(examples=["wrist-fractures"])
    description: str = ""
    seed: int = 0
    split: str | list[float] = Field(default="70/15/15", description="train/validation/test shares")
    from_folder: str | None = Field(
        default=None,
        description="absolute path on the server of a folder written by 'radstack demo-data fractures'",
    )
    instances: list[LabeledInstanceIn] | None = Field(
        default=None, description="stored instances with their labels (a labeling project's export)"
    )


class DatasetVersionOut(BaseModel):
    name: str
    version: int
    content_hash: str
    seed: int
    ratios: tuple[float, float, float]
    counts: dict[str, Any] = Field(description="patients, images, positive and negative images per split")
    source: dict[str, Any]
    item_count: int
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, version: DatasetVersion) -> DatasetVersionOut:
        return cls.model_validate(version, from_attributes=True)


class DatasetOut(BaseModel):
    name: str
    description: str
    created_by: str
    created_at: datetime
    latest_version: int
    versions: int


class DatasetItemOut(BaseModel):
    position: int
    split: SplitValues
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_key: str
    label: dict[str, Any]

    @classmethod
    def of(cls, item: DatasetItem) -> DatasetItemOut:
        return cls.model_validate(item, from_attributes=True)


class DatasetItemsOut(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[DatasetItemOut]


def _service(request: Request) -> DatasetService:
    return platform_of(request).datasets


@router.post(
    "/datasets",
    response_model=DatasetVersionOut,
    status_code=201,
    summary="Make a data set version (from stored instances; from a folder: a job, 202)",
    responses={
        200: {"model": DatasetVersionOut, "description": "this content is already that version"},
        202: {"model": JobOut, "description": "the job that ingests the folder and makes the version"},
    },
)
def create_dataset(request: Request, body: DatasetIn) -> JSONResponse:
    if (body.from_folder is None) == (body.instances is None):
        raise BadRequest(
            "give either 'from_folder' (a folder on the server) or 'instances' (stored, labeled)"
        )
    ratios = parse_ratios(body.split)
    principal = principal_of(request)
    service = _service(request)
    if body.from_folder is not None:
        # It ingests the folder's files: manage-datasets and ingest.
        authorize(request, ActionValues.MANAGE_DATASETS, dataset=body.name, source=body.from_folder)
        authorize(request, ActionValues.INGEST, dataset=body.name, source=body.from_folder)
        folder = str(check_folder(body.from_folder))
        # Refused here, before the job, with the same errors the job would give.
        service.preview_from_folder(body.name, folder, principal, seed=body.seed, ratios=ratios)
        params = folder_job_params(
            body.name, folder, principal, seed=body.seed, ratios=ratios, description=body.description
        )
        job, _created = platform_of(request).jobs.submit(DATASET_KIND, params)
        return JSONResponse(
            JobOut.of(job).model_dump(mode="json"),
            status_code=202,
            headers={"Location": str(request.url_for("get_dataset_job", job_id=job.id))},
        )
    authorize(request, ActionValues.MANAGE_DATASETS, dataset=body.name)
    instances = [
        LabeledInstance(
            study_uid=item.study_uid,
            series_uid=item.series_uid,
            sop_uid=item.sop_uid,
            label=item.label.model_dump(),
        )
        for item in body.instances or []
    ]
    version = service.create_from_instances(
        body.name, instances, principal, seed=body.seed, ratios=ratios, description=body.description
    )
    return JSONResponse(
        DatasetVersionOut.of(version).model_dump(mode="json"), status_code=201 if version.created else 200
    )


@router.get("/datasets", response_model=list[DatasetOut], summary="Data sets and their newest versions")
def list_datasets(request: Request) -> list[DatasetOut]:
    authorize(request, ActionValues.READ_DATASETS)
    return [
        DatasetOut.model_validate(s, from_attributes=True)
        for s in _service(request).list_datasets(principal_of(request))
    ]


@router.get("/datasets/{name}", response_model=DatasetVersionOut, summary="A data set's newest version")
def get_dataset(request: Request, name: str) -> DatasetVersionOut:
    authorize(request, ActionValues.READ_DATASETS, dataset=name)
    return DatasetVersionOut.of(_service(request).version(principal_of(request), name))


@router.get(
    "/datasets/{name}/versions/{version}",
    response_model=DatasetVersionOut,
    summary="One version: its counts per split and class",
)
def get_version(request: Request, name: str, version: int) -> DatasetVersionOut:
    authorize(request, ActionValues.READ_DATASETS, dataset=name, version=version)
    return DatasetVersionOut.of(_service(request).version(principal_of(request), name, version))


@router.get(
    "/datasets/{name}/versions/{version}/items",
    response_model=DatasetItemsOut,
    summary="A version's items in order (UIDs as the caller's view shows them), a page at a time",
)
def list_items(
    request: Request,
    name: str,
    version: int,
    split: SplitValues | None = None,
    offset: int = 0,
    limit: int = 100,
) -> DatasetItemsOut:
    authorize(request, ActionValues.READ_DATASETS, dataset=name, version=version)
    if offset < 0 or not 0 < limit <= 1000:
        raise BadRequest(f"offset {offset} and limit {limit}: offset is 0 or more, limit 1 to 1000")
    service, principal = _service(request), principal_of(request)
    counts = service.version(principal, name, version).counts
    items = service.items(principal, name, version, split=split, offset=offset, limit=limit)
    return DatasetItemsOut(
        total=counts[str(split) if split is not None else "all"]["images"],
        offset=offset,
        limit=limit,
        items=[DatasetItemOut.of(item) for item in items],
    )


@router.get(
    "/dataset-jobs/{job_id}",
    response_model=JobOut,
    summary="A job making a data set version from a folder: state, progress, then the version",
)
def get_dataset_job(request: Request, job_id: str) -> JobOut:
    authorize(request, ActionValues.READ_DATASETS, job=job_id)
    job = platform_of(request).jobs.records.get(job_id)
    if job.kind != DATASET_KIND:
        raise NotFound(f"job {job_id!r} is not a data set job")
    return JobOut.of(job)
