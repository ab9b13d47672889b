"""DICOM audit messages (PS3.15 Annex A.5) sent to a syslog collector (IHE ATNA).

Each audit record also goes out, when ``RADSTACK_AUDIT_SYSLOG_URL`` is set, as an ``AuditMessage``
(the RFC 3881 schema as DICOM extends it, PS3.15 §A.5.1) inside an RFC 5424 syslog message with
MSGID ``IHE+RFC-3881``, facility authpriv: over UDP (RFC 5426, one message per datagram) or TCP
(RFC 6587 octet counting). Event IDs and codes are those of PS3.15 §A.5.3 and the DCM coding
scheme of PS3.16. Delivery is best effort; the hash-chained trail in the index is the record.
"""

from __future__ import annotations

import logging
import socket
import threading
from datetime import datetime
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

from radstack.errors import RadstackError
from radstack.security.audit import AuditActionValues, AuditEntry, AuditOutcomeValues

__all__ = ["AtnaSender", "audit_message"]

log = logging.getLogger(__name__)

#: Audit action → (EventID code, its meaning, EventActionCode) of PS3.15 §A.5.3.
_EVENTS: dict[AuditActionValues, tuple[str, str, str]] = {
    AuditActionValues.AUTHENTICATE: ("110114", "User Authentication", "E"),
    AuditActionValues.QUERY: ("110112", "Query", "E"),
    AuditActionValues.READ: ("110103", "DICOM Instances Accessed", "R"),
    AuditActionValues.WRITE: ("110103", "DICOM Instances Accessed", "C"),
    AuditActionValues.DELETE: ("110103", "DICOM Instances Accessed", "D"),
    AuditActionValues.EXPORT: ("110106", "Export", "R"),
    AuditActionValues.DEPLOY: ("110100", "Application Activity", "E"),
    AuditActionValues.ADMIN: ("110113", "Security Alert", "E"),
}
#: Facility authpriv (10), severity notice (5): RFC 5424 §6.2.1.
_PRI = 10 * 8 + 5


def audit_message(entry: AuditEntry, at: datetime, source_id: str) -> bytes:
    """The ``AuditMessage`` XML of one audit record (PS3.15 §A.5.1).

    The requesting user is an ActiveParticipant with its role as RoleIDCode text; the studies are
    ParticipantObjects with ID type 110180 (Study Instance UID).
    """
    code, meaning, action = _EVENTS[entry.action]
    root = ET.Element("AuditMessage")
    event = ET.SubElement(
        root,
        "EventIdentification",
        EventActionCode=action,
        EventDateTime=at.isoformat(),
        EventOutcomeIndicator="0" if entry.outcome is AuditOutcomeValues.SUCCESS else "4",
    )
    ET.SubElement(event, "EventID", {"csd-code": code, "codeSystemName": "DCM", "originalText": meaning})
    user = ET.SubElement(
        root,
        "ActiveParticipant",
        UserID=entry.actor or "unknown",
        UserIsRequestor="true",
        NetworkAccessPointID=entry.source or "unknown",
        NetworkAccessPointTypeCode="2",  # an IP address
    )
    if entry.role:
        ET.SubElement(
            user,
            "RoleIDCode",
            {"csd-code": entry.role, "codeSystemName": "radstack", "originalText": entry.role},
        )
    ET.SubElement(root, "ActiveParticipant", UserID=source_id, UserIsRequestor="false")
    ET.SubElement(root, "AuditSourceIdentification", AuditSourceID=source_id)
    studies = entry.resource.get("studies") or (
        [entry.resource["study"]] if entry.resource.get("study") else []
    )
    for study in studies:
        participant = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            ParticipantObjectID=str(study),
            ParticipantObjectTypeCode="2",  # system object
            ParticipantObjectTypeCodeRole="3",  # report (a study)
        )
        ET.SubElement(
            participant,
            "ParticipantObjectIDTypeCode",
            {"csd-code": "110180", "codeSystemName": "DCM", "originalText": "Study Instance UID"},
        )
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml


class AtnaSender:
    """Sends audit messages to ``udp://host:port`` or ``tcp://host:port``.

    Raises
    ------
    RadstackError
        The URL is not one of those forms.
    """

    def __init__(self, url: str, app_name: str = "radstack") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname or not parts.port:
            raise RadstackError(f"audit syslog URL {url!r} must be udp://host:port or tcp://host:port")
        self.scheme = parts.scheme
        self.address = (parts.hostname, parts.port)
        self.app_name = app_name
        self.hostname = socket.gethostname()[:255] or "-"
        self._lock = threading.Lock()
        self._tcp: socket.socket | None = None

    def syslog(self, entry: AuditEntry, at: datetime) -> bytes:
        """One RFC 5424 message carrying the audit message of ``entry``."""
        header = f"<{_PRI}>1 {at.isoformat()} {self.hostname} {self.app_name} - IHE+RFC-3881 - "
        return (
            header.encode() + b"\xef\xbb\xbf" + audit_message(entry, at, f"{self.app_name}@{self.hostname}")
        )

    def send(self, entries: list[AuditEntry], at: datetime) -> None:
        """Send each record; a collector that is down costs a log line, never the request."""
        try:
            with self._lock:
                for entry in entries:
                    self._send(self.syslog(entry, at))
        except OSError as exc:
            log.warning("audit messages to %s:%d not sent: %s", *self.address, exc)
            self._close()

    def _send(self, message: bytes) -> None:
        if self.scheme == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self.address)
            return
        if self._tcp is None:
            self._tcp = socket.create_connection(self.address, timeout=5)
        self._tcp.sendall(f"{len(message)} ".encode() + message)

    def _close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None

    def close(self) -> None:
        with self._lock:
            self._close()
