"""DICOMweb routes (PS3.18): parse, call a service in :mod:`radstack.dicomweb`, serialise."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator

import pydicom
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from radstack.dicom.render import RenderParams, parse_viewport, parse_window
from radstack.dicom.transfer_syntax import media_type_for
from radstack.dicom.uids import check_uid
from radstack.dicomweb import stow, wado
from radstack.dicomweb.accept import parse_accept
from radstack.dicomweb.multipart import multipart_body, new_boundary
from radstack.errors import BadRequest, NotAcceptable, NotFound, RangeNotSatisfiable
from radstack.security.audit import AuditActionValues
from radstack.security.policy import ActionValues
from radstack.security.views import View
from radstack.store import retrieve, versions
from radstack.web.deps import (
    DICOM_JSON,
    base_url,
    dicom_json,
    guard,
    gzip_json,
    note,
    platform_of,
    principal_of,
    view_of,
    warning_header,
)

__all__ = ["router"]

router = APIRouter(tags=["DICOMweb"])


async def _stow(request: Request, study: str | None) -> Response:
    platform = platform_of(request)
    settings = platform.settings
    if study is not None:
        check_uid(study, "StudyInstanceUID", in_request=True)
    # Who may store what is the policy's: ``ingest`` anything, ``label`` alone a reader's SR or SEG,
    # which the labeling intake's screen tells apart instance by instance.
    note(request, AuditActionValues.WRITE, url_study=study)
    principal = principal_of(request)
    platform.policy.require_store(principal)
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
        encode=platform.ingest_options.encode,
        analyser=platform.analyser,
        screen=platform.label_intake.screen(principal),
    )
    note(
        request,
        AuditActionValues.WRITE,
        studies=list(result.studies),
        stored=result.stored,
        failed=result.failed,
    )
    response = dicom_json(result.body, result.status, warning_header(result.warnings))
    if result.stored:
        # The arrival routing rules (AI on a radiograph) run once the response is sent.
        response.background = BackgroundTask(platform.arrivals, set(result.studies))
    return response


@router.post("/studies", summary="STOW-RS: store instances (PS3.18 §10.5)")
async def stow_studies(request: Request) -> Response:
    return await _stow(request, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study (PS3.18 §10.5)")
async def stow_study(request: Request, study: str) -> Response:
    return await _stow(request, study)


# ----------------------------------------------------------------------------- WADO-RS
#: Bulk data a role with a shaped view may still fetch: the pixels (PS3.18 §10.4.1.1.5).
_PIXEL_BULKDATA = frozenset({"7FE00010", "7FE00008", "7FE00009"})


def _multipart(
    parts: Iterable[tuple[str, bytes]], part_type: str, syntax: str | None = None, *, stream: bool = False
) -> Response:
    """A multipart/related response; ``stream`` sends the parts as they are made (many instances)."""
    boundary = new_boundary()
    media_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if syntax:
        media_type += f"; transfer-syntax={syntax}"
    if stream:
        return StreamingResponse(multipart_body(parts, boundary), media_type=media_type)
    # One body in one send: a streamed response costs a thread-pool hop per chunk.
    return Response(b"".join(multipart_body(parts, boundary)), media_type=media_type)


def _retrieve(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    guard(request, ActionValues.READ_METADATA, study, series, instance)
    guard(request, ActionValues.READ_PIXELS, study, series, instance)
    platform = platform_of(request)
    view = view_of(request)
    # Instances hidden from the caller (labeling's blinding) are left out; a named one was refused above.
    records = view.visible(platform.store.current_instances(study, series, instance))
    if not records:
        raise NotFound(f"{'series ' + series if series else 'study ' + study} holds no instances")
    syntax = wado.instance_syntax(parse_accept(request.headers.get("accept")), records)
    store = platform.store

    def parts() -> Iterator[tuple[str, bytes]]:
        for record in records:
            chosen = syntax or retrieve.stored_syntax(record)
            data = retrieve.part10(store, record, chosen)
            yield f"application/dicom; transfer-syntax={chosen}", shaped_part10(view, data, study)

    return _multipart(parts(), "application/dicom", syntax, stream=len(records) > 1)


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study (PS3.18 §10.4)")
def retrieve_study(request: Request, study: str) -> Response:
    return _retrieve(request, study)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(request: Request, study: str, series: str) -> Response:
    return _retrieve(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="WADO-RS: retrieve an instance")
def retrieve_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return _retrieve(request, study, series, instance)


def shaped_part10(view: View, data: bytes, study: str) -> bytes:
    """A Part-10 file whose header is what ``view`` sees (the filtered header travels with the pixels)."""
    if not view.shapes:
        return data
    shaped = view.dataset(pydicom.dcmread(io.BytesIO(data)), study)
    out = io.BytesIO()
    shaped.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _check_json_accept(request: Request) -> None:
    for item in parse_accept(request.headers.get("accept")):
        if item.media_type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return
    raise NotAcceptable("metadata is available as application/dicom+json only")


def _metadata(request: Request, study: str, series: str | None = None) -> Response:
    guard(request, ActionValues.READ_METADATA, study, series)
    _check_json_accept(request)
    document = platform_of(request).store.metadata_document(study, series)
    return gzip_json(request, document, study)


@router.get("/studies/{study}/metadata", summary="WADO-RS: study metadata (PS3.18 §10.4.1.1.2)")
async def study_metadata(request: Request, study: str) -> Response:
    return _metadata(request, study)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: series metadata")
async def series_metadata(request: Request, study: str, series: str) -> Response:
    return _metadata(request, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata", summary="WADO-RS: instance metadata"
)
async def instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
    guard(request, ActionValues.READ_METADATA, study, series, instance)
    _check_json_accept(request)
    store = platform_of(request).store
    record = store.get_instance(study, series, instance)
    view = view_of(request)
    if view.shapes:
        return dicom_json([view.json(json.loads(store.instance_json(record)), study)])
    return Response(b"[" + store.instance_json(record) + b"]", media_type=DICOM_JSON)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}", summary="WADO-RS: frames"
)
async def retrieve_frames(
    request: Request, study: str, series: str, instance: str, frame_list: str
) -> Response:
    guard(request, ActionValues.READ_PIXELS, study, series, instance)
    accept = parse_accept(request.headers.get("accept"))
    result = await wado.retrieve_frames(
        platform_of(request).store, study, series, instance, frame_list, accept
    )
    if not result.multipart:
        return _single_part(request, result.parts[0])
    return _multipart(
        ((p.content_type, p.data) for p in result.parts), media_type_for(result.syntax), result.syntax
    )


def _single_part(request: Request, part: wado.FramePart) -> Response:
    """One frame as the whole body, honouring a ``Range: bytes=a-b`` request (progressive HTJ2K)."""
    headers = {"Accept-Ranges": "bytes"}
    range_header = request.headers.get("range")
    if range_header:
        start, end = parse_byte_range(range_header, len(part.data))
        headers["Content-Range"] = f"bytes {start}-{end}/{len(part.data)}"
        return Response(
            part.data[start : end + 1], status_code=206, media_type=part.content_type, headers=headers
        )
    return Response(part.data, media_type=part.content_type, headers=headers)


def parse_byte_range(value: str, size: int) -> tuple[int, int]:
    """One ``bytes=a-b`` range (RFC 9110 §14.1.2) clipped to ``size``."""
    unit, _, spec = value.partition("=")
    first, dash, last = spec.strip().partition("-")
    try:
        if unit.strip() != "bytes" or not dash or "," in spec:
            raise ValueError
        if first == "":
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), (int(last) if last else size - 1)
    except ValueError:
        raise BadRequest(f"Range {value!r} must be a single bytes=first-last range") from None
    end = min(end, size - 1)
    if start > end:
        raise RangeNotSatisfiable(f"Range {value!r} is outside the {size} bytes of the frame")
    return start, end


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}", summary="WADO-RS: bulk data"
)
def retrieve_bulkdata(request: Request, study: str, series: str, instance: str, path: str) -> Response:
    guard(request, ActionValues.READ_PIXELS, study, series, instance)
    store = platform_of(request).store
    record = store.get_instance(study, series, instance)
    if view_of(request).shapes and path.upper() not in _PIXEL_BULKDATA:
        # Other bulk values may hold what the role must not see (PS3.15 E.1: private, overlays, …).
        raise NotFound(f"bulk data {path} is not available to this role")
    data = wado.bulkdata(store, record, path)
    for item in parse_accept(request.headers.get("accept")):
        if not item.multipart and item.media_type == "application/octet-stream":
            return Response(data, media_type="application/octet-stream")
    return _multipart([("application/octet-stream", data)], "application/octet-stream")


def _render_params(request: Request, *, thumbnail: bool) -> RenderParams:
    query = request.query_params
    try:
        window = parse_window(query.get("window"))
        viewport = parse_viewport(query.get("viewport")) or ((128, 128) if thumbnail else None)
        quality = int(query.get("quality", "75"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if not 1 <= quality <= 100:
        raise BadRequest(f"quality {quality} must be between 1 and 100")
    media_type = wado.rendered_media_type(parse_accept(request.headers.get("accept")))
    return RenderParams(media_type=media_type, quality=quality, window=window, viewport=viewport)


def _rendered(
    request: Request, study: str, series: str | None, instance: str | None, frame: int, *, thumbnail: bool
) -> Response:
    guard(request, ActionValues.READ_PIXELS, study, series, instance)
    params = _render_params(request, thumbnail=thumbnail)
    image = wado.rendered_resource(
        platform_of(request).store, study, series, instance, frame, params, visible=view_of(request).visible
    )
    return Response(image, media_type=params.media_type)


@router.get("/studies/{study}/rendered", summary="WADO-RS: rendered study (PS3.18 §10.4.1.1.3)")
def rendered_study(request: Request, study: str) -> Response:
    return _rendered(request, study, None, None, 1, thumbnail=False)


@router.get("/studies/{study}/series/{series}/rendered", summary="WADO-RS: rendered series")
def rendered_series(request: Request, study: str, series: str) -> Response:
    return _rendered(request, study, series, None, 1, thumbnail=False)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered", summary="WADO-RS: rendered instance"
)
def rendered_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return _rendered(request, study, series, instance, 1, thumbnail=False)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered",
    summary="WADO-RS: rendered frame",
)
def rendered_frame(request: Request, study: str, series: str, instance: str, frame: int) -> Response:
    return _rendered(request, study, series, instance, frame, thumbnail=False)


@router.get("/studies/{study}/thumbnail", summary="WADO-RS: study thumbnail (PS3.18 §10.4.1.1.4)")
def thumbnail_study(request: Request, study: str) -> Response:
    return _rendered(request, study, None, None, 1, thumbnail=True)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="WADO-RS: series thumbnail")
def thumbnail_series(request: Request, study: str, series: str) -> Response:
    return _rendered(request, study, series, None, 1, thumbnail=True)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/thumbnail", summary="WADO-RS: instance thumbnail"
)
def thumbnail_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return _rendered(request, study, series, instance, 1, thumbnail=True)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/thumbnail",
    summary="WADO-RS: frame thumbnail",
)
def thumbnail_frame(request: Request, study: str, series: str, instance: str, frame: int) -> Response:
    return _rendered(request, study, series, instance, frame, thumbnail=True)


# ----------------------------------------------------------------------------- DELETE
def _delete(request: Request, study: str, series: str | None = None, instance: str | None = None) -> Response:
    guard(request, ActionValues.DELETE, study, series, instance)
    platform = platform_of(request)
    version = versions.delete(platform.store, study, series, instance)
    return Response(status_code=204, headers={"X-Radstack-Study-Version": str(version)})


@router.delete("/studies/{study}", status_code=204, summary="Delete a study (a new study version without it)")
def delete_study(request: Request, study: str) -> Response:
    return _delete(request, study)


@router.delete("/studies/{study}/series/{series}", status_code=204, summary="Delete a series")
def delete_series(request: Request, study: str, series: str) -> Response:
    return _delete(request, study, series)


@router.delete(
    "/studies/{study}/series/{series}/instances/{instance}", status_code=204, summary="Delete an instance"
)
def delete_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return _delete(request, study, series, instance)
