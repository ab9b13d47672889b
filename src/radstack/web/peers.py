"""DICOM peers at ``/api/v1/peers``: the C-MOVE destinations (see :mod:`radstack.dimse.peers`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from radstack.dimse.peers import Peer, PeerRegistry, PeerSourceValues
from radstack.security.policy import ActionValues
from radstack.web.deps import authorize, platform_of

__all__ = ["router"]

router = APIRouter(tags=["DICOM peers"])


class PeerOut(BaseModel):
    ae_title: str
    host: str
    port: int
    source: PeerSourceValues = Field(description="config: from RADSTACK_PEERS (read-only); api: stored")


class PeerIn(BaseModel):
    host: str = Field(min_length=1, max_length=255, examples=["10.0.0.5"])
    port: int = Field(ge=1, le=65535, examples=[104])


def _registry(request: Request, peer: str | None = None, change: str | None = None) -> PeerRegistry:
    authorize(request, ActionValues.MANAGE_SYSTEM, peer=peer, change=change)
    return platform_of(request).peers


def _out(peer: Peer) -> PeerOut:
    return PeerOut(ae_title=peer.ae_title, host=peer.host, port=peer.port, source=peer.source)


@router.get("/peers", response_model=list[PeerOut], summary="List the DICOM peers (C-MOVE destinations)")
def list_peers(request: Request) -> list[PeerOut]:
    return [_out(p) for p in _registry(request).list_peers()]


@router.get("/peers/{ae_title}", response_model=PeerOut, summary="One DICOM peer")
def get_peer(request: Request, ae_title: str) -> PeerOut:
    return _out(_registry(request, peer=ae_title).get(ae_title))


@router.put("/peers/{ae_title}", response_model=PeerOut, summary="Add or change a DICOM peer")
def put_peer(request: Request, response: Response, ae_title: str, body: PeerIn) -> PeerOut:
    peer, created = _registry(request, peer=ae_title, change="put").put(ae_title, body.host, body.port)
    response.status_code = 201 if created else 200
    return _out(peer)


@router.delete("/peers/{ae_title}", status_code=204, response_class=Response, summary="Remove a DICOM peer")
def delete_peer(request: Request, ae_title: str) -> Response:
    _registry(request, peer=ae_title, change="delete").delete(ae_title)
    return Response(status_code=204)
