"""POST /api/v1/retry: one more (manual) attempt of an event to a destination."""

from __future__ import annotations

from typing import Annotated

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from relay import routing
from relay.api.auth import authenticate
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
    async with request.app[ENGINE].begin() as conn:
        target = await admin.retry_target(
            conn, body.event_id, body.destination_id, caller.tenant_id
        )
        if target is None:
            tenants = caller.tenant_filter([])
            if await history.get_event(conn, body.event_id, tenants) is None:
                raise NotFound(f"event {body.event_id!r} not found")
            raise NotFound(f"destination {body.destination_id!r} not found for the event's tenant")
        if not target.enabled:
            raise BadRequest(f"destination {body.destination_id!r} is disabled")
        if not routing.any_topic_matches(target.topics, target.topic):
            raise BadRequest(
                f"destination {body.destination_id!r} is not subscribed to topic {target.topic!r}"
            )
        subject = routing.filter_subject(
            target.event_id, target.topic, target.metadata, orjson.loads(target.data), target.time
        )
        if not routing.filter_matches(target.filter, subject):
            raise BadRequest(
                f"the event does not pass destination {body.destination_id!r}'s filter"
            )
        queued = await admin.requeue(conn, target.event_seq, target.tenant_id, body.destination_id)
        if queued is None:
            raise NotFound(f"event {body.event_id!r} not found")
        if not queued:
            raise Conflict("an attempt of this event to this destination is in progress; try again")
    return json_response({"success": True}, status=202)
