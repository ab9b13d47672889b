"""Registered DICOM peers: the AEs a C-MOVE may name as its Move Destination (PS3.4 §C.4.2.1.2).

Peers come from two places. Configuration (``RADSTACK_PEERS``) is fixed for the life of the
process; the JSON API (``/api/v1/peers``) adds, changes and removes the others, which live in the
index database so every node of a cluster sees the same list. A configured AE title cannot be
changed or removed through the API: configuration wins, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from radstack.config import PeerSetting, check_host, require_ae_title
from radstack.dimse.models import PeerRow
from radstack.errors import BadRequest, Conflict, NotFound

__all__ = ["Peer", "PeerRegistry", "PeerSourceValues", "check_peer_address"]


class PeerSourceValues(StrEnum):
    CONFIG = "config"  #: named in ``RADSTACK_PEERS``; read-only through the API
    API = "api"  #: added through ``/api/v1/peers``; stored in the index database


@dataclass(frozen=True, slots=True)
class Peer:
    """A DICOM application entity radstack may open associations to."""

    ae_title: str
    host: str
    port: int
    source: PeerSourceValues


def check_peer_address(host: str, port: int) -> tuple[str, int]:
    """Validate a peer's network address.

    Raises
    ------
    BadRequest
        ``host`` is not a host name or IP address, or ``port`` is outside 1 to 65535.
    """
    try:
        host = check_host(host)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if not 0 < port <= 65535:
        raise BadRequest(f"port {port} is not between 1 and 65535")
    return host, port


class PeerRegistry:
    """Configured peers plus those stored in the index database."""

    def __init__(self, engine: Engine, configured: Sequence[PeerSetting]) -> None:
        self.engine = engine
        self._configured = {
            p.ae_title: Peer(p.ae_title, p.host, p.port, PeerSourceValues.CONFIG) for p in configured
        }

    def list_peers(self) -> list[Peer]:
        """Every peer, configured ones first, each group by AE title."""
        with Session(self.engine) as session:
            rows = session.scalars(select(PeerRow).order_by(PeerRow.ae_title)).all()
        stored = [_peer(r) for r in rows if r.ae_title not in self._configured]
        return [self._configured[t] for t in sorted(self._configured)] + stored

    def find(self, ae_title: str) -> Peer | None:
        """The peer called ``ae_title`` (insignificant spaces ignored), or ``None``."""
        title = ae_title.strip(" ")
        if title in self._configured:
            return self._configured[title]
        with Session(self.engine) as session:
            row = session.scalar(select(PeerRow).where(PeerRow.ae_title == title))
        return None if row is None else _peer(row)

    def get(self, ae_title: str) -> Peer:
        """The peer called ``ae_title``.

        Raises
        ------
        BadRequest
            ``ae_title`` is not a valid AE title (PS3.5 §6.2).
        NotFound
            No such peer is registered.
        """
        peer = self.find(require_ae_title(ae_title))
        if peer is None:
            raise NotFound(f"no DICOM peer with AE title {ae_title!r} is registered")
        return peer

    def put(self, ae_title: str, host: str, port: int) -> tuple[Peer, bool]:
        """Add or change an API-managed peer; returns it and whether it was created.

        Raises
        ------
        BadRequest
            An invalid AE title, host or port.
        Conflict
            ``ae_title`` is a configured peer.
        sqlalchemy.exc.IntegrityError
            A concurrent insert of the same AE title broke the retry too.
        """  # noqa: DOC501 (its AssertionError marks the end of the retry loop as unreachable)
        title = require_ae_title(ae_title)
        self._check_not_configured(title)
        host, port = check_peer_address(host, port)
        for attempt in range(2):  # a concurrent insert of the same title: the retry updates it
            try:
                with Session(self.engine) as session, session.begin():
                    row = session.scalar(select(PeerRow).where(PeerRow.ae_title == title))
                    created = row is None
                    if row is None:
                        row = PeerRow(ae_title=title)
                        session.add(row)
                    row.host, row.port, row.updated_at = host, port, datetime.now(UTC)
                return Peer(title, host, port, PeerSourceValues.API), created
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def delete(self, ae_title: str) -> None:
        """Remove an API-managed peer.

        Raises
        ------
        BadRequest
            ``ae_title`` is not a valid AE title.
        Conflict
            ``ae_title`` is a configured peer.
        NotFound
            No such peer is stored.
        """
        title = require_ae_title(ae_title)
        self._check_not_configured(title)
        with Session(self.engine) as session, session.begin():
            row = session.scalar(select(PeerRow).where(PeerRow.ae_title == title))
            if row is None:
                raise NotFound(f"no DICOM peer with AE title {title!r} is registered")
            session.delete(row)

    def _check_not_configured(self, title: str) -> None:
        if title in self._configured:
            raise Conflict(
                f"peer {title!r} is defined in the configuration (RADSTACK_PEERS); change it there"
            )


def _peer(row: PeerRow) -> Peer:
    return Peer(row.ae_title, row.host, row.port, PeerSourceValues.API)
