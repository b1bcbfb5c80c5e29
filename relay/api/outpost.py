"""The Outpost-compatible API under /api/v1 (contract: Hookdeck Outpost's OpenAPI).

This module holds publish, health, topics, destination types and the OpenAPI document,
and composes the rest: tenants.py, destinations.py, logs.py (events and attempts),
aggregates.py (metrics), retry.py, config.py and operator_events.py. What relay
implements is described by the document openapi.py serves (openapi.json, with every
destination type's schemas made from its field schema).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator
from sqlalchemy import text

from relay import tracing
from relay.api import (
    aggregates,
    config,
    destinations,
    logs,
    openapi,
    operator_events,
    retry,
    tenants,
)
from relay.api.auth import authenticate, require_admin
from relay.api.errors import RETRY_AFTER_SECONDS, json_response
from relay.api.rawjson import member_span
from relay.api.validation import read_json, validate
from relay.appkeys import (
    DISPATCHER,
    ENGINE,
    HEAD_REVISION,
    HORIZON,
    METRICS,
    PUBLISHER,
    SETTINGS,
    TRACING,
)
from relay.db.migrate import current_revision
from relay.delivery import registry
from relay.errors import NotFound, ValidationFailed
from relay.opevents import OPERATOR_TENANT
from relay.publish import (
    CONTROL,
    NO_CONTROL,
    NUL_IN_DATA,
    TOO_DEEP,
    Event,
    check_topic,
    data_json,
    holds_nul,
    new_event_id,
    time_problem,
)

PREFIX = "/api/v1"
routes = web.RouteTableDef()


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Annotated[StrictStr, Field(min_length=1, max_length=255)] | None = None
    tenant_id: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    # Bounded: topics are indexed, and a btree entry has a size limit.
    topic: Annotated[StrictStr, Field(max_length=255)] | None = None
    eligible_for_retry: StrictBool = True
    destination_id: Annotated[StrictStr, Field(min_length=1, max_length=255)] | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    time: datetime | None = None
    data: dict[str, Any]

    @field_validator("id", "tenant_id", "topic", "destination_id")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # PostgreSQL text cannot hold NUL; say so here, naming the field.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL (\\u0000)")
        return value

    @field_validator("tenant_id")
    @classmethod
    def _not_relays_own(cls, value: str) -> str:
        # Operator events are relay's to write (relay/opevents.py), not a producer's.
        if value == OPERATOR_TENANT:
            raise ValueError(f"{value!r} is relay's own tenant for operator events")
        return value

    @field_validator("id", "topic")
    @classmethod
    def _sendable(cls, value: str | None) -> str | None:
        if value is not None and CONTROL.search(value):
            raise ValueError(NO_CONTROL)
        return value

    @field_validator("metadata")
    @classmethod
    def _no_nul_in_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value and any("\x00" in k or "\x00" in v for k, v in value.items()):
            raise ValueError("keys and values must not contain NUL (\\u0000)")
        return value

    @field_validator("time")
    @classmethod
    def _storable_time(cls, value: datetime | None) -> datetime | None:
        # An instant outside years 1-9999 in UTC would be stored and never read back.
        problem = time_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def exact_data(raw: bytes, data: dict[str, Any]) -> bytes:
    """The bytes the producer sent as ``data`` in ``raw`` (a body that parsed as JSON).

    Most producers send compact JSON, which orjson writes back byte for byte: finding
    that after the key is a search, where the scan for the member walks the whole body.
    Otherwise the scan finds the producer's spelling. Either way the result is ``data``
    as JSON. At worst it is ``data`` in compact form: when ``data`` itself is spaced out
    and an equal value, written compactly, follows another key spelled to end that way
    (a nested ``"data"``, or a key ending in an escaped quote and ``data``)."""
    compact = data_json(data)
    if compact is None:
        raise ValidationFailed([f"data {TOO_DEEP}"])
    if holds_nul(compact, data):
        raise ValidationFailed([f"data {NUL_IN_DATA}"])
    if b'"data":' + compact in raw:
        return compact
    return member_span(raw, "data") or compact


@routes.post(PREFIX + "/publish")
async def publish_event(request: web.Request) -> web.Response:
    require_admin(request)
    body = validate(PublishBody, await read_json(request))
    # Store `data` as the producer's exact bytes (spacing, number spelling, key order);
    # the body already parsed, so the span is valid JSON.
    raw_data = exact_data(await request.read(), body.data)
    event = Event(
        tenant_id=body.tenant_id,
        topic=body.topic or "",
        data=raw_data,
        # The id is fixed before anything is written: a group retried unit by unit
        # after a failure cannot then write one event twice.
        id=body.id or new_event_id(),
        eligible_for_retry=body.eligible_for_retry,
        destination_id=body.destination_id,
        metadata=body.metadata or {},
        time=body.time,
    )
    settings = request.app[SETTINGS]
    check_topic(event.topic, settings.topics)
    # Group commit: answered once the transaction holding this event has committed. Not
    # strict (the default): an unknown tenant or destination_id is a 202 with no
    # destination_ids, as Outpost answers, not a 404 or 422 (README, "Compatibility").
    with tracing.publishing(request.app[TRACING], [event]):
        (result,) = await request.app[PUBLISHER].publish(
            [event], strict=settings.api.strict_publish
        )
    # The transaction has committed: only now is the event acknowledged.
    if not result.stored:
        request.app[METRICS].unknown_tenant.inc()
    elif not result.duplicate:
        request.app[METRICS].published_outpost.inc()
    return json_response(result.as_json(), status=202)


@routes.get(PREFIX + "/healthz")
@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    workers: dict[str, dict[str, str]] = {"http-server": {"status": "healthy"}}
    try:
        async with request.app[ENGINE].connect() as conn:
            await conn.execute(text("SELECT 1"))
        revision = await current_revision(request.app[ENGINE])
        migrated = revision == request.app[HEAD_REVISION]
        workers["database"] = {"status": "healthy" if migrated else "failed"}
    except Exception:
        workers["database"] = {"status": "failed"}
    dispatcher = request.app.get(DISPATCHER)
    if dispatcher is not None:
        workers["dispatcher"] = {"status": "healthy" if dispatcher.healthy else "failed"}
    # Every background loop of this process: running, and making progress (or idle).
    # Only the status is told, as in Outpost; the log says why (and /metrics, when).
    for supervisor in request.app[METRICS].supervisors:
        for name, status in supervisor.health().items():
            healthy = status == "healthy" or supervisor.draining
            workers[f"{supervisor.owner}-{name}"] = {"status": "healthy" if healthy else "failed"}
    ok = all(w["status"] == "healthy" for w in workers.values())
    # Warnings do not fail the check: delivery still works, only slower (relay/horizon.py).
    watch = request.app.get(HORIZON)
    payload = {
        "status": "healthy" if ok else "failed",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "workers": workers,
        "warnings": watch.health_warnings() if watch is not None else [],
    }
    retry = None if ok else {"Retry-After": RETRY_AFTER_SECONDS}
    return json_response(payload, status=200 if ok else 503, headers=retry)


@routes.get(PREFIX + "/topics")
async def list_topics(request: web.Request) -> web.Response:
    await authenticate(request)
    return json_response(list(request.app[SETTINGS].topics))


@routes.get(PREFIX + "/destination-types")
async def list_destination_types(request: web.Request) -> web.Response:
    """Every type relay knows, those this relay cannot deliver to as well (creating one of
    those is refused with the extra to install), as Outpost lists its types."""
    await authenticate(request)
    return json_response(registry.schemas())


@routes.get(PREFIX + "/destination-types/{type:[^/]+}")
async def get_destination_type(request: web.Request) -> web.Response:
    await authenticate(request)
    kind = request.match_info["type"]
    if not registry.known(kind):
        raise NotFound(registry.unknown_type(kind))
    return json_response(registry.schema(kind).as_json())


@routes.get(PREFIX + "/openapi.json")
async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=openapi.document(), content_type="application/json")


def setup(app: web.Application) -> None:
    app.add_routes(routes)
    app.add_routes(tenants.routes)
    app.add_routes(destinations.routes)
    app.add_routes(logs.routes)
    app.add_routes(retry.routes)
    app.add_routes(aggregates.routes)
    app.add_routes(config.routes)
    app.add_routes(operator_events.routes)
