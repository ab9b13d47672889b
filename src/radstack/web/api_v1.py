"""Native JSON API at ``/api/v1``: study versions, attribute updates, metadata documents, progressive frames."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from radstack.dicomweb import wado
from radstack.security.policy import ActionValues
from radstack.store import versions
from radstack.web.deps import guard, gzip_json, platform_of

__all__ = ["router"]

router = APIRouter(tags=["radstack API"])


class VersionOut(BaseModel):
    version: int
    reason: str
    detail: str
    created_at: datetime


class VersionChange(BaseModel):
    study_uid: str
    version: int


class AttributeUpdate(BaseModel):
    """Patient, study or series attributes to set, by keyword or tag; null empties one."""

    attributes: dict[str, Any] = Field(
        min_length=1, examples=[{"PatientName": "Doe^Jane", "StudyDescription": "CT"}]
    )
    series_uid: str | None = None


class ResolutionLevel(BaseModel):
    level: int
    columns: int
    rows: int
    bytes: int


@router.get(
    "/studies/{study}/versions", response_model=list[VersionOut], summary="List the versions of a study"
)
def list_versions(request: Request, study: str) -> list[VersionOut]:
    guard(request, ActionValues.READ_METADATA, study)
    rows = platform_of(request).store.list_versions(study)
    return [
        VersionOut(version=r.version, reason=r.reason, detail=r.detail, created_at=r.created_at) for r in rows
    ]


@router.get("/studies/{study}/versions/{version}/metadata", summary="Whole-study metadata of one version")
def version_metadata(request: Request, study: str, version: int) -> Response:
    guard(request, ActionValues.READ_METADATA, study)
    return gzip_json(request, platform_of(request).store.version_document(study, version), study)


@router.get("/studies/{study}/metadata", summary="Whole-study metadata document (gzipped DICOM JSON)")
def study_document(request: Request, study: str) -> Response:
    guard(request, ActionValues.READ_METADATA, study)
    return gzip_json(request, platform_of(request).store.metadata_document(study), study)


@router.post(
    "/studies/{study}/versions/{version}/revert", response_model=VersionChange, summary="Revert a study"
)
def revert_study(request: Request, study: str, version: int) -> VersionChange:
    guard(request, ActionValues.UPDATE_METADATA, study)
    new_version = versions.revert(platform_of(request).store, study, version)
    return VersionChange(study_uid=study, version=new_version)


@router.patch("/studies/{study}", response_model=VersionChange, summary="Update attributes (new version)")
def update_study(request: Request, study: str, body: AttributeUpdate) -> VersionChange:
    guard(request, ActionValues.UPDATE_METADATA, study, body.series_uid)
    new_version = versions.update_attributes(
        platform_of(request).store, study, body.attributes, body.series_uid
    )
    return VersionChange(study_uid=study, version=new_version)


@router.delete("/studies/{study}", response_model=VersionChange, summary="Delete a study (new version)")
def delete_study(request: Request, study: str) -> VersionChange:
    guard(request, ActionValues.DELETE, study)
    return VersionChange(study_uid=study, version=versions.delete(platform_of(request).store, study))


@router.delete("/studies/{study}/series/{series}", response_model=VersionChange, summary="Delete a series")
def delete_series(request: Request, study: str, series: str) -> VersionChange:
    guard(request, ActionValues.DELETE, study, series)
    return VersionChange(study_uid=study, version=versions.delete(platform_of(request).store, study, series))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/levels",
    response_model=list[ResolutionLevel],
    summary="Progressive access: the HTJ2K resolution levels of a frame and their byte prefixes",
)
def frame_levels(
    request: Request, study: str, series: str, instance: str, frame: int
) -> list[ResolutionLevel]:
    guard(request, ActionValues.READ_PIXELS, study, series, instance)
    store = platform_of(request).store
    record = store.get_instance(study, series, instance)
    wado.parse_frame_list(str(frame), record)
    return [ResolutionLevel(**level) for level in wado.resolution_levels(store, record, frame)]


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}",
    summary="Progressive access: a frame as an HTJ2K codestream cut at a resolution level",
    response_class=Response,
)
def frame_at_level(
    request: Request, study: str, series: str, instance: str, frame: int, level: int
) -> Response:
    guard(request, ActionValues.READ_PIXELS, study, series, instance)
    store = platform_of(request).store
    record = store.get_instance(study, series, instance)
    wado.parse_frame_list(str(frame), record)
    data = wado.frame_at_level(store, record, frame, level)
    return Response(data, media_type="image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202")
