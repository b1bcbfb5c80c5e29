"""The publish path's SQL, on a raw asyncpg connection.

One set of statements serves every way of publishing: the HTTP handlers (through group
commit, several events per statement), the Python API (inside the producer's own
transaction, which may be an SQLAlchemy connection underneath) and the router that
routes events written by the ``relay.publish()`` SQL function. Every statement takes
arrays (``unnest``), so one event and five hundred cost the same number of round trips.

Values cross as text and are cast in SQL: an asyncpg connection borrowed from SQLAlchemy
has JSON codecs installed that a plain one lacks, and text works the same on both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from relay.db.outbox import ANNOUNCE

# The relay.publish() SQL function notifies this channel; the router listens on it.
ROUTE_CHANNEL = "relay_route"

# Live tenants among the given ids, each with its live destinations (none: one row of
# NULLs) and their filters, in creation order (the order destination_ids come back in);
# and the route version they were read at (one row of NULLs but the version if no tenant
# is found), from the same snapshot.
TENANT_ROUTES = """
    SELECT v.version, r.tenant_id, r.id, r.topics, r.enabled, r.filter, r.ordering_key
    FROM relay.route_version v
    LEFT JOIN (
        SELECT t.id AS tenant_id, d.id, d.topics, d.disabled_at IS NULL AS enabled,
               NULLIF(d.filter, '{}'::jsonb)::text AS filter, d.created_at, d.ordering_key
        FROM relay.tenants t
        LEFT JOIN relay.destinations d ON d.tenant_id = t.id AND d.deleted_at IS NULL
        WHERE t.id = ANY($1::text[]) AND t.deleted_at IS NULL
    ) r ON true
    ORDER BY r.tenant_id, r.created_at, r.id
"""

ROUTE_VERSION = "SELECT version FROM relay.route_version"

# Events and their outbox rows in one statement: on an autocommit connection, one round
# trip and one implicit transaction for a whole group (no BEGIN, no COMMIT). routed_at
# defaults to now(): these events are routed as they are written. The deliveries go to
# the events that were new, in the order given (lock order); a repeat id inserts nothing.
# The wake-up is sent on commit, once, and only when rows were queued.
# Rows cross as one JSON document each ($1 events, $2 deliveries): one text value to
# encode instead of an array per column, which costs the driver per element. An event's
# data and body sit in $1 as JSON values, not as strings: a json column of
# json_to_recordset keeps the value's text exactly (spacing, key order, escapes), so they
# are neither escaped here nor parsed twice there.
# $3: the route version the deliveries were routed at, or NULL. When the routes have
# changed since (relay.route_version moved), nothing is written; one more row (seq NULL)
# answers the version seen, so the caller can tell "stale" from "all repeats".
WRITE_EVENTS = f"""
    WITH current AS (
        SELECT version FROM relay.route_version
    ), given AS (
        SELECT e.*
        FROM ROWS FROM (json_to_recordset($1::json) AS (
            tenant_id text, id text, topic text, data json, body json, metadata jsonb,
            eligible_for_retry boolean, destination_id text, time timestamptz,
            trace_context text)
        ) WITH ORDINALITY AS e(tenant_id, id, topic, data, body, metadata, eligible_for_retry,
                               destination_id, time, trace_context, n)
        WHERE $3::bigint IS NULL OR $3::bigint = (SELECT version FROM current)
    ), keys AS (
        -- Idempotency: the key is written first, and only a new key writes its event.
        INSERT INTO relay.event_keys (tenant_id, id)
        SELECT tenant_id, id FROM given ORDER BY n
        ON CONFLICT (tenant_id, id) DO NOTHING
        RETURNING tenant_id, id, seq
    ), inserted AS (
        INSERT INTO relay.events
            (seq, tenant_id, id, topic, data, body, metadata, eligible_for_retry,
             destination_id, time, trace_context)
        SELECT DISTINCT ON (k.seq) k.seq, e.tenant_id, e.id, e.topic, e.data, e.body,
               e.metadata, e.eligible_for_retry, e.destination_id, COALESCE(e.time, now()),
               e.trace_context
        FROM keys k JOIN given e ON e.tenant_id = k.tenant_id AND e.id = k.id
        ORDER BY k.seq, e.n
        RETURNING seq, tenant_id, id
    ), queued AS (
        INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id, ordering_key)
        SELECT inserted.seq, k.tenant_id, k.destination_id, k.ordering_key
        FROM ROWS FROM (
            json_to_recordset($2::json)
                AS (tenant_id text, id text, destination_id text, ordering_key text)
        ) WITH ORDINALITY AS k(tenant_id, id, destination_id, ordering_key, n)
        JOIN inserted ON inserted.tenant_id = k.tenant_id AND inserted.id = k.id
        ORDER BY k.n
        RETURNING tenant_id, destination_id
    ), woken AS (
        SELECT {ANNOUNCE}
        FROM (SELECT DISTINCT tenant_id, destination_id FROM queued) AS each_destination
    )
    SELECT seq, tenant_id, id FROM inserted
    UNION ALL
    SELECT NULL, NULL, version::text FROM current
    -- Always true; it is there to read woken, which PostgreSQL would otherwise skip (a
    -- SELECT CTE that nothing reads is never run).
    WHERE (SELECT count(*) FROM woken) >= 0
