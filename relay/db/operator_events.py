"""Operator events' SQL: the sinks' topics, and writing operator events with their
outbox rows in the caller's transaction.

An operator event is an event of the internal tenant ``relay/operator``
(relay/opevents.py), delivered to its destinations (the sinks) like any other event: one
statement writes the event keys, the events and their deliveries, and wakes the
dispatchers on commit. The recorder calls it in the transaction that records the
outcomes that caused the events, so an outcome and its operator events commit together,
or neither does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.types import Text

from relay import opevents
from relay.db.outbox import ANNOUNCE, Connection, Recorded, _fetch, health_by_destination

# Each sink's topics, if it is live and enabled: the union is what anyone wants.
SUBSCRIBED = text("""
    SELECT DISTINCT unnest(topics) AS topic FROM relay.destinations
    WHERE tenant_id = :tenant AND deleted_at IS NULL AND disabled_at IS NULL
""").bindparams(bindparam("tenant", type_=Text))

# $events: [{id, topic, body, tenant_id, destination_id}], in order. An event about a
# destination gets the destination's projection (Outpost's AlertDestination) as it stands
# in this transaction, spliced in as the last member of the envelope's data (the body
# ends in "}}": data's end and the envelope's). Routed here, by topic, to the enabled
# sinks ('*' or the exact topic); written routed, as WRITE_EVENTS writes.
WRITE = text(f"""
    WITH given AS (
        SELECT g.*
        FROM ROWS FROM (json_to_recordset(CAST(:events AS json)) AS (
            id text, topic text, body text, tenant_id text, destination_id text)
        ) WITH ORDINALITY AS g(id, topic, body, tenant_id, destination_id, n)
    ), keys AS (
        INSERT INTO relay.event_keys (tenant_id, id)
        SELECT :tenant, id FROM given ORDER BY n
        ON CONFLICT (tenant_id, id) DO NOTHING
        RETURNING id, seq
    ), inserted AS (
        INSERT INTO relay.events (seq, tenant_id, id, topic, data, metadata, time)
        SELECT k.seq, :tenant, g.id, g.topic,
               CAST(CASE WHEN g.destination_id IS NULL THEN g.body
                         ELSE left(g.body, -2) || ',"destination":'
                              || COALESCE(p.projection::text, 'null') || '}}}}' END AS json),
               '{{}}'::jsonb, now()
        FROM keys k
        JOIN given g ON g.id = k.id
        LEFT JOIN LATERAL (
            SELECT json_build_object(
                'id', d.id, 'tenant_id', d.tenant_id, 'type', d.type, 'topics', d.topics,
                'config', CASE WHEN d.type = 'webhook' THEN json_build_object('url', d.url)
                               ELSE d.config::json END,
                'created_at', d.created_at, 'disabled_at', d.disabled_at) AS projection
            FROM relay.destinations d
            WHERE d.tenant_id = g.tenant_id AND d.id = g.destination_id
        ) p ON true
        ORDER BY g.n
        RETURNING seq, topic
    ), queued AS (
        INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id)
        SELECT i.seq, s.tenant_id, s.id
        FROM inserted i
        JOIN relay.destinations s
          ON s.tenant_id = :tenant AND s.deleted_at IS NULL AND s.disabled_at IS NULL
         AND (i.topic = ANY(s.topics) OR '*' = ANY(s.topics))
        ORDER BY i.seq, s.id
        RETURNING tenant_id, destination_id
    ), woken AS (
        SELECT {ANNOUNCE}
        FROM (SELECT DISTINCT tenant_id, destination_id FROM queued) AS each_destination
    )
    SELECT count(*) AS written FROM inserted
    -- Always true; it is there to run woken (a SELECT CTE nothing reads is not run).
    WHERE (SELECT count(*) FROM woken) >= 0
""").bindparams(bindparam("events", type_=Text), bindparam("tenant", type_=Text))

# The operator tenant, made with the first sink (or the first operator-events request).
ENSURE_TENANT = text("""
    INSERT INTO relay.tenants (id) VALUES (:tenant)
    ON CONFLICT (id) DO UPDATE SET deleted_at = NULL, updated_at = now()
    WHERE tenants.deleted_at IS NOT NULL
    RETURNING id
""").bindparams(bindparam("tenant", type_=Text))

# A tenant's topics and its count of destinations, as GET /tenants/{id} answers them
# (relay/db/admin.py).
TENANT_SUBSCRIPTION = text("""
    SELECT ARRAY(SELECT DISTINCT unnest(d.topics) FROM relay.destinations d
                 WHERE d.tenant_id = :tenant AND d.deleted_at IS NULL ORDER BY 1) AS topics,
           (SELECT count(*) FROM relay.destinations d
            WHERE d.tenant_id = :tenant AND d.deleted_at IS NULL) AS count
""").bindparams(bindparam("tenant", type_=Text))


async def subscribed(conn: Connection) -> frozenset[str]:
    """The topics some enabled sink subscribes to ('*' among them: every topic)."""
    rows = await _fetch(conn, SUBSCRIBED, {"tenant": opevents.OPERATOR_TENANT})
    return frozenset(r["topic"] for r in rows)


async def write(conn: Connection, events: Sequence[opevents.OperatorEvent]) -> int:
    """Write operator events and their deliveries to the sinks; how many were written."""
    if not events:
        return 0
    payload = orjson.dumps(
        [
            {
                "id": e.id,
                "topic": e.topic,
                "body": e.body,
                "tenant_id": None if e.destination is None else e.destination[0],
                "destination_id": None if e.destination is None else e.destination[1],
            }
            for e in events
        ]
    ).decode()
    rows = await _fetch(conn, WRITE, {"events": payload, "tenant": opevents.OPERATOR_TENANT})
    return int(rows[0]["written"]) if rows else 0


async def ensure_tenant(conn: Connection) -> None:
    await _fetch(conn, ENSURE_TENANT, {"tenant": opevents.OPERATOR_TENANT})


async def tenant_subscription(conn: Connection, tenant_id: str) -> tuple[list[str], int]:
    rows = await _fetch(conn, TENANT_SUBSCRIPTION, {"tenant": tenant_id})
    topics = list(rows[0]["topics"])
    return (["*"] if "*" in topics else topics), int(rows[0]["count"])


class Subscriptions:
    """The sinks' topics, read again at most every ``refresh_seconds``: a batch no sink
    wants an event of costs no statement."""

    def __init__(self, refresh_seconds: float = 2.0) -> None:
        self.refresh_seconds = refresh_seconds
        self._topics: frozenset[str] = frozenset()
        self._read_at: float | None = None

    async def topics(self, conn: Connection) -> frozenset[str]:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self.refresh_seconds:
            self._topics = await subscribed(conn)
            self._read_at = now
        return self._topics


class Recorder:
    """The recorder's hook (outbox.record_outcomes' ``after``): the operator events a
    written batch causes, written in its transaction."""

    def __init__(self, policy: opevents.Policy, refresh_seconds: float = 2.0) -> None:
        self.policy = policy
        self.subscriptions = Subscriptions(refresh_seconds)
        self.written = 0

    async def __call__(
        self,
        conn: Connection,
        batch: Sequence[Recorded],
        attempt_ids: Mapping[tuple[int, int], int],
        health_rows: Sequence[Mapping[str, Any]],
    ) -> None:
        topics = await self.subscriptions.topics(conn)
        if not topics:
            return
        health = health_by_destination(health_rows)
        events = opevents.caused_by(
            batch, attempt_ids, health, topics, self.policy, now=datetime.now(UTC)
        )
        self.written += await write(conn, events)
