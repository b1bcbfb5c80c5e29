"""/api/v1/operator-events: the operator events API outpost-sdk 1.7 calls (admin only).

Operator sinks are the destinations of the internal tenant ``relay/operator``
(relay/opevents.py) and operator events are its events, so these routes are the tenant
routes (destinations, events, attempts, retry) scoped to that tenant, with two
differences the SDK expects: topics are operator event topics, and creating a sink or
retrying answers 200. Sinks declared in the config file are listed and read here, and
changed only there (409 naming the file)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictStr

from relay import opevents
from relay.api import destinations, logs, retry
from relay.api.auth import SCOPED_CALLER, Caller, require_admin
from relay.api.errors import json_response
from relay.api.shapes import destination_json
from relay.api.validation import read_json, validate
from relay.appkeys import ENGINE, SETTINGS
from relay.db import admin, history
from relay.db import operator_events as db
from relay.delivery import registry
from relay.errors import Conflict, NotFound, ValidationFailed
from relay.signing import generate_secret

PREFIX = "/api/v1/operator-events"
DESTINATION = PREFIX + "/destinations/{destination_id:[^/]+}"
routes = web.RouteTableDef()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _as_operator(request: web.Request) -> None:
    """Admin only; then the request acts as the operator tenant."""
    require_admin(request)
    request[SCOPED_CALLER] = Caller(opevents.OPERATOR_TENANT)
    request.match_info["tenant_id"] = opevents.OPERATOR_TENANT


# Sinks made through this API are webhooks (sinks of other types: the config file).
SINK_TYPE = "webhook"


def _check_sink_type(value: str) -> None:
    destinations.check_type(value)
    if value != SINK_TYPE:
        raise ValidationFailed(
            [
                f"type {value!r}: operator event destinations made through the API are "
                "webhooks; declare other types under [[operator_events.sinks]]"
            ]
        )


def _operator_topics(value: str | list[str], problems: list[str]) -> list[str]:
    topics = destinations.topic_list(value, [], problems)
    for index, topic in enumerate(topics if isinstance(value, list) else []):
        problem = opevents.topic_problem(topic)
        if problem:
            problems.append(f"topics[{index}]: {problem}")
    return topics


class SinkCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: StrictStr
    topics: StrictStr | list[StrictStr]
    config: destinations.WebhookConfig
    credentials: destinations.WebhookCredentials | None = None
    metadata: dict[StrictStr, StrictStr] | None = None


class SinkPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    topics: StrictStr | list[StrictStr] | None = None
    config: destinations.WebhookConfigPatch | None = None
    credentials: destinations.WebhookCredentials | None = None


@routes.get(PREFIX + "/destination-types")
async def list_destination_types(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response([registry.schema(SINK_TYPE).as_json()])


@routes.get(PREFIX + "/destinations")
async def list_sinks(request: web.Request) -> web.Response:
    _as_operator(request)
    async with request.app[ENGINE].connect() as conn:
        found = await admin.list_destinations(conn, opevents.OPERATOR_TENANT)
    return json_response([destination_json(d) for d in found])


@routes.post(PREFIX + "/destinations")
async def create_sink(request: web.Request) -> web.Response:
    _as_operator(request)
    payload = await read_json(request)
    if isinstance(payload, dict) and isinstance(payload.get("type"), str):
        _check_sink_type(payload["type"])
    body = validate(SinkCreate, payload)
    _check_sink_type(body.type)
    settings = request.app[SETTINGS]
    problems: list[str] = []
    topics = _operator_topics(body.topics, problems)
    destinations.check_url(
        body.config.url, destinations.allowed_networks(request.config_dict), problems
    )
    headers = destinations.parse_custom_headers(body.config.custom_headers, problems)
    mode = destinations.check_mode(body.config.webhook_mode, problems)
    secret = body.credentials.secret if body.credentials else None
    if secret is not None and not secret:
        problems.append("credentials.secret must not be empty")
    if problems:
        raise ValidationFailed(problems)
    new = admin.NewDestination(
        tenant_id=opevents.OPERATOR_TENANT,
        id=destinations.new_destination_id(),
        type=body.type,
        topics=topics,
        url=body.config.url,
        custom_headers=headers,
        secret=secret or generate_secret(mode or settings.delivery.webhook_mode),
        webhook_mode=mode,
        metadata=body.metadata or {},
        delivery_metadata={},
        filter=None,
        disabled_at=None,
        created_at=None,
        updated_at=None,
    )
    async with request.app[ENGINE].begin() as conn:
        await db.ensure_tenant(conn)
        created = await admin.insert_destination(conn, new)
    if created is None:  # a generated id met another: as unlikely as it gets
        raise Conflict(f"operator event destination {new.id!r} already exists; try again")
    return json_response(destination_json(created))


async def _existing(request: web.Request, conn: Any) -> admin.Destination:
    destination_id = request.match_info["destination_id"]
    found = await admin.get_destination(conn, opevents.OPERATOR_TENANT, destination_id)
    if found is None:
        raise NotFound(f"operator event destination {destination_id!r} not found")
    return found


@routes.get(DESTINATION)
async def get_sink(request: web.Request) -> web.Response:
    _as_operator(request)
    async with request.app[ENGINE].connect() as conn:
        found = await _existing(request, conn)
    return json_response(destination_json(found))


@routes.patch(DESTINATION)
async def update_sink(request: web.Request) -> web.Response:
    _as_operator(request)
    body = validate(SinkPatch, await read_json(request))
    settings = request.app[SETTINGS]
    problems: list[str] = []
    topics = None
    if "topics" in body.model_fields_set:
        if body.topics is None:
            problems.append('topics must not be null; use "*" for every topic')
        else:
            topics = _operator_topics(body.topics, problems)
    if problems:
        raise ValidationFailed(problems)
    patch = destinations.DestinationPatch.model_validate(
        body.model_dump(exclude_unset=True, exclude={"topics"})
    )
    async with request.app[ENGINE].begin() as conn:
        current = await _existing(request, conn)
        destinations.api_owned(request.config_dict, current)
        patched = destinations.apply_patch(
            current,
            patch,
            Caller(),
            [],
            destinations.allowed_networks(request.config_dict),
            settings.delivery.webhook_mode,
        )
        if topics is not None:
            patched = replace(patched, topics=topics)
        updated = await admin.update_destination(conn, patched)
    assert updated is not None
    return json_response(destination_json(updated))


def _delegate(handler: Handler) -> Handler:
    """A tenant route's handler, run as the operator tenant."""

    async def run(request: web.Request) -> web.StreamResponse:
        _as_operator(request)
        async with request.app[ENGINE].connect() as conn:
            if await admin.get_tenant(conn, opevents.OPERATOR_TENANT) is None:
                raise NotFound(
                    f"operator event destination {request.match_info['destination_id']!r} not found"
                )
        return await handler(request)

    return run


routes.delete(DESTINATION)(_delegate(destinations.delete_destination))
routes.put(DESTINATION + "/enable")(_delegate(destinations.enable_destination))
routes.put(DESTINATION + "/disable")(_delegate(destinations.disable_destination))


@routes.get(PREFIX + "/events")
async def list_events(request: web.Request) -> web.StreamResponse:
    _as_operator(request)
    return await logs.list_events(request)


@routes.get(PREFIX + "/events/{event_id:[^/]+}")
async def get_event(request: web.Request) -> web.StreamResponse:
    _as_operator(request)
    return await logs.get_event(request)


@routes.get(PREFIX + "/events/{event_id:[^/]+}/attempts")
async def list_event_attempts(request: web.Request) -> web.StreamResponse:
    _as_operator(request)
    f = history.AttemptFilter(
        tenant_ids=[opevents.OPERATOR_TENANT], event_ids=[request.match_info["event_id"]]
    )
    return await logs.attempt_page(request, f)


@routes.get(PREFIX + "/attempts")
async def list_attempts(request: web.Request) -> web.StreamResponse:
    _as_operator(request)
    return await logs.list_attempts(request)


@routes.get(PREFIX + "/attempts/{attempt_id:[^/]+}")
async def get_attempt(request: web.Request) -> web.StreamResponse:
    _as_operator(request)
    return await logs.get_attempt(request)


@routes.post(PREFIX + "/retry")
async def retry_event(request: web.Request) -> web.StreamResponse:
    _as_operator(request)
    answer = await retry.retry(request)
    answer.set_status(200)  # the SDK's retryOperatorEvent expects 200 where /retry is 202
    return answer
