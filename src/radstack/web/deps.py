"""What every route takes from its request, and the answers several route modules share.

The platform (built once by :func:`radstack.web.app.create_app`), the caller (the principal
:class:`radstack.web.auth.AuthMiddleware` put on the request), how its role sees headers, the one
authorisation call (:func:`authorize`, which also names what the audit record says), and the
response shapes: RFC 9457 problems and DICOM JSON.

Route modules take these from here and never from one another, so ``web/`` has no import circle:
``deps`` imports nothing of ``web/``; ``auth`` and the route modules import ``deps``; ``app`` imports
them all.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from radstack.dicom.uids import check_uid
from radstack.errors import RadstackError
from radstack.platform import Platform
from radstack.security.audit import AuditActionValues
from radstack.security.policy import ActionValues, Principal, RoleDef
from radstack.security.views import View
from radstack.web.templating import page

__all__ = [
    "DICOM_JSON",
    "AuditNote",
    "authorize",
    "base_url",
    "check_path_uids",
    "dicom_json",
    "guard",
    "gzip_json",
    "note",
    "platform_of",
    "principal_of",
    "problem_response",
    "view_of",
    "warning_header",
]

DICOM_JSON = "application/dicom+json"

_AUDIT_ACTION = {
    ActionValues.READ_PIXELS: AuditActionValues.READ,
    ActionValues.READ_METADATA: AuditActionValues.READ,
    ActionValues.INGEST: AuditActionValues.WRITE,
    ActionValues.UPDATE_METADATA: AuditActionValues.WRITE,
    ActionValues.LABEL: AuditActionValues.WRITE,
    ActionValues.DELETE: AuditActionValues.DELETE,
    ActionValues.EXPORT: AuditActionValues.EXPORT,
    ActionValues.TRAIN: AuditActionValues.EXPORT,
    ActionValues.DEPLOY: AuditActionValues.DEPLOY,
    ActionValues.MANAGE_SYSTEM: AuditActionValues.ADMIN,
    ActionValues.MANAGE_USERS: AuditActionValues.ADMIN,
    ActionValues.READ_AUDIT: AuditActionValues.ADMIN,
    ActionValues.READ_METRICS: AuditActionValues.ADMIN,
    ActionValues.READ_DATASETS: AuditActionValues.READ,
    ActionValues.MANAGE_DATASETS: AuditActionValues.WRITE,
    ActionValues.READ_MODELS: AuditActionValues.READ,
    ActionValues.MANAGE_MODELS: AuditActionValues.WRITE,
}


# ----------------------------------------------------------------------------- the request
def platform_of(request: Request) -> Platform:
    """The platform the app serves (on ``app.state`` from start-up to shutdown)."""
    platform: Platform = request.app.state.platform
    return platform


def principal_of(request: Request) -> Principal:
    """Who is asking (authenticated by the auth middleware before any route runs)."""
    principal: Principal = request.state.principal
    return principal


def view_of(request: Request) -> View:
    """How the caller's role sees headers (made once per request)."""
    view: View | None = getattr(request.state, "view", None)
    if view is None:
        platform = platform_of(request)
        principal = principal_of(request)
        view = request.state.view = platform.view(platform.policy.role(principal), principal)
    return view


# ----------------------------------------------------------------------------- authorisation, audit
@dataclass
class AuditNote:
    """What a request did, filled in by :func:`authorize` and recorded when the response is sent."""

    action: AuditActionValues | None = None
    resource: dict[str, Any] = field(default_factory=dict)


def note(request: Request, action: AuditActionValues, **resource: Any) -> None:
    """Name what this request does in its audit record (``None`` values are left out)."""
    audit: AuditNote = request.state.audit
    audit.action = action
    audit.resource.update({key: value for key, value in resource.items() if value is not None})


def authorize(
    request: Request,
    action: ActionValues,
    *,
    study: str | None = None,
    series: str | None = None,
    instance: str | None = None,
    audit: AuditActionValues | None = None,
    **resource: Any,
) -> RoleDef:
    """Allow the request's principal to do ``action`` (to ``study``), or raise; note it for the audit.

    Returns
    -------
    RoleDef
        The principal's role (its view and hidden attributes shape the answer).

    Raises
    ------
    NotFound
        The study is outside the principal's scope.
    Forbidden
        The role does not allow ``action``.
    """
    note(request, audit or _AUDIT_ACTION[action], study=study, series=series, instance=instance, **resource)
    return platform_of(request).policy.require(principal_of(request), action, study)


