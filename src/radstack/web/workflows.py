"""Workflow API at ``/api/v1``: routing rules and the event stream (server-sent events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from radstack.errors import BadRequest, Forbidden
from radstack.jobs.routing import RoutingRule
from radstack.security.policy import ActionValues, ScopeValues
from radstack.web.deps import authorize, platform_of

__all__ = ["router"]

router = APIRouter(tags=["workflows"])

_POLL_SECONDS = 0.5
_KEEPALIVE_SECONDS = 15.0


@router.get("/routing-rules", response_model=list[RoutingRule], summary="Routing rules")
def list_rules(request: Request) -> list[RoutingRule]:
    authorize(request, ActionValues.MANAGE_SYSTEM)
    return platform_of(request).rules.list_rules()


@router.get("/routing-rules/{name}", response_model=RoutingRule, summary="A routing rule")
def get_rule(request: Request, name: str) -> RoutingRule:
    authorize(request, ActionValues.MANAGE_SYSTEM, rule=name)
    return platform_of(request).rules.get(name)


@router.put(
    "/routing-rules/{name}",
    response_model=RoutingRule,
    summary="Create or replace a routing rule (run when a study becomes stable)",
    responses={201: {"model": RoutingRule}},
)
def put_rule(request: Request, response: Response, name: str, rule: RoutingRule) -> RoutingRule:
    authorize(request, ActionValues.MANAGE_SYSTEM, rule=name, change="put")
    if rule.name != name:
        raise BadRequest(f"the rule's name {rule.name!r} differs from {name!r} in the URL")
    if platform_of(request).rules.put(rule):
        response.status_code = 201
    return rule


@router.delete("/routing-rules/{name}", status_code=204, summary="Delete a routing rule")
def delete_rule(request: Request, name: str) -> Response:
    authorize(request, ActionValues.MANAGE_SYSTEM, rule=name, change="delete")
    platform_of(request).rules.delete(name)
    return Response(status_code=204)


@router.get(
    "/events",
    summary="Event stream (text/event-stream): study.stable and others; resumable with Last-Event-ID",
    response_class=StreamingResponse,
)
async def events(request: Request, since: int | None = None) -> StreamingResponse:
    """Server-sent events (WHATWG HTML §9.2). Without ``Last-Event-ID`` or ``since`` the stream starts
    with the next event; ``since=0`` replays every stored event first. Events name studies of any
    scope, so a role limited to some studies may not subscribe."""
    if authorize(request, ActionValues.READ_METADATA, stream="events").scope is not ScopeValues.ALL:
        raise Forbidden("the event stream spans every study; this role sees only some")
    log = platform_of(request).events
    header = request.headers.get("last-event-id")
    try:
        start = int(header) if header else since
    except ValueError:
        raise BadRequest(f"Last-Event-ID {header!r} is not an event id") from None
    last = start if start is not None else await to_thread.run_sync(log.last_id)

    async def stream() -> AsyncIterator[bytes]:
        nonlocal last
        quiet = 0.0
        yield b": radstack events\n\n"
        while not await request.is_disconnected():
            batch = await to_thread.run_sync(log.since, last)
            for event in batch:
                last = event.id
                yield f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.as_json())}\n\n".encode()
            if batch:
                quiet = 0.0
                continue
            await asyncio.sleep(_POLL_SECONDS)
            quiet += _POLL_SECONDS
            if quiet >= _KEEPALIVE_SECONDS:
                quiet = 0.0
                yield b": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
