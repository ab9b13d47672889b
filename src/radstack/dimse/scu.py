"""Sending instances to DICOM peers (PS3.4 §B.2, PS3.7 §9.1.1): the presentation contexts to propose,
the transfer syntax each instance goes in, and C-STORE of a whole set (routing's ``forward``). The
C-GET and C-MOVE sub-operations of :mod:`radstack.dimse.scp` choose syntaxes the same way.

Each instance goes in a transfer syntax the peer accepted for its SOP class (:func:`choose_syntax`):
the stored one when accepted, else explicit or implicit VR little endian, which every peer supports
(dcmtk 3.6.7 knows no HTJ2K and gets explicit VR little endian).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from radstack.dimse.peers import Peer
from radstack.errors import BadRequest, ProcessingFailure
from radstack.store.retrieve import can_produce, part10, stored_syntax
from radstack.store.studies import InstanceRecord, StudyStore

__all__ = ["VERIFICATION", "choose_syntax", "offered_syntaxes", "propose_contexts", "send_instances"]

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
_EXPLICIT_LE = str(ExplicitVRLittleEndian)
_IMPLICIT_LE = str(ImplicitVRLittleEndian)
#: An association proposes at most 128 presentation contexts (PS3.8 §9.3.2.2: odd IDs 1 to 255).
_MAX_CONTEXTS = 128
_SUCCESS, _WARNINGS = 0x0000, frozenset({0x0001, 0xB000, 0xB006, 0xB007})


def choose_syntax(record: InstanceRecord, offered: Sequence[str]) -> str | None:
    """The transfer syntax to send ``record`` in, of those the receiver accepted for its SOP class.

    The stored syntax needs no transcoding; then explicit and implicit VR little endian, which
    every receiver supports (PS3.5 §10.1); then any other the receiver proposed that
    :func:`~radstack.store.retrieve.can_produce` makes without loss. ``None`` when none fits.
    """
    for syntax in (stored_syntax(record), _EXPLICIT_LE, _IMPLICIT_LE, *offered):
        if syntax in offered and can_produce(record, syntax):
            return syntax
    return None


def propose_contexts(records: Sequence[InstanceRecord]) -> list[PresentationContext]:
    """Presentation contexts for sending ``records``: per SOP class and stored syntax, that syntax
    plus explicit and implicit VR little endian (the receiver picks one of each context)."""
    wanted: dict[tuple[str, str], None] = {}
    for record in records:
        wanted[(record.sop_class_uid, stored_syntax(record))] = None
    contexts = [
        build_context(sop_class, list(dict.fromkeys([syntax, _EXPLICIT_LE, _IMPLICIT_LE])))
        for sop_class, syntax in wanted
    ]
    if len(contexts) > _MAX_CONTEXTS:  # many SOP classes in one retrieve: little endian only
        classes = list(dict.fromkeys(sop_class for sop_class, _syntax in wanted))
        if len(classes) > _MAX_CONTEXTS:
            log.warning(
                "a retrieve spans %d SOP classes; only %d can be proposed", len(classes), _MAX_CONTEXTS
            )
        contexts = [build_context(c, [_EXPLICIT_LE, _IMPLICIT_LE]) for c in classes[:_MAX_CONTEXTS]]
    return contexts or [build_context(VERIFICATION)]


def offered_syntaxes(assoc: Association) -> dict[str, list[str]]:
    """Transfer syntaxes accepted for sending (our side as SCU), by SOP class."""
    offered: dict[str, list[str]] = {}
    for context in assoc.accepted_contexts:
        if context.as_scu:
            offered.setdefault(str(context.abstract_syntax), []).append(str(context.transfer_syntax[0]))
    return offered


def send_instances(
    store: StudyStore, peer: Peer, records: Sequence[InstanceRecord], *, calling_ae: str
) -> dict[str, Any]:
    """C-STORE ``records`` to ``peer`` on one association; returns counts.

    Raises
    ------
    ProcessingFailure
        The peer cannot be reached, aborted, or refused some instances (worth retrying).
    BadRequest
        The peer rejected the association or accepted no transfer syntax radstack can produce for
        some SOP class (retrying changes nothing; the message names the SOP classes).
    NotFound
        A blob of an instance is missing from the blob store.
    TransferSyntaxNotSupported
        An instance must be transcoded and no installed decoder handles its stored syntax.
    CannotUnderstand
        An instance must be transcoded and its frames cannot be decoded.
    """
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = propose_contexts(records)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if assoc.is_rejected:
        raise BadRequest(f"peer {peer.ae_title} at {peer.host}:{peer.port} rejected the association")
    if not assoc.is_established and assoc.rejected_contexts and not assoc.accepted_contexts:
        # pynetdicom aborts an association in which the peer accepted no presentation context.
        refused = sorted({str(context.abstract_syntax) for context in assoc.rejected_contexts})
        raise BadRequest(
            f"peer {peer.ae_title} accepted no transfer syntax radstack can send for SOP class "
            f"{', '.join(refused)} (proposed: the stored syntax, explicit and implicit VR little endian)"
        )
    if not assoc.is_established:
        raise ProcessingFailure(f"peer {peer.ae_title} at {peer.host}:{peer.port} cannot be reached")
    offered = offered_syntaxes(assoc)
    sent, refused, unsendable = 0, [], set()
    try:
        for record in records:
            syntax = choose_syntax(record, offered.get(record.sop_class_uid, []))
            if syntax is None:
                unsendable.add(record.sop_class_uid)
                continue
            ds = pydicom.dcmread(io.BytesIO(part10(store, record, syntax)))
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1))
            if code == _SUCCESS or code in _WARNINGS:
                sent += 1
            else:
                refused.append(f"{record.sop_uid}: 0x{code & 0xFFFF:04X}" if code >= 0 else record.sop_uid)
            if not assoc.is_established:
                raise ProcessingFailure(
                    f"peer {peer.ae_title} aborted the association after {sent} instances"
                )
    finally:
        if assoc.is_established:
            assoc.release()
    if unsendable:
        raise BadRequest(
            f"peer {peer.ae_title} accepted no transfer syntax radstack can send for SOP class "
            f"{', '.join(sorted(unsendable))}; {sent} of {len(records)} instances were sent"
        )
    if refused:
        raise ProcessingFailure(
            f"peer {peer.ae_title} refused {len(refused)} of {len(records)} instances ({'; '.join(refused[:5])})"
        )
    log.info("sent %d instances to %s", sent, peer.ae_title)
    return {"peer": peer.ae_title, "sent": sent}
