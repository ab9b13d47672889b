"""The API documentation page, ``/api/v1/docs``: Swagger UI served by radstack itself.

FastAPI's own docs page loads Swagger UI from a CDN, so without internet it is blank. Here the
page's script, style sheet and icon come from the ``fastapi-offline`` package, which bundles the
Swagger UI distribution, under ``/api/v1/docs/static/``: no page of radstack loads anything from
another host (ARCHITECTURE: API docs).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from radstack.errors import NotFound

__all__ = ["DOCS_PATH", "router"]

DOCS_PATH = "/api/v1/docs"
_STATIC = f"{DOCS_PATH}/static"
#: The bundled files the page uses, with their media types; nothing else is served from the package.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}

router = APIRouter(include_in_schema=False)


def _asset_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


@router.get(DOCS_PATH)
def docs_page(request: Request) -> HTMLResponse:
    """Swagger UI over the OpenAPI document, every asset from this server."""
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url=f"{_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{_STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{_STATIC}/favicon.png",
        # The default validator badge would load an image from another host.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(f"{_STATIC}/{{name}}")
def docs_asset(name: str) -> FileResponse:
    """One of the bundled Swagger UI files (versioned with the package, so cached for a day)."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"{_STATIC}/{name} not found: the API docs serve {', '.join(sorted(_ASSETS))}")
    return FileResponse(
        _asset_dir() / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )
