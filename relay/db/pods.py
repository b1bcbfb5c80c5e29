"""The pod-style API's SQL: which tenant answers for a pod, and what became of an event.

Writing pod events goes through relay.publish and relay.db.outbox like any other event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Text

# `pods && :pods` is what the GIN index on tenants.pods answers; unnest then says which
# of the asked pods each tenant holds.
TENANTS_FOR_PODS = text("""
    SELECT pod, t.id AS tenant_id
    FROM relay.tenants t, unnest(t.pods) AS pod
    WHERE t.pods && :pods AND t.deleted_at IS NULL AND pod = ANY(:pods)
    ORDER BY t.id
""").bindparams(bindparam("pods", type_=ARRAY(Text)))

# A publisher sees only its own events (the publish handler stores its name in metadata).
PUBLISHED_EVENT = text("""
    SELECT e.seq, e.tenant_id, e.topic, e.time, COALESCE(e.body, e.data)::text AS body
    FROM relay.events e
    WHERE e.id = :id AND e.metadata ->> 'publisher' = :publisher
    ORDER BY e.seq
""")

EVENT_DELIVERIES = text("""
    SELECT d.tenant_id, d.destination_id, d.status, d.last_error,
           (SELECT count(*) FROM relay.attempts a WHERE a.delivery_id = d.id) AS attempts
    FROM relay.deliveries d
    WHERE d.event_seq = ANY(:seqs)
    ORDER BY d.id
""").bindparams(bindparam("seqs", type_=ARRAY(BigInteger)))


async def tenants_for_pods(conn: AsyncConnection, pods: Sequence[str]) -> dict[str, list[str]]:
    """Pod URL -> ids of the live tenants answering for it (pods nobody answers for: absent)."""
    if not pods:
        return {}
    result = await conn.execute(TENANTS_FOR_PODS, {"pods": list(pods)})
    answered: dict[str, list[str]] = {}
    for row in result:
        answered.setdefault(row.pod, []).append(row.tenant_id)
    return answered


@dataclass(frozen=True, slots=True)
class DeliveryState:
    tenant_id: str
    destination_id: str
    status: str
    # Tries made so far (recorded attempt rows).
    attempts: int
    last_error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "destination_id": self.destination_id,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    # What receivers get: the envelope (id, topic, recipient, source, time, data), as
    # stored JSON text.
    body: str
    tenant_ids: list[str]
    deliveries: list[DeliveryState]


async def published_event(
    conn: AsyncConnection, event_id: str, publisher: str
) -> PublishedEvent | None:
    """The event ``publisher`` published under ``event_id`` (every tenant's copy), or None."""
    copies = (await conn.execute(PUBLISHED_EVENT, {"id": event_id, "publisher": publisher})).all()
    if not copies:
        return None
    rows = await conn.execute(EVENT_DELIVERIES, {"seqs": [c.seq for c in copies]})
    return PublishedEvent(
        body=copies[0].body,
        tenant_ids=[c.tenant_id for c in copies],
        deliveries=[
            DeliveryState(r.tenant_id, r.destination_id, r.status, r.attempts, r.last_error)
            for r in rows
        ],
    )
