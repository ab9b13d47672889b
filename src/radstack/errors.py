"""One error tree for the whole platform.

Every failure a client can cause is a :class:`RadstackError` subclass that carries the HTTP status of
its problem response (RFC 9457) and the DICOM status used in a STOW-RS FailedSOPSequence
(PS3.18 §10.5.3) or a DIMSE response (PS3.7 Annex C). Messages quote the bad value and say what
would be accepted.
"""

from __future__ import annotations

import math
from typing import ClassVar

__all__ = [
    "BadRequest",
    "CannotUnderstand",
    "Conflict",
    "DataSetMismatch",
    "Forbidden",
    "IdentifierMismatch",
    "NotAcceptable",
    "NotFound",
    "OutOfResources",
    "PayloadTooLarge",
    "ProcessingFailure",
    "RadstackError",
    "RangeNotSatisfiable",
    "RateLimited",
    "StudyMismatch",
    "TransferSyntaxNotSupported",
    "Unauthenticated",
    "UnsupportedMediaType",
]


class RadstackError(Exception):
    """Base of every error radstack reports to a client."""

    http_status: ClassVar[int] = 400
    #: PS3.4 / PS3.18 status for a stored instance that fails with this error.
    dicom_status: ClassVar[int] = 0xC000
    title: ClassVar[str] = "Bad request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def problem(self) -> dict[str, object]:
        """The RFC 9457 problem document for this error."""
        return {
            "type": "about:blank",
            "title": self.title,
            "status": self.http_status,
            "detail": self.message,
        }

    def headers(self) -> dict[str, str]:
        """HTTP headers the problem response carries besides its body (none by default)."""
        return {}


class BadRequest(RadstackError):
    title = "Bad request"


class CannotUnderstand(RadstackError):
    """0xC000: the object could not be parsed as DICOM (PS3.4 Annex B.2.3)."""

    title = "Cannot understand"
    dicom_status = 0xC000


class DataSetMismatch(RadstackError):
    """0xA900: the data set violates its IOD (missing or malformed required attributes)."""

    title = "Data set does not match SOP class"
    dicom_status = 0xA900


class IdentifierMismatch(RadstackError):
    """0xA900: a C-FIND, C-GET or C-MOVE identifier that the information model cannot answer
    (PS3.4 §C.4.1.1.4, §C.4.2.1.5, §C.4.3.1.4: Identifier does not match SOP Class)."""

    title = "Identifier does not match SOP class"
    dicom_status = 0xA900


class StudyMismatch(DataSetMismatch):
    """The instance belongs to another study than the one named in the STOW-RS URL (PS3.18 §10.5.1)."""

    title = "Study Instance UID does not match the request"
    http_status = 409


class TransferSyntaxNotSupported(RadstackError):
    """0xC122: the transfer syntax cannot be decoded here (PS3.18 Table 10.5.3-3)."""

    title = "Transfer syntax not supported"
    dicom_status = 0xC122


class ProcessingFailure(RadstackError):
    """0x0110: an internal failure while storing; nothing partial is visible."""

    title = "Processing failure"
    http_status = 500
    dicom_status = 0x0110


class OutOfResources(RadstackError):
    """0xA700: storage is full or otherwise unavailable; nothing partial is visible."""

    title = "Out of resources"
    http_status = 507
    dicom_status = 0xA700


class Unauthenticated(RadstackError):
    """No credentials, or credentials that are wrong, expired or revoked."""

    title = "Unauthorized"
    http_status = 401


class Forbidden(RadstackError):
    """The principal may see the resource but its role does not allow the action (PS3.7 0x0124)."""

    title = "Forbidden"
    http_status = 403
    dicom_status = 0x0124


class NotFound(RadstackError):
    title = "Not found"
    http_status = 404


class Conflict(RadstackError):
    title = "Conflict"
    http_status = 409


class NotAcceptable(RadstackError):
    title = "Not acceptable"
    http_status = 406


class RangeNotSatisfiable(RadstackError):
    title = "Range not satisfiable"
    http_status = 416


class UnsupportedMediaType(RadstackError):
    title = "Unsupported media type"
    http_status = 415


class PayloadTooLarge(RadstackError):
    title = "Payload too large"
    http_status = 413


class RateLimited(RadstackError):
    """429: too many attempts from one client or for one account (RFC 6585 §4); retry later.

    Parameters
    ----------
    retry_after
        Seconds until the next attempt is allowed, sent as ``Retry-After`` (RFC 9110 §10.2.3).
    """

    title = "Too many requests"
    http_status = 429
    dicom_status = 0xA700

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(message or f"too many attempts; retry in {self.retry_after} s")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
