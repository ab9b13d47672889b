"""QIDO-RS routes (PS3.18 §10.6)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(tags=["DICOMweb"])
