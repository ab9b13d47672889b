"""Native JSON API at ``/api/v1``: study versions, attribute updates, metadata documents."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(tags=["radstack API"])
