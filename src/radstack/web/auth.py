"""Who is asking, may they, and the audit record of what they did: the HTTP side of security.

:class:`AuthMiddleware` authenticates every request but ``/healthz`` and the login page (a bearer
API token, an OIDC JWT, or the UI's session cookie) and, once the response is sent, queues one
audit record for it. Routes call :func:`authorize` first: it asks the one policy
(:meth:`radstack.security.policy.Policy.require`) and notes what the audit record names.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from anyio import to_thread
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radstack.errors import Forbidden, RadstackError, RateLimited, Unauthenticated
from radstack.platform import Platform
from radstack.security.audit import AuditActionValues, AuditEntry, AuditOutcomeValues
from radstack.security.policy import ActionValues, Principal, RoleDef, ViewValues
from radstack.security.ratelimit import RateLimiter, RateLimits
from radstack.security.views import View

__all__ = ["SESSION_COOKIE", "AuthMiddleware", "authorize", "note", "principal_of", "router", "view_of"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "radstack_session"
#: Paths that answer without credentials.
OPEN_PATHS = frozenset({"/healthz", "/login"})
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

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
}


@dataclass
class AuditNote:
    """What a request did, filled in by :func:`authorize` and recorded when the response is sent."""

    action: AuditActionValues | None = None
    resource: dict[str, Any] = field(default_factory=dict)


def audit_action(action: ActionValues) -> AuditActionValues:
    return _AUDIT_ACTION[action]


def _problem(error: RadstackError, headers: dict[str, str] | None = None) -> Response:
    from radstack.web.app import problem_response

    response = problem_response(error)
    response.headers.update(headers or {})
    return response


def _same_origin(headers: Headers, scope: Scope) -> bool:
    """A cookie-authenticated change must come from our own pages (CSRF): Origin or Referer is us."""
    origin = headers.get("origin") or headers.get("referer")
    if not origin:
        return False
    host = headers.get("host", "")
    return urlsplit(origin).netloc == host


class AuthMiddleware:
    """Authenticate each request (pure ASGI) and audit it once it is answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        platform: Platform = scope["app"].state.platform
        source = scope["client"][0] if scope.get("client") else ""
        headers = Headers(scope=scope)
        try:
            principal = await self._authenticate(
                platform, scope["app"].state.rate_limits, headers, scope, source
            )
            role = platform.policy.roles.get(principal.role)
            if role is not None and role.view is ViewValues.DEIDENTIFIED:
                view = platform.view(role)
                path = await to_thread.run_sync(_real_path, view, scope["path"])
                scope["path"], scope["raw_path"] = path, path.encode()
        except RadstackError as error:
            if isinstance(error, Unauthenticated) and _wants_html(headers, scope):
                target = scope["path"] + (
                    "?" + scope["query_string"].decode() if scope["query_string"] else ""
                )
                response: Response = RedirectResponse(f"/login?next={_quote(target)}", status_code=303)
            else:
                challenge = isinstance(error, Unauthenticated)
                response = _problem(
                    error, {"WWW-Authenticate": 'Bearer realm="radstack"'} if challenge else None
                )
            await response(scope, receive, send)
            return
        note = AuditNote()
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["audit"] = note
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if note.action is not None:
                platform.audit.submit(
                    AuditEntry(
                        principal.subject,
                        principal.role,
                        source,
                        note.action,
                        {
                            "method": scope["method"],
                            "route": _route(scope),
                            "status": status,
                            **note.resource,
                        },
                        AuditOutcomeValues.SUCCESS if status < 400 else AuditOutcomeValues.FAILURE,
                    )
                )

    async def _authenticate(
        self, platform: Platform, rate_limits: RateLimits, headers: Headers, scope: Scope, source: str
    ) -> Principal:
        limits = rate_limits.token_failures
        key = f"token:{source}"
        authorization = headers.get("authorization", "")
        scheme, _, credential = authorization.partition(" ")
        cookie = _cookie(headers, SESSION_COOKIE)
        if not credential and cookie is None:
            raise Unauthenticated(
                "credentials are required: an 'Authorization: Bearer' token or a login session"
            )
        wait = limits.peek(key)
        if wait is not None:
            raise RateLimited(wait)
        try:
            if credential:
                if scheme.lower() != "bearer":
                    raise Unauthenticated(
                        f"the {scheme!r} scheme is not accepted; send 'Authorization: Bearer <token>'"
                    )
                principal = await _check_bearer(platform, credential.strip())
            else:
                assert cookie is not None
                principal = await _check_secret(platform, cookie, "session")
                if scope["method"] in _UNSAFE and not _same_origin(headers, scope):
                    raise Forbidden(
                        "a change made with a login session must come from this server's own pages"
                    )
        except Unauthenticated as error:
            limits.hit(key)
            platform.audit.submit(
                AuditEntry(
                    "",
                    "",
                    source,
                    AuditActionValues.AUTHENTICATE,
                    {"route": scope["path"][:200]},
                    AuditOutcomeValues.FAILURE,
                    error.message,
                )
            )
            raise
        return principal.with_source(source)


