"""STOW-RS: Store Instances (PS3.18 §10.5).

The request body is read as a stream of multipart/related parts; each part goes through the ingest
pipeline as soon as it is complete, so a large body is never held whole in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from anyio import Semaphore, create_task_group, to_thread

from radstack.dicomweb.multipart import Part, iter_multipart, parse_media_type
from radstack.errors import BadRequest, CannotUnderstand, PayloadTooLarge, RadstackError, UnsupportedMediaType
from radstack.ingest.pipeline import Analyser, IngestResult, Screen, ingest_file
from radstack.store.studies import BatchReason, StudyStore

__all__ = ["StowResponse", "store_instances"]

_DICOM = "application/dicom"
_PARTS_IN_FLIGHT = 4
#: WarningReason 0xB000, Coercion of Data Elements (PS3.18 Table 10.5.3-2).
_COERCION = 0xB000


@dataclass
class StowResponse:
    """Status code, DICOM JSON body and Warning header texts of a STOW-RS response."""

    status: int
    body: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    #: Studies that instances were stored into, and how many were stored and refused.
    studies: tuple[str, ...] = ()
    stored: int = 0
    failed: int = 0


def check_request(content_type: str | None, content_length: str | None, max_bytes: int) -> str:
    """Validate the request's media type and size before any byte of the body is read.

    Returns the multipart boundary.

    Raises
    ------
    UnsupportedMediaType
        When the body is not multipart/related, or its parts are not application/dicom.
    BadRequest
        When the Content-Type has no boundary, or the Content-Length is not a number.
    PayloadTooLarge
        When the Content-Length exceeds ``max_bytes``.
    """
    media_type, params = parse_media_type(content_type or "")
    if media_type != "multipart/related":
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'!r} is not supported; STOW-RS takes "
            'multipart/related; type="application/dicom" (PS3.18 §10.5.1.2)'
        )
    part_type = params.get("type", _DICOM).lower()
    if part_type != _DICOM:
        raise UnsupportedMediaType(
            f"multipart/related type {part_type!r} is not supported; send Part-10 instances as "
            'type="application/dicom"'
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise BadRequest("Content-Type multipart/related has no boundary parameter (RFC 2046 §5.1.1)")
    if content_length is not None:
        try:
            length = int(content_length)
        except ValueError:
            raise BadRequest(f"Content-Length {content_length!r} is not a number") from None
        if length > max_bytes:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {max_bytes} bytes")
    return boundary


async def store_instances(
    store: StudyStore,
    chunks: AsyncIterator[bytes],
    *,
    boundary: str,
    max_bytes: int,
    base_url: str,
    expected_study: str | None = None,
    encode: bool = True,
    analyser: Analyser | None = None,
    screen: Screen | None = None,
) -> StowResponse:
    """Store every part of a STOW-RS request body and build the response (PS3.18 §10.5.3).

    An instance that cannot be stored is a FailedSOPSequence item of the response (its Failure
    Reason, and its reason's text in the Warning header), not an error; only a body that cannot be
    read as a whole is. ``screen`` sees each instance before it commits (the sender's right to store
    it, a reader's labels: :mod:`radstack.labeling.intake`).

    Raises
    ------
    BadRequest
        When the body holds no parts, or is not a well-formed multipart body (no delimiter line,
        malformed part headers).
    PayloadTooLarge
        When the body grows past ``max_bytes``.
    """
    results: list[IngestResult] = []
    # Parts are analysed while later parts are still arriving: up to a few per request at once,
    # so the ingest processes stay busy; results keep the order of the parts.
    slots = Semaphore(_PARTS_IN_FLIGHT)

    async def ingest(slot: int, part: Part) -> None:
        try:
            results[slot] = await to_thread.run_sync(
                partial(
                    ingest_file,
                    store,
                    part.body,
                    batch,
                    expected_study=expected_study,
                    encode=encode,
                    analyser=analyser,
                    transfer_syntax=part.media_type_params.get("transfer-syntax"),
                    screen=screen,
                )
            )
        finally:
            part.close()
            slots.release()

    with store.batch(BatchReason.STOW) as batch:
        async with _unwrapped(), create_task_group() as group:
            async for part in iter_multipart(chunks, boundary, max_bytes=max_bytes):
                index = len(results) + 1
                if part.content_type not in ("", _DICOM):
                    part.close()
                    results.append(
                        _failed(
                            CannotUnderstand(
                                f"part {index} has Content-Type {part.content_type!r}; expected application/dicom"
                            )
                        )
                    )
                elif not part.complete:
                    part.close()
                    results.append(
                        _failed(
                            BadRequest(f"part {index} ends before the closing multipart boundary; not stored")
                        )
                    )
                else:
                    results.append(IngestResult())
                    await slots.acquire()  # back-pressure: stop reading the body while all slots are busy
                    group.start_soon(ingest, len(results) - 1, part)
    if not results:
        raise BadRequest("the multipart body holds no parts")
    return build_response(results, base_url, expected_study)


@asynccontextmanager
async def _unwrapped() -> AsyncIterator[None]:
    """Re-raise a lone error from inside a task group as itself (anyio wraps it in a group)."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = list(_leaves(group))
        if len(errors) == 1:
            raise errors[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


def _failed(error: RadstackError) -> IngestResult:
    return IngestResult(error=error)


def build_response(results: list[IngestResult], base_url: str, expected_study: str | None) -> StowResponse:
    """The Store Instances response module (PS3.18 Table 10.5.3-1) and its status code."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    warnings: list[str] = []
    for result in results:
        item: dict[str, Any] = {}
        if result.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [result.sop_class_uid]}
        if result.sop_uid:
            item["00081155"] = {"vr": "UI", "Value": [result.sop_uid]}
        if result.error is not None:
            item["00081197"] = {"vr": "US", "Value": [result.error.dicom_status]}
            failed.append(item)
            warnings.append(f"{result.sop_uid or 'unidentified part'}: {result.error.message}")
            continue
        item["00081190"] = {
            "vr": "UR",
            "Value": [
                f"{base_url}/studies/{result.study_uid}/series/{result.series_uid}/instances/{result.sop_uid}"
            ],
        }
        if result.coercions:
            item["00081196"] = {"vr": "US", "Value": [_COERCION]}
        warnings.extend(f"{result.sop_uid}: {w}" for w in [*result.coercions, *result.warnings])
        referenced.append(item)
    body: dict[str, Any] = {}
    studies = {r.study_uid for r in results if r.ok and r.study_uid}
    study = expected_study or (next(iter(studies)) if len(studies) == 1 else None)
    if study:
        body["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{study}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if not referenced:
        status = 409
    elif failed or any("00081196" in r for r in referenced):
        status = 202
    else:
        status = 200
    return StowResponse(status, body, warnings, tuple(sorted(studies)), len(referenced), len(failed))
