"""History through the API: /events, /attempts and a destination's attempts.

Tenant tokens see their own tenant only, whatever ``tenant_id`` filter they send.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from relay.api import params
from relay.api.auth import Caller, authenticate
from relay.api.errors import json_response
from relay.api.shapes import attempt_json, event_json
from relay.api.tenants import require_tenant
from relay.appkeys import ENGINE
from relay.db import admin, history
from relay.errors import NotFound

PREFIX = "/api/v1"
# Ids in paths are matched with [^/]+: aiohttp's plain {name} refuses braces, which ids may
# hold (relay takes any id without NUL or control characters).
routes = web.RouteTableDef()

INCLUDES = ("event", "event.data", "response_data", "destination")


def _pagination(desc: bool, limit: int, page: history.Page[Any]) -> dict[str, Any]:
    return {
        "order_by": "time",
        "dir": "desc" if desc else "asc",
        "limit": limit,
        "next": page.next,
        "prev": page.prev,
    }


def _tenant_ids(request: web.Request, caller: Caller) -> list[str]:
    return caller.tenant_filter(params.multi(request, "tenant_id"))


@routes.get(PREFIX + "/events")
async def list_events(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    params.order_by(request, "time")
    desc = params.descending(request)
    limit = params.capped_limit(request, default=100, maximum=1000)
    cursor = params.cursor(request, kind="events", desc=desc)
    f = history.EventFilter(
        tenant_ids=_tenant_ids(request, caller),
        ids=params.multi(request, "id"),
        topics=params.multi(request, "topic"),
        destination_ids=params.multi(request, "destination_id"),
        time=params.time_range(request),
    )
    async with request.app[ENGINE].connect() as conn:
        page = await history.list_events(conn, f, limit=limit, descending=desc, cursor=cursor)
    return json_response(
        {"models": [event_json(e) for e in page.rows], "pagination": _pagination(desc, limit, page)}
    )


@routes.get(PREFIX + "/events/{event_id:[^/]+}")
async def get_event(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    event_id = request.match_info["event_id"]
    tenant = params.single(request, "tenant_id")
    tenant_ids = caller.tenant_filter([tenant] if tenant else [])
    async with request.app[ENGINE].connect() as conn:
        event = await history.get_event(conn, event_id, tenant_ids)
    if event is None:
        raise NotFound(f"event {event_id!r} not found")
    return json_response(event_json(event))


def _attempt_filter(
    request: web.Request, tenant_ids: list[str], destination_ids: list[str]
) -> history.AttemptFilter:
    return history.AttemptFilter(
        tenant_ids=tenant_ids,
        event_ids=params.multi(request, "event_id"),
        destination_ids=destination_ids,
        topics=params.multi(request, "topic"),
        status=params.one_of(request, "status", "success", "failed"),
        time=params.time_range(request),
    )


async def attempt_page(
    request: web.Request, f: history.AttemptFilter, *, types: list[str] | None = None
) -> web.Response:
    params.order_by(request, "time")
    desc = params.descending(request)
    limit = params.capped_limit(request, default=100, maximum=1000)
    cursor = params.cursor(request, kind="attempts", desc=desc)
    include = params.include(request, *INCLUDES)
    if types:
        f = replace(f, destination_types=types)
    async with request.app[ENGINE].connect() as conn:
        page = await history.list_attempts(
            conn,
            f,
            limit=limit,
            descending=desc,
            cursor=cursor,
            with_data="event.data" in include,
        )
        destinations = await _destinations(conn, page.rows, include)
    models = [
        attempt_json(a, include, destinations.get((a.tenant_id, a.destination_id)))
        for a in page.rows
    ]
    return json_response({"models": models, "pagination": _pagination(desc, limit, page)})


async def _destinations(
    conn: Any, rows: list[history.AttemptRow], include: set[str]
) -> dict[tuple[str, str], admin.Destination]:
    if "destination" not in include:
        return {}
    found: dict[tuple[str, str], admin.Destination] = {}
    for key in dict.fromkeys((a.tenant_id, a.destination_id) for a in rows):
        destination = await admin.get_destination(conn, *key)
        if destination is not None:
            found[key] = destination
    return found


@routes.get(PREFIX + "/attempts")
async def list_attempts(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    types = params.multi(request, "destination_type")
    f = _attempt_filter(
        request, _tenant_ids(request, caller), params.multi(request, "destination_id")
    )
    return await attempt_page(request, f, types=types or None)


async def _one_attempt(request: web.Request, f: history.AttemptFilter) -> web.Response:
    raw_id = request.match_info["attempt_id"]
    include = params.include(request, *INCLUDES)
    attempt = None
    async with request.app[ENGINE].connect() as conn:
        if raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 19:
            attempt = await history.get_attempt(
                conn, int(raw_id), f, with_data="event.data" in include
            )
        destinations = await _destinations(conn, [attempt] if attempt else [], include)
    if attempt is None:
        raise NotFound(f"attempt {raw_id!r} not found")
    return json_response(
        attempt_json(
            attempt, include, destinations.get((attempt.tenant_id, attempt.destination_id))
        )
    )


@routes.get(PREFIX + "/attempts/{attempt_id:[^/]+}")
async def get_attempt(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    tenant = params.single(request, "tenant_id")
    f = history.AttemptFilter(tenant_ids=caller.tenant_filter([tenant] if tenant else []))
    return await _one_attempt(request, f)


DESTINATION_ATTEMPTS = (
    PREFIX + "/tenants/{tenant_id:[^/]+}/destinations/{destination_id:[^/]+}/attempts"
)


async def _destination_scope(request: web.Request) -> tuple[str, str]:
    caller = await authenticate(request)
    tenant_id = request.match_info["tenant_id"]
    destination_id = request.match_info["destination_id"]
    async with request.app[ENGINE].connect() as conn:
        await require_tenant(conn, caller, tenant_id)
        if await admin.get_destination(conn, tenant_id, destination_id) is None:
            raise NotFound(f"destination {destination_id!r} not found for tenant {tenant_id!r}")
    return tenant_id, destination_id


@routes.get(DESTINATION_ATTEMPTS)
async def list_destination_attempts(request: web.Request) -> web.Response:
    tenant_id, destination_id = await _destination_scope(request)
    return await attempt_page(request, _attempt_filter(request, [tenant_id], [destination_id]))


@routes.get(DESTINATION_ATTEMPTS + "/{attempt_id:[^/]+}")
async def get_destination_attempt(request: web.Request) -> web.Response:
    tenant_id, destination_id = await _destination_scope(request)
    f = history.AttemptFilter(tenant_ids=[tenant_id], destination_ids=[destination_id])
    return await _one_attempt(request, f)
