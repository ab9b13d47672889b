"""The HTTP application: ``create_app(settings)`` builds it; routes stay thin over the services."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text

from radstack import __version__
from radstack.config import Settings
from radstack.errors import RadstackError
from radstack.platform import Platform

__all__ = ["create_app", "problem_response"]

log = logging.getLogger(__name__)


def problem_response(error: RadstackError) -> JSONResponse:
    """An RFC 9457 problem document for ``error``."""
    return JSONResponse(error.problem(), status_code=error.http_status, media_type="application/problem+json")


def create_app(settings: Settings, platform: Platform | None = None) -> FastAPI:
    """Build the radstack HTTP application for ``settings``."""
    from radstack.web import api_v1, dicomweb, dicomweb_qido

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = platform or Platform.open(settings)
        app.state.platform = opened
        try:
            yield
        finally:
            if platform is None:
                opened.close()

    app = FastAPI(
        title="radstack",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    registry = CollectorRegistry()
    requests = Counter(
        "radstack_http_requests",
        "HTTP requests by route and status",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "radstack_http_request_seconds",
        "HTTP request latency by route",
        ["method", "route"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    )

    @app.middleware("http")
    async def _metrics(request: Request, call_next):  # type: ignore[no-untyped-def]
        import time

        start = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        latency.labels(request.method, path).observe(time.perf_counter() - start)
        requests.labels(request.method, path, str(response.status_code)).inc()
        return response

    @app.exception_handler(RadstackError)
    async def _radstack_error(_request: Request, exc: RadstackError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("request failed: %s", exc.message)
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(
            {"type": "about:blank", "title": "Bad request", "status": 400, "detail": detail},
            status_code=400,
            media_type="application/problem+json",
        )

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz", include_in_schema=False)
    def readyz(request: Request) -> PlainTextResponse:
        store = request.app.state.platform.store
        with store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return PlainTextResponse("ready")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(dicomweb_qido.router, prefix="/dicomweb")
    app.include_router(dicomweb.router, prefix="/dicomweb")
    app.include_router(api_v1.router, prefix="/api/v1")
    return app
