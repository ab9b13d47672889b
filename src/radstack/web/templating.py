"""The Jinja2 environment of the server-rendered pages (``web/templates``, autoescaped) and a renderer
for pages shown before or around a login: the login form, the change-password form, and the errors
the authentication layer answers a browser with."""

from __future__ import annotations

from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["page", "templates"]

templates = Environment(
    loader=PackageLoader("radstack.web", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def page(
    template: str, status: int = 200, *, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    """``template`` rendered with ``context`` (``user`` None: a page without the main navigation)."""
    context.setdefault("user", None)
    context.setdefault("path", "")
    context.setdefault("can_manage", False)
    body = templates.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})