"""

# The destinations an already-published event went to (an idempotent repeat answers
# them), in the order the first answer gave them: the destinations' creation order.
EVENT_DESTINATIONS = """
    SELECT e.tenant_id, e.id, d.destination_id
    FROM unnest($1::text[], $2::text[]) AS k(tenant_id, id)
    JOIN relay.event_keys e ON e.tenant_id = k.tenant_id AND e.id = k.id
    JOIN relay.deliveries d ON d.event_seq = e.seq
    LEFT JOIN relay.destinations t ON t.tenant_id = d.tenant_id AND t.id = d.destination_id
    ORDER BY t.created_at, d.destination_id
"""

INSERT_DELIVERIES = f"""
    WITH queued AS (
        INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id, ordering_key)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
        RETURNING tenant_id, destination_id
    )
    SELECT {ANNOUNCE}
    FROM (SELECT DISTINCT tenant_id, destination_id FROM queued) AS each_destination
"""

# Events the SQL function wrote, oldest first; several routers skip each other's rows.
CLAIM_UNROUTED = """
    SELECT seq, tenant_id, id, topic, data::text AS data, metadata::text AS metadata,
           destination_id, time
    FROM relay.events
    WHERE routed_at IS NULL
    ORDER BY seq
    LIMIT $1
    FOR UPDATE SKIP LOCKED
"""

MARK_ROUTED = """
    UPDATE relay.events SET routed_at = now() WHERE seq = ANY($1::bigint[])
"""


class StaleRoutes(Exception):
    """The routes a write was planned with changed before it: nothing was written."""


@dataclass(frozen=True, slots=True)
class DestinationRoute:
    id: str
    topics: Sequence[str]
    enabled: bool
    # The destination's filter as JSON text, or None.
    filter: str | None
    # Ordered delivery: the metadata key whose value orders its events (None: unordered).
    ordering_key: str | None = None

    def key_of(self, metadata: Mapping[str, str]) -> str | None:
        """An event's ordering key at this destination (None: delivered unordered)."""
        return None if self.ordering_key is None else metadata.get(self.ordering_key)


@dataclass(slots=True)  # one per event: not frozen, as relay.publish.Event
class NewEvent:
    tenant_id: str
    id: str
    topic: str
    # One serialized JSON value each, embedded in the statement as they are: they must
    # be valid JSON (relay.publish checks what it did not parse itself).
    data: bytes
    body: bytes | None
    metadata: dict[str, str]
    eligible_for_retry: bool
    destination_id: str | None
    time: datetime | None
    # W3C traceparent of the publish span (relay/tracing.py), or None.
    trace_context: str | None = None


@dataclass(frozen=True, slots=True)
class Unrouted:
    seq: int
    tenant_id: str
    id: str
    topic: str
    data: str
    metadata: str
    destination_id: str | None
    time: datetime


@dataclass(frozen=True, slots=True)
class Routes:
    # relay.route_version when these were read.
    version: int
    # Live tenant id -> its live destinations; a missing or deleted tenant is absent.
    tenants: dict[str, list[DestinationRoute]]


