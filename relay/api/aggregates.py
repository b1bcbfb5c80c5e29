"""Outpost's metrics API: GET /metrics/events and /metrics/attempts.

Counts over history by time bucket and dimension (relay/db/aggregates.py does the SQL).
Parameters as Outpost's clients send them: ``time[start]`` / ``time[end]`` (deepObject),
``measures`` and ``dimensions`` repeated or in bracket notation, ``filters[<name>]``
likewise. A tenant token sees its own tenant only, and may not ask for ``tenant_id`` as a
dimension or filter (403, as Outpost answers). Rates are per second of the part of each
bucket inside the window (of the whole window without a granularity).

Not the Prometheus endpoint: that is ``GET /metrics`` (relay/api/metrics.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.api import params
from relay.api.auth import Caller, authenticate
from relay.api.errors import json_response
from relay.api.shapes import iso
from relay.appkeys import ENGINE
from relay.db import aggregates
from relay.errors import BadRequest, Forbidden

PREFIX = "/api/v1"
routes = web.RouteTableDef()

EVENT_MEASURES = ("count", "rate")
ATTEMPT_MEASURES = (
    "count",
    "successful_count",
    "failed_count",
    "error_rate",
    "first_attempt_count",
    "retry_count",
    "manual_retry_count",
    "avg_attempt_number",
    "rate",
    "successful_rate",
    "failed_rate",
    # outpost-sdk 1.7's (Outpost's managed API; not in its open-source server): the
    # destination's response time in milliseconds, null for a group with no timed attempt.
    "avg_latency",
    "p50_latency",
    "p95_latency",
    "p99_latency",
)
# Rate measures: the count they divide by the bucket's length in seconds.
RATES = {"rate": "count", "successful_rate": "successful_count", "failed_rate": "failed_count"}

_FILTER_KEY = re.compile(r"filters\[([^\]]*)\](?:\[\d*\])?")


@routes.get(PREFIX + "/metrics/events")
async def event_metrics(request: web.Request) -> web.Response:
    return await _metrics(
        request, EVENT_MEASURES, aggregates.EVENT_DIMENSIONS, aggregates.event_metrics
    )


@routes.get(PREFIX + "/metrics/attempts")
async def attempt_metrics(request: web.Request) -> web.Response:
    return await _metrics(
        request, ATTEMPT_MEASURES, aggregates.ATTEMPT_DIMENSIONS, aggregates.attempt_metrics
    )


async def _metrics(
    request: web.Request,
    measures: Sequence[str],
    dimensions: Mapping[str, str],
    run: Callable[[AsyncConnection, aggregates.Query], Awaitable[aggregates.Result]],
) -> web.Response:
    caller = await authenticate(request)
    query, asked = _query(request, caller, measures, list(dimensions))
    started = time.perf_counter()
    async with request.app[ENGINE].connect() as conn:
        result = await run(conn, query)
    return _answer(query, asked, result, started)


def _query(
    request: web.Request,
    caller: Caller,
    allowed_measures: Sequence[str],
    allowed_dimensions: Sequence[str],
) -> tuple[aggregates.Query, list[str]]:
    start, end = _window(request)
    granularity = None
    raw = params.single(request, "granularity")
    if raw is not None:
        try:
            granularity = aggregates.parse_granularity(raw)
        except ValueError as exc:
            raise BadRequest(f"granularity {exc}", data=["granularity"]) from None
    measures = _names(request, "measures", allowed_measures)
    if not measures:
        raise BadRequest(
            f"measures is required: one or more of {', '.join(allowed_measures)}",
            data=["measures"],
        )
    dimensions = _names(request, "dimensions", allowed_dimensions)
    filters = _filters(request, allowed_dimensions)
    if not caller.is_admin:
        if "tenant_id" in dimensions or "tenant_id" in filters:
            raise Forbidden("tenant_id as a dimension or filter needs the admin key")
    tenants = caller.tenant_filter(filters.get("tenant_id", []))
    if tenants:
        filters["tenant_id"] = tenants
    query = aggregates.Query(start, end, granularity, dimensions, filters, measures)
    return query, measures


def _window(request: web.Request) -> tuple[datetime, datetime]:
    # Other time[...] keys are ignored, as Outpost ignores them.
    bounds: dict[str, datetime] = {}
    for name in ("start", "end"):
        key = f"time[{name}]"
        raw = params.single(request, key)
        if raw is None:
            raise BadRequest(f"{key} is required (an RFC 3339 date-time)", data=[key])
        try:
            bounds[name] = params.parse_time(raw)
        except ValueError:
            raise BadRequest(
                f"{key} must be an RFC 3339 date-time (got {raw!r})", data=[key]
            ) from None
    if bounds["end"] <= bounds["start"]:
        raise BadRequest("time[end] must be after time[start]", data=["time[end]"])
    return bounds["start"], bounds["end"]


def _names(request: web.Request, name: str, allowed: Sequence[str]) -> list[str]:
    values = params.multi(request, name)
    for value in values:
        if value not in allowed:
            raise BadRequest(f"{name}: {value!r} is not one of {', '.join(allowed)}", data=[name])
    return values


def _filters(request: web.Request, allowed: Sequence[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in request.query.items():
        if not key.startswith("filters"):
            continue
        match = _FILTER_KEY.fullmatch(key)
        if match is None or match.group(1) not in allowed:
            raise BadRequest(
                f"{key} is not a filter here; filters[<name>] takes one of {', '.join(allowed)}",
                data=[key],
            )
        name = match.group(1)
        if not value:
            continue  # as params.multi: an empty value asks for nothing
        _check_filter_value(key, name, value)
        values = found.setdefault(name, [])
        if value not in values:
            values.append(value)
    return found


def _check_filter_value(key: str, name: str, value: str) -> None:
    if name == "manual" and value not in ("true", "false"):
        raise BadRequest(f"{key} must be true or false (got {value!r})", data=[key])
    if name == "attempt_number" and not (value.isascii() and value.isdigit() and len(value) < 10):
        raise BadRequest(f"{key} must be a whole number (got {value!r})", data=[key])
    if name == "status" and value not in ("success", "failed"):
        raise BadRequest(f"{key} must be success or failed (got {value!r})", data=[key])


def _answer(
    query: aggregates.Query, measures: list[str], result: aggregates.Result, started: float
) -> web.Response:
    window = (query.start, query.end)
    data = []
    for bucket in result.buckets:
        point: dict[str, Any] = {}
        if bucket.time_bucket is not None:
            point["time_bucket"] = iso(bucket.time_bucket)
        point["dimensions"] = bucket.dimensions
        point["metrics"] = {m: _measure(m, bucket, query, window) for m in measures}
        data.append(point)
    metadata: dict[str, Any] = {}
    if query.granularity is not None:
        metadata["granularity"] = query.granularity.text
    metadata |= {
        "query_time_ms": round((time.perf_counter() - started) * 1000),
        "row_count": len(data),
        "row_limit": aggregates.ROW_LIMIT,
        "truncated": result.truncated,
    }
    return json_response({"data": data, "metadata": metadata})


def _measure(
    name: str,
    bucket: aggregates.Bucket,
    query: aggregates.Query,
    window: tuple[datetime, datetime],
) -> Any:
    values = bucket.values
    if name in RATES:
        start = bucket.time_bucket or query.start
        seconds = aggregates.bucket_seconds(start, query.granularity, window)
        return values[RATES[name]] / seconds
    if name == "error_rate":
        return values["failed_count"] / values["count"] if values["count"] else 0.0
    return values[name]
