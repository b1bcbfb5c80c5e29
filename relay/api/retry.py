"""POST /api/v1/retry: one more (manual) attempt of an event to a destination.

As in Outpost, a destination the event never went to is a 404, and one it went to that
is now disabled or no longer matches is a 400. relay adds one case Outpost refuses: a
destination the event never went to that matches it now (created after the event, say)
gets its first delivery, so a past event can be sent to a new destination.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from sqlalchemy.ext.asyncio import AsyncEngine

from relay import routing
from relay.api.auth import Caller, authenticate
from relay.api.errors import json_response
from relay.api.validation import read_json, validate
from relay.appkeys import ENGINE
from relay.db import admin, history
from relay.errors import BadRequest, Conflict, NotFound

routes = web.RouteTableDef()


class RetryBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: Annotated[StrictStr, Field(min_length=1)]
    destination_id: Annotated[StrictStr, Field(min_length=1)]


@routes.post("/api/v1/retry")
async def retry(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    body = validate(RetryBody, await read_json(request))
    await retry_delivery(request.app[ENGINE], caller, body.event_id, body.destination_id)
    return json_response({"success": True}, status=202)


async def retry_delivery(
    engine: AsyncEngine, caller: Caller, event_id: str, destination_id: str
) -> None:
    """Queue one manual attempt (the API and the portal); 404/400/409 as documented."""
    body = validate(RetryBody, {"event_id": event_id, "destination_id": destination_id})
    async with engine.begin() as conn:
        target = await admin.retry_target(
            conn, body.event_id, body.destination_id, caller.tenant_id
        )
        if target is None:
            tenants = caller.tenant_filter([])
            if await history.get_event(conn, body.event_id, tenants) is None:
                raise NotFound(f"event {body.event_id!r} not found")
            raise NotFound(f"destination {body.destination_id!r} not found for the event's tenant")
        refusal = _refusal(target, body.destination_id)
        if refusal is not None:
            if not target.routed:
                raise NotFound(
                    f"event {body.event_id!r} was never routed to destination "
                    f"{body.destination_id!r}, and cannot be now: {refusal}"
                )
            raise BadRequest(refusal)
        queued = await admin.requeue(conn, target.event_seq, target.tenant_id, body.destination_id)
        if queued is None:
            raise NotFound(f"event {body.event_id!r} not found")
        if not queued:
            raise Conflict("an attempt of this event to this destination is in progress; try again")


def _refusal(target: admin.RetryTarget, destination_id: str) -> str | None:
    """Why the event cannot go to the destination now, or None."""
    if not target.enabled:
        return f"destination {destination_id!r} is disabled"
    if not routing.any_topic_matches(target.topics, target.topic):
        return f"destination {destination_id!r} is not subscribed to topic {target.topic!r}"
    subject = routing.filter_subject(
        target.event_id, target.topic, target.metadata, orjson.loads(target.data), target.time
    )
    if not routing.filter_matches(target.filter, subject):
        return f"the event does not pass destination {destination_id!r}'s filter"
    return None
