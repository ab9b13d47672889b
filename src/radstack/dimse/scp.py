"""The DICOM network service (PS3.4, PS3.7, PS3.8): C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE SCP.

* Verification (PS3.4 Annex A): C-ECHO.
* Storage (PS3.4 Annex B): every storage SOP class pynetdicom knows, in every transfer syntax the
  ingest pipeline reads (native, deflated, big endian, RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K).
  The encoded data set goes to :func:`radstack.ingest.pipeline.ingest_file` as the Part-10 file it
  arrived as; the SCP decodes no pixel. One association is one :class:`~radstack.store.studies.Batch`,
  so everything sent on it makes one new version of each study it touches.
* Query/Retrieve (PS3.4 Annex C), Patient Root and Study Root: C-FIND with the QIDO-RS matching
  engine, C-GET and C-MOVE. Outgoing instances are rebuilt in a transfer syntax the receiver
  accepted: the stored one, or explicit (then implicit) VR little endian, or another the receiver
  proposed that can be produced losslessly.

Failures are DIMSE statuses with an Error Comment (0000,0902) that names the problem. Logs carry
UIDs, AE titles and statuses, never patient data: pynetdicom's identifier logging is turned off.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext, build_context

from radstack.config import Settings
from radstack.dicom.transfer_syntax import TRANSFER_SYNTAXES
from radstack.dimse import _query
from radstack.dimse._tls import DeferredHandshakeServer
from radstack.dimse.peers import PeerRegistry
from radstack.dimse.scu import VERIFICATION, choose_syntax, offered_syntaxes, propose_contexts
from radstack.errors import CannotUnderstand, Forbidden, ProcessingFailure, RadstackError
from radstack.ingest.options import IngestOptions
from radstack.ingest.pipeline import Analyser, Screen, ingest_file
from radstack.security.audit import AuditActionValues, AuditEntry, AuditOutcomeValues, AuditWriter
from radstack.security.authn import Accounts
from radstack.security.policy import ActionValues, Policy, Principal, RoleDef
from radstack.security.tls import server_ssl_context
from radstack.security.views import View
from radstack.store.retrieve import part10
from radstack.store.studies import Batch, BatchReason, InstanceRecord, StoreOutcomeValues, StudyStore

__all__ = ["STORAGE_TRANSFER_SYNTAXES", "DimseConfig", "DimseServer", "error_comment"]

log = logging.getLogger(__name__)

#: Every transfer syntax whose pixel data the ingest pipeline reads (docs/store.md); others are
#: refused at negotiation, so a sender can fall back to one of these. When a presentation context
#: proposes several, the first of this list wins: the order of
#: :data:`~radstack.dicom.transfer_syntax.TRANSFER_SYNTAXES` says why.
STORAGE_TRANSFER_SYNTAXES = tuple(syntax.uid for syntax in TRANSFER_SYNTAXES)
STORAGE_SOP_CLASSES = tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
_MAX_ASSOCIATIONS = 32
_PENDING, _PENDING_WARNING, _CANCEL = 0xFF00, 0xFF01, 0xFE00
_COERCION = 0xB000
#: Error Comment (0000,0902) is LO: 64 characters of the default repertoire (PS3.7 Table E.1-1).
_COMMENT_LENGTH = 64
_IDLE_POLL_SECONDS = 0.004
_PARENTHESES = re.compile(r"\s*\([^()]*\)")
_UID_TOKEN = re.compile(r"\s*\b\d+(?:\.\d+){3,}\b")
_ASCII = str.maketrans({"×": "x", "§": "", "…": "...", "→": "->", "‘": "'", "’": "'", "“": '"', "”": '"'})

HandlerResult = Iterator[tuple[int | Dataset, Dataset | None]]


def error_comment(message: str) -> str:
    """``message`` as an Error Comment: ASCII, one line, at most 64 characters.

    When the message is too long, standard references in parentheses go first, then UIDs (the
    response names the instance already), and only then is the text cut at a word boundary, so
    what is left still names the problem.
    """
    text = unicodedata.normalize("NFKD", message.translate(_ASCII)).encode("ascii", "ignore").decode()
    text = " ".join("".join(c if c.isprintable() else " " for c in text).replace("\\", "/").split())
    for pattern in (_PARENTHESES, _UID_TOKEN):
        if len(text) <= _COMMENT_LENGTH:
            return text
        text = " ".join(pattern.sub("", text).split())
    if len(text) <= _COMMENT_LENGTH:
        return text
    head = text[: _COMMENT_LENGTH - 3]
    head = head.rsplit(" ", 1)[0] if " " in head else head
    return head.rstrip(" ,;:") + "..."


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = error_comment(comment)
    return status


def _calling(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


@dataclass
class _Inbound:
    """What one association stored: its batch (one study version per study) and counts for the log."""

    batch: Batch
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    studies: set[str] = field(default_factory=set)


def _unsendable(record: InstanceRecord) -> Dataset:
    """A stand-in for an instance that cannot be sent.

    It has no file meta, so pynetdicom finds no presentation context for it and counts a failed
    sub-operation with its SOP Instance UID in the Failed SOP Instance UID List (0008,0058),
    exactly as for an instance the receiver refused.
    """
    ds = Dataset()
    ds.SOPClassUID = record.sop_class_uid
    ds.SOPInstanceUID = record.sop_uid
    return ds


@cache
def supported_contexts() -> tuple[PresentationContext, ...]:
    """Verification, every storage SOP class in :data:`STORAGE_TRANSFER_SYNTAXES` and the six
    Query/Retrieve SOP classes; built once per process (2,700 validated UIDs take 50 ms)."""
    contexts = [build_context(VERIFICATION)]
    for sop_class in STORAGE_SOP_CLASSES:
        context = build_context(sop_class, list(STORAGE_TRANSFER_SYNTAXES))
        # Both roles: peers store to us, and a C-GET requestor takes the SCP role (PS3.7 §D.3.3.4).
        context.scu_role = context.scp_role = True
        contexts.append(context)
    contexts.extend(build_context(sop_class) for sop_class in _query.SOP_CLASSES)
    return tuple(contexts)


class _SharedContexts(list[PresentationContext]):
    """Supported presentation contexts that every association reads as they are.

    pynetdicom deep-copies the server's contexts for each association: 33 ms for 177 SOP classes of
    16 transfer syntaxes, measured. Negotiation only reads them, so one list serves them all (and
    every server of the process: :func:`supported_contexts`).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return list(self)


