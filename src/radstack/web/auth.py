"""Who is asking, may they, and the audit record of what they did: the HTTP side of security.

:class:`AuthMiddleware` authenticates every request but :data:`OPEN_PATHS` (``/healthz``,
``/readyz``, the login page, the favicon) with a bearer API token, an OIDC JWT, or the UI's session
cookie and, once the response is sent, queues one audit record for it. Routes call
:func:`radstack.web.deps.authorize` first: it asks the one policy
(:meth:`radstack.security.policy.Policy.require`) and notes what the audit record names.

A browser (``Accept: text/html``) never gets a JSON problem from this layer: without a valid login
it is sent to ``/login`` (with "Your session expired" when its session cookie was refused), a
lockout or refusal is an HTML page with the same status (and ``Retry-After``). API clients get
``application/problem+json``. A password session of a user who must set a new password
(the first administrator) reaches only the change-password page and logout: pages redirect there,
API calls get 403 "Password change required".
"""

from __future__ import annotations

import logging
from datetime import timedelta
from importlib.resources import files
from urllib.parse import urlsplit

from anyio import to_thread
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radstack.errors import BadRequest, Forbidden, RadstackError, RateLimited, Unauthenticated
from radstack.platform import Platform
from radstack.security.audit import AuditActionValues, AuditEntry, AuditOutcomeValues
from radstack.security.authn import PasswordChangeRequired
from radstack.security.passwords import MIN_LENGTH
from radstack.security.policy import ActionValues, Principal, ViewValues
from radstack.security.ratelimit import RateLimiter, RateLimits
from radstack.security.views import View
from radstack.web.deps import AuditNote, note, platform_of, principal_of, problem_response
from radstack.web.templating import page

