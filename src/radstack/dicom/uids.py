"""UID validation (PS3.5 §9.1).

A UID is at most 64 characters of digits and dots, made of components without leading zeros. Every
UID that reaches a URL, a blob key or a SQL filter passes through :func:`check_uid`, which also stops
path traversal (``..``, ``/``, ``%2e``) since none of those characters can appear in a valid UID.
"""

from __future__ import annotations

import re

from radstack.errors import BadRequest, DataSetMismatch, RadstackError

__all__ = ["check_uid", "is_valid_uid"]

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid UID (PS3.5 §9.1)."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def check_uid(value: object, name: str, *, in_request: bool = False) -> str:
    """Return ``value`` as a UID string or raise an error naming it.

    Parameters
    ----------
    value
        The candidate; pydicom ``UID`` objects and plain strings are accepted.
    name
        Attribute name used in the message, e.g. ``"StudyInstanceUID"``.
    in_request
        True for UIDs taken from a URL or query (a 400 Bad Request); False for UIDs inside a stored
        data set (0xA900, data set does not match its SOP class).
    """
    error: type[RadstackError] = BadRequest if in_request else DataSetMismatch
    if value is None or value == "":
        raise error(f"{name} is missing")
    text = str(value)
    if not is_valid_uid(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise error(f"{name} {shown!r} is not a valid UID (PS3.5 §9.1: up to 64 digits and dots)")
    return text