class _AssociationServer(DeferredHandshakeServer):
    """pynetdicom's threaded server, sharing its contexts and checking for shutdown every 50 ms
    (socketserver's default of 500 ms made every stop take half a second)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = _SharedContexts(self.contexts)

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        """Stop accepting (without pynetdicom's bookkeeping of the servers it started itself)."""
        socketserver.BaseServer.shutdown(self)


@dataclass(frozen=True, slots=True)
class DimseConfig:
    """What the DICOM service is told by the settings.

    Attributes
    ----------
    ae_title : str
        Our AE title (``RADSTACK_AE_TITLE``), also the Retrieve AE Title of C-FIND responses.
    host : str
        The address the listeners bind (``RADSTACK_HOST``).
    port : int
        The DIMSE port (``RADSTACK_DICOM_PORT``); 0 runs no plain listener.
    tls_port : int
        The DICOM TLS port (``RADSTACK_DICOM_TLS_PORT``); 0 runs none.
    allowed_calling_aes : tuple of str
        Calling AE titles that may associate; empty: any (``RADSTACK_ALLOWED_CALLING_AES``).
    default_role : str
        The role of a calling AE that is no service account; empty: such an AE may do nothing
        (``RADSTACK_DICOM_DEFAULT_ROLE``).
    tls_context : callable, optional
        Builds the server side TLS context when the TLS listener starts (it asks for client
        certificates when a client CA is configured).

    Raises
    ------
    ValueError
        When a TLS port is set without a TLS context.
    """

    ae_title: str
    host: str
    port: int
    tls_port: int = 0
    allowed_calling_aes: tuple[str, ...] = ()
    default_role: str = ""
    tls_context: Callable[[], ssl.SSLContext] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DimseConfig:
        return cls(
            ae_title=settings.ae_title,
            host=settings.host,
            port=settings.dicom_port,
            tls_port=settings.dicom_tls_port,
            allowed_calling_aes=tuple(settings.allowed_calling_aes),
            default_role=settings.dicom_default_role,
            tls_context=partial(server_ssl_context, settings, verify_clients=True)
            if settings.dicom_tls_port
            else None,
        )

    def __post_init__(self) -> None:
        if self.tls_port and self.tls_context is None:
            raise ValueError(f"a DICOM TLS port ({self.tls_port}) needs a TLS context")

    @property
    def listens(self) -> bool:
        """True when a plain or TLS port is set."""
        return bool(self.port or self.tls_port)


class DimseServer:
    """The DIMSE listeners: ``start()`` binds ``config.port`` and, for DICOM over TLS,
    ``config.tls_port``; ``stop()`` ends them.

    Parameters
    ----------
    config
        AE title, ports and who may associate.
    store
        Where C-STORE ingests to and C-FIND, C-GET and C-MOVE read from.
    peers
        The registered C-MOVE destinations.
    accounts
        Service accounts by AE title (who a calling AE is).
    policy
        What each role may do, and which studies it sees.
    views
        How a role sees headers, and what blinding hides from a principal (a new
        :class:`~radstack.security.views.View` per request).
    audit
        Where each association's reads, queries and writes are recorded.
    ingest_options
        What ingest does with what C-STORE receives (as for every other way in).
    analyser
        The ingest worker processes, if any.
    on_arrival
        Called with the studies an association stored into, once it ends (the routing rules whose
        trigger is ``arrival``).
    screen_for
        The :class:`~radstack.ingest.pipeline.Screen` of what a calling AE's principal stores (the
        labeling intake: a reader's SR or SEG becomes their task's labels). Without it, storing
        takes the ``ingest`` action.
    """

    def __init__(
        self,
        config: DimseConfig,
        *,
        store: StudyStore,
        peers: PeerRegistry,
        accounts: Accounts,
        policy: Policy,
        views: Callable[[RoleDef, Principal], View],
        audit: AuditWriter,
        ingest_options: IngestOptions,
        analyser: Analyser | None = None,
        on_arrival: Callable[[set[str]], None] | None = None,
        screen_for: Callable[[Principal], Screen] | None = None,
    ) -> None:
        self.config = config
        self.on_arrival = on_arrival
        self.screen_for = screen_for
        self.store = store
        self.peers = peers
        self.accounts = accounts
        self.policy = policy
        self.views = views
        self.audit = audit
        self.ingest_options = ingest_options
        self.analyser = analyser
        self._inbound: dict[Association, _Inbound] = {}
        self._principals: dict[Association, Principal] = {}
        self._lock = threading.Lock()
        self._server: _AssociationServer | None = None
        self._tls_server: _AssociationServer | None = None
        self.ae = self._application_entity()

    def _application_entity(self) -> AE:
        config = self.config
        ae = AE(ae_title=config.ae_title)
        ae.maximum_associations = _MAX_ASSOCIATIONS
        # No limit on the PDUs we receive (PS3.8 §D.1): a sender splits a 512 KB CT slice into a few
        # large PDUs instead of 32 of 16 KB, each costing a pass through pynetdicom's Python reactor
        # (4 concurrent storescu associations: 52 → 72 instances/s on 2 cores).
        ae.maximum_pdu_size = 0
        # Associations from other calling AE titles are rejected (A-ASSOCIATE-RJ, rejected-permanent,
        # service-user, calling AE title not recognised: PS3.8 §9.3.4).
        ae.require_calling_aet = list(config.allowed_calling_aes)
        return ae

    @property
    def port(self) -> int:
        """The port the listener is bound to.

        Raises
        ------
        RuntimeError
            When the plain listener is not running (not started, stopped, or no port configured).
        """
        if self._server is None:
            raise RuntimeError("the DIMSE server is not running")
        port: int = self._server.server_address[1]
        return port

    @property
    def tls_port(self) -> int:
        """The port the DICOM TLS listener is bound to.

        Raises
        ------
        RuntimeError
            When the TLS listener is not running (not started, stopped, or no TLS port configured).
        """
        if self._tls_server is None:
            raise RuntimeError("the DICOM TLS listener is not running")
        port: int = self._tls_server.server_address[1]
        return port

    def start(self) -> None:
        """Listen on ``config.host``:``config.port`` (0: not) and ``config.tls_port`` (0: not) in
        background threads.

        Raises
        ------
        TLSConfigurationError
            When a TLS port is set and its context cannot be built
            (:func:`~radstack.security.tls.server_ssl_context`).
        OSError
            When a port cannot be bound (in use, or privileged).
        """
        # pynetdicom logs C-FIND/GET/MOVE identifiers (patient names, IDs) unless told not to.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        config = self.config
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_CONN_OPEN, _tune_connection),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        tls = config.tls_context() if config.tls_port and config.tls_context is not None else None
        if config.port:
            self._server = self._listen(config.port, handlers, None)
        if tls is not None:
            self._tls_server = self._listen(config.tls_port, handlers, tls)

    def _listen(self, port: int, handlers: list[Any], tls: ssl.SSLContext | None) -> _AssociationServer:
        config = self.config
        server = cast(
            _AssociationServer,
            self.ae.make_server(
                (config.host, port),
                contexts=list(supported_contexts()),
                ssl_context=tls,
                evt_handlers=handlers,
                server_class=_AssociationServer,
            ),
        )
        name = "dimse-tls-listener" if tls else "dimse-listener"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        log.info(
            "DICOM service %s listening on %s:%d%s",
            config.ae_title,
            config.host,
            server.server_address[1],
            " (TLS)" if tls else "",
        )
        return server

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, abort open associations and finish their batches."""
        servers = [s for s in (self._server, self._tls_server) if s is not None]
        self._server = self._tls_server = None
        if not servers:
            return
        for server in servers:
            server.shutdown()
        associations = [assoc for server in servers for assoc in server.active_associations]
        for assoc in associations:
            assoc.abort()
        for assoc in associations:
            assoc.join(timeout)
        for server in servers:
            server.server_close()
        with self._lock:
            leftover, self._inbound = list(self._inbound.items()), {}
        for assoc, inbound in leftover:
            self._finish(assoc, inbound)

    # ------------------------------------------------------------------ association events
    def _on_rejected(self, event: Event) -> None:
        log.warning(
            "association from calling AE %s (%s) rejected: calling AE title not recognised",
            _calling(event),
            event.assoc.requestor.address,
        )

    def _on_close(self, event: Event) -> None:
        with self._lock:
            inbound = self._inbound.pop(event.assoc, None)
        if inbound is not None:
            self._finish(event.assoc, inbound)
            self._audit(
                event,
                AuditActionValues.WRITE,
                {
                    "operation": "C-STORE",
                    "studies": sorted(inbound.studies),
                    "stored": inbound.stored,
                    "duplicates": inbound.duplicates,
                    "failed": inbound.failed,
                },
            )
        with self._lock:
            self._principals.pop(event.assoc, None)

    def _finish(self, assoc: Association, inbound: _Inbound) -> None:
        """An association ended: rebuild the metadata documents of what it changed (as STOW-RS does)."""
        if inbound.batch.touched:
            with suppress(RuntimeError):  # shutting down: documents are rebuilt on the next read
                self.store.schedule_documents(inbound.batch.touched)
            if self.on_arrival is not None:
                self.on_arrival(set(inbound.batch.touched))
        log.info(
            "C-STORE association from %s ended: %d stored, %d duplicates, %d failed",
            str(assoc.requestor.ae_title).strip(),
            inbound.stored,
            inbound.duplicates,
            inbound.failed,
        )

    def _principal(self, event: Event) -> Principal:
        """Who the calling AE is: the service account with its AE title, else (when configured) an
        account of the default role.

        Raises
        ------
        Forbidden
            When it is neither: it may do nothing (0x0124, refused: not authorised).
        """
        with self._lock:
            known = self._principals.get(event.assoc)
        if known is not None:
            return known
        calling = _calling(event)
        principal = self.accounts.dicom_principal(calling)
        if principal is None:
            role = self.config.default_role
            if not role:
                raise Forbidden(f"calling AE title {calling} is no service account here")
            principal = Principal(f"ae:{calling}", role, "dicom")
        principal = principal.with_source(str(event.assoc.requestor.address))
        with self._lock:
            self._principals[event.assoc] = principal
        return principal

    def _require(self, event: Event, action: ActionValues, study: str | None = None) -> Principal:
        principal = self._principal(event)
        self.policy.require(principal, action, study)
        return principal

    def _view(self, principal: Principal) -> View:
        """How the calling AE's role sees headers (identifiers and the data sets it is sent), and what
        labeling's blinding hides from its service account."""
        return self.views(self.policy.role(principal), principal)

    def _audit(
        self, event: Event, action: AuditActionValues, resource: dict[str, Any], failure: str | None = None
    ) -> None:
        with self._lock:
            principal = self._principals.get(event.assoc)
        self.audit.submit(
            AuditEntry(
                principal.subject if principal else f"ae:{_calling(event)}",
                principal.role if principal else "",
                str(event.assoc.requestor.address),
                action,
                {"protocol": "dimse", "calling_ae": _calling(event), **resource},
                AuditOutcomeValues.FAILURE if failure else AuditOutcomeValues.SUCCESS,
                failure,
            )
        )

    def _batch_of(self, event: Event) -> _Inbound:
        with self._lock:
            inbound = self._inbound.get(event.assoc)
            if inbound is None:
                # The detail is the calling AE title: routing rules match CallingAETitle on it.
                batch = Batch(BatchReason.C_STORE, _calling(event))
                inbound = self._inbound[event.assoc] = _Inbound(batch)
            return inbound

    # ------------------------------------------------------------------ C-ECHO, C-STORE
    def _on_echo(self, event: Event) -> int:
        try:
            self._principal(event)
        except Forbidden:
            return 0x0124
        return 0x0000

    def _on_store(self, event: Event) -> Dataset:
        """C-STORE (PS3.4 §B.2.3): the data set as sent, through the ingest pipeline.

        Every failure is answered with radstack's own status and an Error Comment: an exception
        left to pynetdicom would be its 0xC211 "unhandled exception", which names nothing.
        """
        inbound = self._batch_of(event)
        sop_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        try:
            principal = self._principal(event)
            if self.screen_for is None:
                self.policy.require(principal, ActionValues.INGEST)
                screen = None
            else:
                # ``ingest`` stores anything; ``label`` alone a reader's SR or SEG, which the screen
                # tells apart (the policy decides: Policy.require_store).
                self.policy.require_store(principal)
                screen = self.screen_for(principal)
        except RadstackError as error:
            return self._store_failed(event, inbound, sop_uid, error)
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # the request carries no data set
            return self._store_failed(event, inbound, sop_uid, CannotUnderstand(f"no data set: {exc}"))
        try:
            result = ingest_file(
                self.store,
                data,
                inbound.batch,
                encode=self.ingest_options.encode,
                analyser=self.analyser,
                screen=screen,
            )
        except Exception as exc:  # ingest_file never raises; a bug still gets a status of ours
            return self._store_failed(event, inbound, sop_uid, _as_radstack(exc))
        if result.error is not None:
            return self._store_failed(event, inbound, sop_uid, result.error)
        if result.study_uid:
            inbound.studies.add(result.study_uid)
        if result.outcome is StoreOutcomeValues.DUPLICATE:
            inbound.duplicates += 1
        else:
            inbound.stored += 1
        if result.coercions:
            return _status(_COERCION, "; ".join(result.coercions))
        return _status(0x0000)

    def _store_failed(self, event: Event, inbound: _Inbound, sop_uid: str, error: RadstackError) -> Dataset:
        inbound.failed += 1
        log.warning(
            "C-STORE of SOP instance %s from %s failed: 0x%04X %s",
            sop_uid,
            _calling(event),
            error.dicom_status,
            error.title,
        )
        return _status(error.dicom_status, error.message)

    # ------------------------------------------------------------------ C-FIND
    def _on_find(self, event: Event) -> HandlerResult:
        """C-FIND (PS3.4 §C.4.1): one pending response per match, then success."""
        matches = 0
        try:
            principal = self._require(event, ActionValues.READ_METADATA)
            view = self._view(principal)
            request = _query.parse_find(
                view.identifier(_identifier(event)), str(event.request.AffectedSOPClassUID)
            )
            pending = _PENDING_WARNING if request.unsupported else _PENDING
            scope = self.policy.study_condition(principal)
            for found in _query.find(self.store, request, self.config.ae_title, scope, blind=view.blind):
                identifier = view.dataset(found) if view.shapes else found
                _wait_until_sent(event.assoc)
                if event.is_cancelled:
                    log.info("C-FIND from %s cancelled after %d matches", _calling(event), matches)
                    yield _CANCEL, None
                    return
                matches += 1
                yield pending, identifier
        except Exception as exc:
            self._audit(event, AuditActionValues.QUERY, {"operation": "C-FIND"}, _as_radstack(exc).message)
            yield self._failed("C-FIND", event, exc), None
            return
        self._audit(
            event,
            AuditActionValues.QUERY,
            {"operation": "C-FIND", "level": request.level, "matches": matches},
        )
        log.info("C-FIND at the %s level from %s: %d matches", request.level, _calling(event), matches)

    def _failed(self, operation: str, event: Event, exc: Exception) -> Dataset:
        error = _as_radstack(exc)
        log.warning(
            "%s from %s failed: 0x%04X %s", operation, _calling(event), error.dicom_status, error.title
        )
        return _status(error.dicom_status, error.message)

    # ------------------------------------------------------------------ C-GET, C-MOVE
    def _records(self, event: Event, operation: str) -> tuple[list[InstanceRecord], View]:
        """What a C-GET or C-MOVE names, within the caller's scope, and how the caller sees headers;
        audited as a read."""
        try:
            self._require(event, ActionValues.READ_METADATA)
            principal = self._require(event, ActionValues.READ_PIXELS)
            view = self._view(principal)
            # Instances blinding hides from the caller are not sent (nor counted).
            records = view.visible(
                _query.retrieve_records(
                    self.store,
                    view.identifier(_identifier(event)),
                    str(event.request.AffectedSOPClassUID),
                    self.policy.study_condition(principal),
                )
            )
        except Exception as exc:
            self._audit(event, AuditActionValues.READ, {"operation": operation}, _as_radstack(exc).message)
            raise
        studies = sorted({record.study_uid for record in records})
        self._audit(
            event,
            AuditActionValues.READ,
            {"operation": operation, "studies": studies, "instances": len(records)},
        )
        return records, view

    def _on_get(self, event: Event) -> Iterator[Any]:
        """C-GET (PS3.4 §C.4.3): C-STORE sub-operations on the requestor's own association."""
        try:
            records, view = self._records(event, "C-GET")
        except Exception as exc:
            yield 1  # pynetdicom answers a failure only after the sub-operation count
            yield self._failed("C-GET", event, exc), None
            return
        log.info("C-GET from %s: %d instances", _calling(event), len(records))
        yield len(records)
        yield from self._sub_operations(event, records, offered_syntaxes(event.assoc), view)

    def _on_move(self, event: Event) -> Iterator[Any]:
        """C-MOVE (PS3.4 §C.4.2): C-STORE sub-operations on a new association to a registered peer."""
        destination = str(event.move_destination or "").strip()
        peer = self.peers.find(destination) if destination else None
        if peer is None:
            log.warning("C-MOVE from %s to unknown destination AE %r refused", _calling(event), destination)
            yield None, None  # pynetdicom answers 0xA801, Move Destination unknown
            return
        error: Exception | None = None
        records: list[InstanceRecord] = []
        view: View | None = None
        try:
            records, view = self._records(event, "C-MOVE")
        except Exception as exc:
            error = exc
        established: list[Association] = []
        yield (
            peer.host,
            peer.port,
            {
                "contexts": propose_contexts(records),
                "evt_handlers": [
                    (evt.EVT_CONN_OPEN, _tune_connection),
                    (evt.EVT_ESTABLISHED, lambda e: established.append(e.assoc)),
                ],
            },
        )
        if error is not None or view is None:
            # pynetdicom reports a failure only after the destination association is open; with
            # nothing to send, it proposes Verification only (propose_contexts([])).
            yield 1
            yield self._failed("C-MOVE", event, error or ProcessingFailure("no records")), None
            return
        log.info("C-MOVE from %s to %s: %d instances", _calling(event), peer.ae_title, len(records))
        yield len(records)
        yield from self._sub_operations(
            event, records, offered_syntaxes(established[0]) if established else {}, view
        )

    def _sub_operations(
        self, event: Event, records: Sequence[InstanceRecord], offered: dict[str, list[str]], view: View
    ) -> HandlerResult:
        for record in records:
            if event.is_cancelled:
                yield _CANCEL, None
                return
            outgoing = self._outgoing(record, offered.get(record.sop_class_uid, []))
            yield _PENDING, view.dataset(outgoing, record.study_uid) if view.shapes else outgoing

    def _outgoing(self, record: InstanceRecord, offered: Sequence[str]) -> Dataset:
        """``record`` rebuilt in a transfer syntax the receiver accepted."""
        syntax = choose_syntax(record, offered)
        if syntax is None:
            log.warning(
                "SOP instance %s not sent: the receiver accepted no producible transfer syntax for "
                "SOP class %s (accepted: %s)",
                record.sop_uid,
                record.sop_class_uid,
                ", ".join(offered) or "none",
            )
            return _unsendable(record)
        try:
            return pydicom.dcmread(io.BytesIO(part10(self.store, record, syntax)))
        except Exception as exc:
            log.error(
                "rebuilding SOP instance %s in %s failed: %s", record.sop_uid, syntax, type(exc).__name__
            )
            return _unsendable(record)