async def _check_bearer(platform: Platform, credential: str) -> Principal:
    if credential.count(".") == 2 and platform.oidc is not None:
        oidc = platform.oidc
        return await to_thread.run_sync(lambda: oidc.check(credential))
    return await _check_secret(platform, credential, "api")


async def _check_secret(platform: Platform, secret: str, kind: str) -> Principal:
    cached = platform.accounts.cached(secret, kind)
    if cached is not None:
        return cached
    return await to_thread.run_sync(lambda: platform.accounts.check_token(secret, kind))


def _cookie(headers: Headers, name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


def _wants_html(headers: Headers, scope: Scope) -> bool:
    return scope["method"] == "GET" and "text/html" in headers.get("accept", "")


def _quote(target: str) -> str:
    from urllib.parse import quote

    return quote(target, safe="/")


def _route(scope: Scope) -> str:
    return str(getattr(scope.get("route"), "path", scope["path"][:200]))


_LEVELS = {"studies": "study", "series": "series", "instances": "instance"}


def _real_path(view: View, path: str) -> str:
    """``path`` with the pseudonymous study, series and instance UIDs of a de-identified client
    replaced by the stored ones (404 for a pseudonym that names nothing)."""
    segments = path.split("/")
    for i in range(1, len(segments)):
        level = _LEVELS.get(segments[i - 1])
        if level is not None and segments[i]:
            segments[i] = view.real_uid(level, segments[i])
    return "/".join(segments)


def view_of(request: Request) -> View:
    """How the caller's role sees headers (made once per request)."""
    view: View | None = getattr(request.state, "view", None)
    if view is None:
        platform: Platform = request.app.state.platform
        view = request.state.view = platform.view(platform.policy.role(principal_of(request)))
    return view


def principal_of(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


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
    note(request, audit or audit_action(action), study=study, series=series, instance=instance, **resource)
    platform: Platform = request.app.state.platform
    return platform.policy.require(principal_of(request), action, study)


# ----------------------------------------------------------------------------- login page
router = APIRouter(include_in_schema=False)

_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>radstack: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>radstack</h1>
<form method="post" action="/login">
<p>{message}</p>
<label>User name <input name="username" autocomplete="username" required autofocus></label><br>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label><br>
<input type="hidden" name="next" value="{next}">
<button type="submit">Log in</button>
</form></main></body></html>
"""


def _safe_next(target: str) -> str:
    """Only a path on this server (no scheme, no host, no ``//``) is followed after login."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _login_page(message: str, target: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _LOGIN.format(message=html.escape(message), next=html.escape(_safe_next(target), quote=True)),
        status_code=status,
    )


@router.get("/login")
def login_page(next: str = "/") -> HTMLResponse:
    return _login_page("", next)


@router.post("/login")
def login(
    request: Request, username: str = Form(""), password: str = Form(""), next: str = Form("/")
) -> Response:
    """Check the password and open a session (an HttpOnly, SameSite=Lax cookie; Secure under TLS)."""
    platform: Platform = request.app.state.platform
    source = request.client.host if request.client else ""
    limits: RateLimiter = request.app.state.rate_limits.login
    limits.check(f"login:{source}")
    limits.check(f"login:{username[:128]}")
    try:
        principal = platform.accounts.check_password(username, password)
    except Unauthenticated as error:
        platform.audit.submit(
            AuditEntry(
                username[:128],
                "",
                source,
                AuditActionValues.AUTHENTICATE,
                {"method": "password"},
                AuditOutcomeValues.FAILURE,
                error.message,
            )
        )
        return _login_page(error.message, next, 401)
    limits.reset(f"login:{username[:128]}")
    hours = platform.settings.session_hours
    secret = platform.accounts.create_token(
        username, kind="session", label=f"login from {source}"[:128], expires_in=timedelta(hours=hours)
    )
    platform.audit.submit(
        AuditEntry(
            principal.subject, principal.role, source, AuditActionValues.AUTHENTICATE, {"method": "password"}
        )
    )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=int(hours * 3600),
        httponly=True,
        samesite="lax",
        secure=platform.settings.tls_enabled,
        path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    note(request, AuditActionValues.AUTHENTICATE, event="logout")
    secret = _cookie(request.headers, SESSION_COOKIE)
    if secret is not None:
        platform.accounts.end_session(secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
