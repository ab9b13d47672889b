"""DICOMweb routes (PS3.18): parse, call a service in :mod:`radstack.dicomweb`, serialise."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response

from radstack.dicom.uids import check_uid
from radstack.dicomweb import stow
from radstack.platform import Platform

__all__ = ["router"]

router = APIRouter(tags=["DICOMweb"])
DICOM_JSON = "application/dicom+json"


def platform_of(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def base_url(request: Request) -> str:
    """Absolute URL of the DICOMweb root for RetrieveURLs (PS3.18 §10.5.3)."""
    return str(request.base_url).rstrip("/") + "/dicomweb"


def dicom_json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type=DICOM_JSON, headers=headers
    )


def warning_header(texts: list[str]) -> dict[str, str]:
    """A Warning header (RFC 7234 §5.5, as PS3.18 §8.2.5 uses it) carrying human-readable reasons."""
    if not texts:
        return {}
    cleaned = [t.replace('"', "'").encode("ascii", "replace").decode("ascii") for t in texts[:20]]
    return {"Warning": ", ".join(f'299 radstack "{t}"' for t in cleaned)}


async def _stow(request: Request, study: str | None) -> Response:
    platform = platform_of(request)
    settings = platform.settings
    if study is not None:
        check_uid(study, "StudyInstanceUID", in_request=True)
    boundary = stow.check_request(
        request.headers.get("content-type"), request.headers.get("content-length"), settings.max_request_bytes
    )
    result = await stow.store_instances(
        platform.store,
        request.stream(),
        boundary=boundary,
        max_bytes=settings.max_request_bytes,
        base_url=base_url(request),
        expected_study=study,
        encode=settings.encode_htj2k,
    )
    return dicom_json(result.body, result.status, warning_header(result.warnings))


@router.post("/studies", summary="STOW-RS: store instances (PS3.18 §10.5)")
async def stow_studies(request: Request) -> Response:
    return await _stow(request, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study (PS3.18 §10.5)")
async def stow_study(request: Request, study: str) -> Response:
    return await _stow(request, study)
