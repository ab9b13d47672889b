"""httpx calls to the test servers, carrying the credentials of the server they are sent to.

Every radstack server a test starts registers its origin and an admin token here
(:func:`register`); ``authed.get(url)`` then sends ``Authorization: Bearer <token>`` unless the
call passes its own ``Authorization`` header. Tests of authentication itself use httpx directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

__all__ = ["delete", "get", "headers_for", "patch", "post", "put", "register", "request", "stream"]

_tokens: dict[str, str] = {}


def _origin(url: httpx.URL | str) -> str:
    parsed = httpx.URL(str(url))
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def register(url: str, token: str) -> None:
    """Send ``token`` with every call to the server at ``url``."""
    _tokens[_origin(url)] = token


def unregister(url: str) -> None:
    _tokens.pop(_origin(url), None)


def headers_for(url: httpx.URL | str, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the Authorization of the server at ``url``."""
    out = dict(headers or {})
    token = _tokens.get(_origin(url))
    if token is not None and not any(key.lower() == "authorization" for key in out):
        out["Authorization"] = f"Bearer {token}"
    return out


def request(method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
    kwargs["headers"] = headers_for(url, kwargs.get("headers"))
    return httpx.request(method, url, **kwargs)


def get(url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
    return request("GET", url, **kwargs)


def post(url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
    return request("POST", url, **kwargs)


def put(url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
    return request("PUT", url, **kwargs)


def patch(url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
    return request("PATCH", url, **kwargs)


def delete(url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
    return request("DELETE", url, **kwargs)


@contextmanager
def stream(method: str, url: httpx.URL | str, **kwargs: Any) -> Iterator[httpx.Response]:
    kwargs["headers"] = headers_for(url, kwargs.get("headers"))
    with httpx.stream(method, url, **kwargs) as response:
        yield response