__all__ = ["SESSION_COOKIE", "AuthMiddleware", "change_own_password", "router"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "radstack_session"
#: Paths that answer without credentials (``/readyz`` says only "ready" or "not ready").
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login", "/favicon.ico", "/favicon.svg"})
#: Where the change-password page is.
PASSWORD_PAGE = "/account/password"
#: What a password session that must change its password may reach.
_PASSWORD_CHANGE_PATHS = frozenset({PASSWORD_PAGE, "/logout", "/api/v1/me", "/api/v1/me/password"})
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _same_origin(headers: Headers, scope: Scope) -> bool:
    """A cookie-authenticated change must come from our own pages (CSRF): the browser's Fetch
    Metadata says so (``Sec-Fetch-Site: same-origin``; a page cannot set it), or Origin or Referer
    is us. Under our ``Referrer-Policy: no-referrer`` a browser sends ``Origin: null`` even for a
    same-origin form POST (Fetch §3.1), so the Fetch Metadata header is what a real browser proves
    itself with."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site == "same-origin"
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
            if principal.must_change_password and scope["path"] not in _PASSWORD_CHANGE_PATHS:
                raise PasswordChangeRequired(
                    f"password change required: set a new password at {PASSWORD_PAGE} first"
                )
            role = platform.policy.roles.get(principal.role)
            if role is not None and role.view is ViewValues.DEIDENTIFIED:
                view = platform.view(role)
                path = await to_thread.run_sync(_real_path, view, scope["path"])
                scope["path"], scope["raw_path"] = path, path.encode()
        except RadstackError as error:
            response = _refusal(error, headers, scope)
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


def _wants_html(headers: Headers) -> bool:
    """A browser navigating (a link, a form): it asks for HTML; fetches and API clients do not."""
    return "text/html" in headers.get("accept", "")


def _quote(target: str) -> str:
    from urllib.parse import quote

    return quote(target, safe="/")


def _refusal(error: RadstackError, headers: Headers, scope: Scope) -> Response:
    """How the auth layer answers a request it stops: a page or redirect for a browser, else a problem."""
    if not _wants_html(headers):
        challenge = isinstance(error, Unauthenticated)
        return problem_response(error, {"WWW-Authenticate": 'Bearer realm="radstack"'} if challenge else None)
    target = "/"
    if scope["method"] == "GET":
        query = scope["query_string"].decode()
        target = scope["path"] + ("?" + query if query else "")
    if isinstance(error, PasswordChangeRequired):
        return RedirectResponse(f"{PASSWORD_PAGE}?next={_quote(target)}", status_code=303)
    if isinstance(error, Unauthenticated):
        expired = _cookie(headers, SESSION_COOKIE) is not None and not headers.get("authorization")
        location = f"/login?next={_quote(target)}" + ("&expired=1" if expired else "")
        response: Response = RedirectResponse(location, status_code=303)
        if expired:
            response.delete_cookie(SESSION_COOKIE, path="/")
        return response
    message = error.message
    if isinstance(error, RateLimited):
        message = f"Too many failed attempts from your address: try again in {error.retry_after} seconds."
    return page("error.html", error.http_status, headers=error.headers(), title=error.title, message=message)


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


# ----------------------------------------------------------------------------- login page
router = APIRouter(include_in_schema=False)

#: What the login page says to a wrong user name or password (the same for every cause).
WRONG_CREDENTIALS = "Wrong user name or password."
_STATIC = files("radstack.web").joinpath("static")


def _safe_next(target: str) -> str:
    """Only a path on this server (no scheme, no host, no ``//``) is followed after login."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _login_page(
    target: str,
    *,
    message: str = "",
    notice: str = "",
    username: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    return page(
        "login.html",
        status,
        headers=headers,
        title="Log in",
        message=message,
        notice=notice,
        username=username,
        next=_safe_next(target),
    )


def _locked_out(error: RateLimited) -> str:
    return f"Too many attempts: try again in {error.retry_after} seconds."


@router.get("/login")
def login_page(next: str = "/", expired: str = "") -> HTMLResponse:
    notice = "Your session expired; log in again." if expired else ""
    return _login_page(next, notice=notice)


@router.post("/login")
def login(
    request: Request, username: str = Form(""), password: str = Form(""), next: str = Form("/")
) -> Response:
    """Check the password and open a session (an HttpOnly, SameSite=Lax cookie; Secure under TLS).

    The form is answered with the login page again on a wrong password (401) or a lockout (429,
    ``Retry-After``); a user who must change their password is sent to the change-password page.
    """
    platform = platform_of(request)
    source = request.client.host if request.client else ""
    limits: RateLimiter = request.app.state.rate_limits.login
    try:
        limits.check(f"login:{source}")
        limits.check(f"login:{username[:128]}")
    except RateLimited as error:
        return _login_page(
            next, message=_locked_out(error), username=username, status=429, headers=error.headers()
        )
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
        return _login_page(next, message=WRONG_CREDENTIALS, username=username, status=401)
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
    target = _safe_next(next)
    if principal.must_change_password:
        target = f"{PASSWORD_PAGE}?next={_quote(target)}"
    response = RedirectResponse(target, status_code=303)
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
    platform = platform_of(request)
    note(request, AuditActionValues.AUTHENTICATE, event="logout")
    secret = _cookie(request.headers, SESSION_COOKIE)
    if secret is not None:
        platform.accounts.end_session(secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# ----------------------------------------------------------------------------- change password
def _password_page(
    request: Request,
    target: str,
    *,
    message: str = "",
    changed: bool = False,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    principal = principal_of(request)
    platform = platform_of(request)
    return page(
        "password.html",
        status,
        headers=headers,
        title="Change password",
        path=PASSWORD_PAGE,
        user=principal.subject,
        role=principal.role,
        can_manage=platform.policy.allows(principal, ActionValues.MANAGE_SYSTEM),
        must_change=principal.must_change_password,
        min_length=MIN_LENGTH,
        message=message,
        changed=changed,
        next=_safe_next(target),
    )


def change_own_password(request: Request, current: str, new: str) -> None:
    """The caller's own password change, for the page and the API (rate-limited like logins).

    Raises
    ------
    RateLimited
        Too many attempts for this user.
    BadRequest
        The caller has no built-in password (OIDC, DICOM), the current password is wrong, or the
        new one does not follow the policy (:class:`~radstack.security.passwords.WeakPassword`).
    """
    principal = principal_of(request)
    platform = platform_of(request)
    note(request, AuditActionValues.ADMIN, user=principal.subject, change="password")
    if principal.method not in ("session", "token", "password"):
        raise BadRequest(f"a {principal.method} login has no password here; change it where it is managed")
    limits: RateLimiter = request.app.state.rate_limits.login
    limits.check(f"login:{principal.subject[:128]}")
    try:
        platform.accounts.change_password(
            principal.subject, current, new, keep_session=_cookie(request.headers, SESSION_COOKIE)
        )
    except Unauthenticated:
        raise BadRequest("the current password is wrong") from None
    limits.reset(f"login:{principal.subject[:128]}")


@router.get(PASSWORD_PAGE)
def password_page(request: Request, next: str = "", changed: str = "") -> HTMLResponse:
    """The change-password form: current password, the new one twice."""
    return _password_page(request, next, changed=bool(changed))


@router.post(PASSWORD_PAGE)
def change_password(
    request: Request,
    current: str = Form(""),
    new: str = Form(""),
    confirm: str = Form(""),
    next: str = Form(""),
) -> Response:
    """Change the caller's password (a same-origin POST: the middleware's CSRF check), then go on to
    ``next`` (or show the page again, saying it is done); a refusal shows the form with its reason."""
    try:
        if new != confirm:
            raise BadRequest("the two new passwords differ")
        change_own_password(request, current, new)
    except RadstackError as error:
        message = error.message[:1].upper() + error.message[1:] + "."
        if isinstance(error, RateLimited):
            message = _locked_out(error)
        return _password_page(
            request, next, message=message, status=error.http_status, headers=error.headers()
        )
    target = _safe_next(next) if next else f"{PASSWORD_PAGE}?changed=1"
    return RedirectResponse(target, status_code=303)


# ----------------------------------------------------------------------------- favicon
@router.get("/favicon.ico")
def favicon_ico() -> Response:
    return Response(
        _STATIC.joinpath("favicon.ico").read_bytes(),
        media_type="image/x-icon",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@router.get("/favicon.svg")
def favicon_svg() -> Response:
    return Response(
        _STATIC.joinpath("favicon.svg").read_bytes(),
        media_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400"},
    )
