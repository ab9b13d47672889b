"""The HTTP application: ``create_app(settings)`` builds it; routes stay thin over the services."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radstack import __version__
from radstack.config import Settings
from radstack.errors import RadstackError
from radstack.jobs.records import JobStore
from radstack.platform import Platform
from radstack.security.policy import ActionValues
from radstack.web import (
    accounts,
    api_v1,
    auth,
    datasets,
    dicomweb,
    dicomweb_qido,
    jobs,
    labeling_data,
    labeling_review,
    peers,
    ui,
    workflows,
)
from radstack.web import findings as ai_findings
from radstack.web import inference as inference_api
from radstack.web import labeling as labeling_projects
from radstack.web import models as model_registry
from radstack.web import training as training_jobs
from radstack.web.apidocs import router as apidocs_router
from radstack.web.auth import AuthMiddleware
from radstack.web.deps import platform_of, principal_of, problem_response
from radstack.web.metrics import JobsCollector, inference_histogram
from radstack.web.transport import install_transport
from radstack.web.viewer import router as viewer_router

__all__ = ["create_app"]

log = logging.getLogger(__name__)


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them by route template (no PHI in labels)."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
            self.requests.labels(scope["method"], route, str(status)).inc()


def create_app(settings: Settings, platform: Platform | None = None) -> FastAPI:
    """Build the radstack HTTP application for ``settings``.

    The app's lifespan runs the platform's services: the DIMSE listener (unless ``dicom_port`` is
    0) and the job consumers and drop-folder watcher (unless ``no_workers``) start with the app and stop before the
    platform closes.
    """
    from radstack.ingest.demo import load_demo

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = platform or Platform.open(settings)
        app.state.platform = opened
        opened.inference.observe = lambda model, seconds: inference_seconds.labels(model).observe(seconds)
        dimse = opened.dimse_server()
        try:
            # First start of a data dir: the shipped starter model (once; off by RADSTACK_STARTER_MODEL).
            await to_thread.run_sync(opened.install_starter_model)
            if opened.settings.demo:
                await to_thread.run_sync(
                    lambda: load_demo(
                        opened.store, encode=opened.ingest_options.encode, analyser=opened.analyser
                    )
                )
            if dimse is not None:
                dimse.start()
            if not opened.settings.no_workers:
                opened.start_workers()
            app.state.dimse = dimse
            yield
        finally:
            if dimse is not None:
                await to_thread.run_sync(dimse.stop)
            await to_thread.run_sync(opened.stop_workers)
            if platform is None:
                opened.close()

    app = FastAPI(
        title="radstack",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # radstack.web.apidocs serves it, with Swagger UI from this server
        redoc_url=None,
        # A UID with an encoded slash must be a 404, never a redirect to another resource.
        redirect_slashes=False,
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

    registry.register(JobsCollector(lambda: _jobs_of(app)))
    inference_seconds = inference_histogram(registry)

    @app.exception_handler(RadstackError)
    async def _radstack_error(_request: Request, exc: RadstackError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("request failed: %s", exc.message)
        return problem_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {
                "type": "about:blank",
                "title": str(exc.detail),
                "status": exc.status_code,
                "detail": str(exc.detail),
            },
            status_code=exc.status_code,
            media_type="application/problem+json",
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(
            {"type": "about:blank", "title": "Bad request", "status": 400, "detail": detail},
            status_code=400,
            media_type="application/problem+json",
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz", include_in_schema=False)
    def readyz(request: Request) -> PlainTextResponse:
        """Open to anyone (load balancers, orchestrators): "ready" or, 503, "not ready"; no detail."""
        store = platform_of(request).store
        try:
            with store.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            log.warning("not ready: the index database cannot be reached: %s", type(exc).__name__)
            return PlainTextResponse("not ready", status_code=503, headers={"Cache-Control": "no-store"})
        return PlainTextResponse("ready", headers={"Cache-Control": "no-store"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text for a principal with ``read-metrics`` (admin, monitoring); not audited
        (a scrape every few seconds would bury the trail; the metrics hold no PHI)."""
        platform_of(request).policy.require(principal_of(request), ActionValues.READ_METRICS)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(AuthMiddleware)
    app.add_middleware(MetricsMiddleware, requests=requests, latency=latency)
    app.include_router(auth.router)
    app.include_router(accounts.router, prefix="/api/v1")
    app.include_router(dicomweb_qido.router, prefix="/dicomweb")
    app.include_router(dicomweb.router, prefix="/dicomweb")
    app.include_router(api_v1.router, prefix="/api/v1")
    app.include_router(peers.router, prefix="/api/v1")
    app.include_router(jobs.router, prefix="/api/v1")
    app.include_router(workflows.router, prefix="/api/v1")
    app.include_router(model_registry.router, prefix="/api/v1")
    app.include_router(ai_findings.router, prefix="/api/v1")
    app.include_router(ai_findings.pages)
    app.include_router(model_registry.pages)
    app.include_router(datasets.router, prefix="/api/v1")
    app.include_router(training_jobs.router, prefix="/api/v1")
    app.include_router(training_jobs.pages)
    app.include_router(inference_api.router, prefix="/api/v1")
    app.include_router(labeling_projects.router, prefix="/api/v1")
    app.include_router(labeling_projects.pages)
    app.include_router(labeling_review.router, prefix="/api/v1")
    app.include_router(labeling_review.pages)
    app.include_router(labeling_data.router, prefix="/api/v1")
    app.include_router(labeling_data.pages)
    app.include_router(viewer_router)
    app.include_router(apidocs_router)
    app.include_router(ui.router)
    install_transport(app, settings)  # last, so outermost: headers on every response
    return app


def _jobs_of(app: FastAPI) -> JobStore | None:
    """The job records of the platform ``app`` serves (None before it started)."""
    platform: Platform | None = getattr(app.state, "platform", None)
    return platform.jobs.records if platform is not None else None