def _tune_connection(event: Event) -> None:
    """Send each PDU at once (TCP_NODELAY), and let an idle association poll less often.

    A response is a command PDU and then a data set PDU; with Nagle's algorithm the second waits
    for the peer's delayed acknowledgement of the first, about 40 ms on Linux, for every C-FIND
    match and every C-STORE sub-operation.

    pynetdicom's DUL thread sleeps 1 ms between polls of an idle socket; with several associations
    those wake-ups contend for the GIL with the threads doing the work. 4 ms measured best for
    C-STORE of 512² CT slices on 2 cores: 4 concurrent storescu associations 64-75 → 86-96
    instances/s, one association unchanged (41-46); 10 ms slows a single association down.
    """
    event.assoc.dul._run_loop_delay = _IDLE_POLL_SECONDS
    sock = event.assoc.dul.socket
    raw = getattr(sock, "socket", None) if sock is not None else None
    if raw is not None:
        with suppress(OSError):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _wait_until_sent(assoc: Association, timeout: float = 60.0) -> None:
    """Wait until the responses already handed to pynetdicom are on the wire.

    pynetdicom's DUL thread either sends a queued PDU or reads an incoming one, sending first; a
    handler that queues responses faster than they go out would keep it from ever reading the
    peer's C-CANCEL, and would hold every response of a large result in memory. Waiting for the
    queue to drain gives back-pressure and lets a C-CANCEL in between two matches.
    """
    queue = assoc.dul.to_provider_queue
    deadline = time.monotonic() + timeout
    while queue.qsize() and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0005)


def _identifier(event: Event) -> Dataset:
    try:
        identifier: Dataset = event.identifier
    except Exception as exc:
        raise CannotUnderstand(f"the identifier cannot be decoded ({type(exc).__name__})") from None
    return identifier


def _as_radstack(exc: Exception) -> RadstackError:
    """A handler's error as a RadstackError; anything else is a processing failure (no details:
    an unexpected message could quote patient data)."""
    if isinstance(exc, RadstackError):
        return exc
    log.error("unexpected %s in a DIMSE handler", type(exc).__name__)
    return ProcessingFailure(f"internal error: {type(exc).__name__}")
