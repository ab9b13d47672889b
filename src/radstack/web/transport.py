"""HTTP transport security: HTTPS options for uvicorn, security headers, CORS and rate limiters.

``install_transport(app, settings)`` adds, outermost first:

* :class:`SecurityHeadersMiddleware`: ``Strict-Transport-Security`` (RFC 6797) on every response
  when TLS is on, and ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
  ``X-Frame-Options: DENY`` (``SAMEORIGIN`` under ``/viewer/``) always;
* Starlette's ``CORSMiddleware``, only when ``settings.cors_origins`` names origins: without it a
  cross-origin request gets no ``Access-Control-Allow-Origin`` and the browser refuses it.

It also puts the login and token-failure rate limiters on ``app.state.rate_limits``
(:class:`~radstack.security.ratelimit.RateLimits`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radstack.config import Settings
from radstack.security.ratelimit import RateLimits
from radstack.security.tls import server_ssl_context

__all__ = ["SecurityHeadersMiddleware", "install_transport", "uvicorn_tls_options"]

#: The viewer (OHIF) may be framed by pages of its own origin; nothing else may be framed at all.
_VIEWER_PREFIX = "/viewer/"
_CORS_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
_CORS_HEADERS = ["Authorization", "Content-Type", "Accept", "Range", "If-None-Match", "If-Match"]
#: Response headers a cross-origin DICOMweb client reads (PS3.18 §10.5 STOW responses, 429s).
_CORS_EXPOSED = ["Content-Location", "Location", "Warning", "Retry-After", "ETag"]


def _header(name: str, value: str) -> tuple[bytes, bytes]:
    return name.lower().encode("latin-1"), value.encode("latin-1")


class SecurityHeadersMiddleware:
    """Pure ASGI middleware adding security headers to every HTTP response that lacks them.

    Parameters
    ----------
    app
        The application to wrap.
    hsts_seconds
        ``max-age`` of ``Strict-Transport-Security``; 0 sends none (plain HTTP, or TLS ended by a
        proxy in front that sets its own).
    """

    def __init__(self, app: ASGIApp, hsts_seconds: int = 0) -> None:
        self.app = app
        common = [
            _header("X-Content-Type-Options", "nosniff"),
            _header("Referrer-Policy", "no-referrer"),
        ]
        if hsts_seconds > 0:
            common.append(_header("Strict-Transport-Security", f"max-age={hsts_seconds}; includeSubDomains"))
        self._default = [*common, _header("X-Frame-Options", "DENY")]
        self._viewer = [*common, _header("X-Frame-Options", "SAMEORIGIN")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        extra = self._viewer if path.startswith(_VIEWER_PREFIX) or path == "/viewer" else self._default

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _value in headers}
                headers.extend(h for h in extra if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_transport(app: FastAPI, settings: Settings) -> None:
    """Add the security headers and CORS middleware to ``app``, and its rate limiters.

    Call it after every other middleware is added, so the headers are on every response the
    application makes (CORS preflight answers included).

    Parameters
    ----------
    app
        The application from :func:`radstack.web.app.create_app`.
    settings
        ``cors_origins`` (empty: no cross-origin access), ``hsts_seconds`` (sent only when
        ``tls_enabled``), ``login_rate_per_minute`` and ``token_failures_per_minute``.
    """
    if settings.cors_origins:
        any_origin = settings.cors_origins == ["*"]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            # Credentials (cookies, Authorization) only for origins named one by one, never for "*".
            allow_credentials=not any_origin,
            allow_methods=_CORS_METHODS,
            allow_headers=_CORS_HEADERS,
            expose_headers=_CORS_EXPOSED,
            max_age=600,
        )
    app.add_middleware(
        SecurityHeadersMiddleware, hsts_seconds=settings.hsts_seconds if settings.tls_enabled else 0
    )
    app.state.rate_limits = RateLimits.from_settings(settings)


def uvicorn_tls_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` serving HTTPS when TLS is on.

    The context is :func:`radstack.security.tls.server_ssl_context` (TLS 1.2+, ECDHE with AEAD),
    built here, so a certificate that cannot be used fails before anything listens.

    Returns
    -------
    dict
        Empty when TLS is off (plain HTTP).

    Raises
    ------
    TLSConfigurationError
        The certificate or key cannot be used; the message names the file and the problem.
    """
    if not settings.tls_enabled:
        return {}
    context = server_ssl_context(settings)

    def context_factory(_config: object, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return context

    return {
        "ssl_certfile": str(settings.tls_cert_file),
        "ssl_keyfile": str(settings.tls_key_file),
        "ssl_context_factory": context_factory,
    }
