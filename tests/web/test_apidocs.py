"""The API docs page (``web/apidocs.py``): Swagger UI whose every file comes from this server."""

from __future__ import annotations

import re

from tests import authed
from tests.conftest import RunningServer


def test_docs_page_loads_swagger_ui_from_this_server(server: RunningServer) -> None:
    page = authed.get(f"{server.url}/api/v1/docs", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/api/v1/docs/static/swagger-ui-bundle.js" in assets
    assert all(asset.startswith("/") and not asset.startswith("//") for asset in assets), assets
    assert "'/api/v1/openapi.json'" in page.text
    for asset, media_type in (
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon.png", "image/png"),
    ):
        response = authed.get(f"{server.url}/api/v1/docs/static/{asset}")
        assert response.status_code == 200, asset
        assert response.headers["content-type"].startswith(media_type)
        assert len(response.content) > 1000
    assert "SwaggerUIBundle" in authed.get(f"{server.url}/api/v1/docs/static/swagger-ui-bundle.js").text
    missing = authed.get(
        f"{server.url}/api/v1/docs/static/redoc.standalone.js"
    )  # in the package, not offered
    assert missing.status_code == 404
    assert "swagger-ui.css" in missing.json()["detail"], "the error names what is served"