def check_path_uids(study: str | None, series: str | None = None, instance: str | None = None) -> None:
    """Refuse a malformed UID in any position of a request path (400), before it reaches SQL or a blob key.

    Raises
    ------
    BadRequest
        A UID is not a valid UID (PS3.5 §9.1).
    """
    if study is not None:
        check_uid(study, "StudyInstanceUID", in_request=True)
    if series is not None:
        check_uid(series, "SeriesInstanceUID", in_request=True)
    if instance is not None:
        check_uid(instance, "SOPInstanceUID", in_request=True)


def guard(
    request: Request,
    action: ActionValues,
    study: str | None,
    series: str | None = None,
    instance: str | None = None,
) -> RoleDef:
    """Check the path's UIDs, then that the caller may do ``action`` to them (404 outside its scope,
    or for a series or instance hidden from the caller by labeling's blinding).

    Raises
    ------
    BadRequest
        A malformed UID.
    NotFound, Forbidden
        As :func:`authorize`; NotFound for a hidden series or instance.
    """
    check_path_uids(study, series, instance)
    role = authorize(request, action, study=study, series=series, instance=instance)
    if study is not None:
        view_of(request).require_visible(study, series, instance)
    return role


# ----------------------------------------------------------------------------- responses
def problem_response(error: RadstackError, headers: dict[str, str] | None = None) -> JSONResponse:
    """An RFC 9457 problem document for ``error`` (with the error's own headers, then ``headers``)."""
    return JSONResponse(
        error.problem(),
        status_code=error.http_status,
        media_type="application/problem+json",
        headers={**error.headers(), **(headers or {})} or None,
    )


def base_url(request: Request) -> str:
    """Absolute URL of the DICOMweb root for RetrieveURLs (PS3.18 §10.5.3)."""
    return str(request.base_url).rstrip("/") + "/dicomweb"


def dicom_json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``body`` as compact ``application/dicom+json``."""
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type=DICOM_JSON, headers=headers
    )


def warning_header(texts: list[str]) -> dict[str, str]:
    """A Warning header (RFC 7234 §5.5, as PS3.18 §8.2.5 uses it) carrying human-readable reasons."""
    if not texts:
        return {}
    cleaned = [
        "".join(c if " " <= c <= "~" and c != '"' else "'" if c == '"' else " " for c in text)[:400]
        for text in texts[:20]
    ]
    return {"Warning": ", ".join(f'299 radstack "{t}"' for t in cleaned)}


def gzip_json(request: Request, document: bytes, study: str) -> Response:
    """Send a precomputed gzipped JSON document as is when the client accepts gzip (and its role
    sees headers as stored, and nothing of the study is hidden from the caller)."""
    view = view_of(request)
    if view.shapes or view.hidden(study):
        return Response(view.document(document, study), media_type=DICOM_JSON)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(
            document, media_type=DICOM_JSON, headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        )
    return Response(gzip.decompress(document), media_type=DICOM_JSON, headers={"Vary": "Accept-Encoding"})


# ----------------------------------------------------------------------------- pages
def signed_in_page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A server-rendered page for the signed-in caller: ``template`` with the navigation's context
    (who is signed in, their role, which menu entries they may see) and ``context``."""
    principal = principal_of(request)
    context.setdefault("path", request.url.path)
    return page(
        template,
        status,
        user=principal.subject,
        role=principal.role,
        can_manage=platform_of(request).policy.allows(principal, ActionValues.MANAGE_SYSTEM),
        **context,
    )


_R = TypeVar("_R", bound=Response)


def page_or_error(request: Request, title: str, build: Callable[[], _R], **context: Any) -> _R | HTMLResponse:
    """``build()``, or the error page with the status and message of a :class:`RadstackError` it
    raises (``context``: the navigation's, e.g. the ``path`` to mark as current)."""
    try:
        return build()
    except RadstackError as error:
        return signed_in_page(
            request, "error.html", error.http_status, title=title, message=error.message, **context
        )