async def tenant_routes(conn: asyncpg.Connection, tenant_ids: Sequence[str]) -> Routes:
    found: dict[str, list[DestinationRoute]] = {}
    rows = await conn.fetch(TENANT_ROUTES, list(tenant_ids))
    for r in rows:
        if r["tenant_id"] is None:
            continue
        routes = found.setdefault(r["tenant_id"], [])
        if r["id"] is not None:
            routes.append(
                DestinationRoute(r["id"], r["topics"], r["enabled"], r["filter"], r["ordering_key"])
            )
    return Routes(rows[0]["version"], found)


async def write_events(
    conn: asyncpg.Connection,
    events: Sequence[NewEvent],
    deliveries: Sequence[tuple[str, str, str, str | None]],
    route_version: int | None = None,
) -> dict[tuple[str, str], int]:
    """Insert events, and outbox rows (tenant_id, event id, destination_id, ordering key)
    for those that were new, in one statement; (tenant_id, id) -> seq for the new events
    (not repeats).

    ``deliveries`` must be in lock order (tenant, destination), as the dispatcher's health
    update takes them: concurrent writers then cannot deadlock. With ``route_version``,
    raises StaleRoutes (having written nothing) if the routes have changed since."""
    if not events:
        return {}
    rows = await conn.fetch(
        WRITE_EVENTS,
        # OPT_NAIVE_UTC: a time without an offset is UTC, as asyncpg takes it; left
        # naive, PostgreSQL would read it in the session's time zone.
        orjson.dumps([_event_json(e) for e in events], option=orjson.OPT_NAIVE_UTC).decode(),
        orjson.dumps(
            [
                {"tenant_id": t, "id": i, "destination_id": d}
                if k is None
                else {"tenant_id": t, "id": i, "destination_id": d, "ordering_key": k}
                for t, i, d, k in deliveries
            ]
        ).decode(),
        route_version,
    )
    seen = next(int(r["id"]) for r in rows if r["seq"] is None)
    if route_version is not None and seen != route_version:
        raise StaleRoutes(f"routes changed since read (version {route_version} -> {seen})")
    return {(r["tenant_id"], r["id"]): r["seq"] for r in rows if r["seq"] is not None}


async def check_route_version(conn: asyncpg.Connection, route_version: int) -> None:
    """Raise StaleRoutes if the routes have changed since ``route_version`` (what
    write_events checks as it writes, for answers that write nothing)."""
    seen = await conn.fetchval(ROUTE_VERSION)
    if seen != route_version:
        raise StaleRoutes(f"routes changed since read (version {route_version} -> {seen})")


def _event_json(e: NewEvent) -> dict[str, object]:
    row: dict[str, object] = {
        "tenant_id": e.tenant_id,
        "id": e.id,
        "topic": e.topic,
        "data": orjson.Fragment(e.data),
        "body": None if e.body is None else orjson.Fragment(e.body),
        "metadata": e.metadata,
        "eligible_for_retry": e.eligible_for_retry,
        "destination_id": e.destination_id,
        "time": e.time,
    }
    if e.trace_context is not None:  # absent is NULL: nothing to encode when not tracing
        row["trace_context"] = e.trace_context
    return row


async def event_destinations(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """(tenant_id, id) -> the destinations its deliveries went to, for existing events."""
    found: dict[tuple[str, str], list[str]] = {}
    if not keys:
        return found
    rows = await conn.fetch(EVENT_DESTINATIONS, [t for t, _ in keys], [i for _, i in keys])
    for r in rows:
        found.setdefault((r["tenant_id"], r["id"]), []).append(r["destination_id"])
    return found


async def insert_deliveries(
    conn: asyncpg.Connection, rows: Sequence[tuple[int, str, str, str | None]]
) -> None:
    """Outbox rows (event_seq, tenant_id, destination_id, ordering key), announced on
    commit."""
    if not rows:
        return
    await conn.execute(
        INSERT_DELIVERIES,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
    )


async def claim_unrouted(conn: asyncpg.Connection, limit: int) -> list[Unrouted]:
    rows = await conn.fetch(CLAIM_UNROUTED, limit)
    return [Unrouted(**dict(r)) for r in rows]


async def mark_routed(conn: asyncpg.Connection, seqs: Sequence[int]) -> None:
    if seqs:
        await conn.execute(MARK_ROUTED, list(seqs))


def sqlstate(exc: BaseException) -> str | None:
    code: Any = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) else None
