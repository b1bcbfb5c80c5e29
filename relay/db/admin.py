"""Tenants and destinations as the API manages them, and manual retries. Named statements.

Deleting is soft (``deleted_at``): events, deliveries and attempts keep pointing at the
rows, so history stays queryable in SQL. What the config file declares (origin 'config')
is shown here but changed only by the file; callers check ``origin`` before writing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Float, Integer, Text

from relay.db import outbox, slices
from relay.db.history import Position
from relay.db.tables import TS

# --- tenants -------------------------------------------------------------------------

_TENANT_COLUMNS = """
    t.id, t.metadata, t.origin, t.created_at, t.updated_at, t.rate_limit_per_second,
    t.rate_limit_burst, t.max_in_flight,
    (SELECT count(*) FROM relay.destinations d
     WHERE d.tenant_id = t.id AND d.deleted_at IS NULL) AS destinations_count,
    ARRAY(SELECT DISTINCT unnest(d.topics) FROM relay.destinations d
          WHERE d.tenant_id = t.id AND d.deleted_at IS NULL ORDER BY 1) AS topics
"""

GET_TENANT = text(f"""
    SELECT {_TENANT_COLUMNS}
    FROM relay.tenants t
    WHERE t.id = :id AND t.deleted_at IS NULL
""")

LOCK_TENANT = text("""
    SELECT origin, deleted_at FROM relay.tenants WHERE id = :id FOR UPDATE
""")

# A tenant that was deleted comes back as new: fresh metadata and creation time.
UPSERT_TENANT = text("""
    INSERT INTO relay.tenants (id, metadata, origin, rate_limit_per_second,
                               rate_limit_burst, max_in_flight)
    VALUES (:id, COALESCE(CAST(:metadata AS jsonb), '{}'::jsonb), 'api',
            :rate_limit_per_second, :rate_limit_burst, :max_in_flight)
    ON CONFLICT (id) DO UPDATE
    SET metadata = CASE WHEN tenants.deleted_at IS NOT NULL
                        THEN COALESCE(CAST(:metadata AS jsonb), '{}'::jsonb)
                        ELSE COALESCE(CAST(:metadata AS jsonb), tenants.metadata) END,
        created_at = CASE WHEN tenants.deleted_at IS NOT NULL
                          THEN now() ELSE tenants.created_at END,
        rate_limit_per_second = CASE WHEN :set_limits THEN :rate_limit_per_second
            WHEN tenants.deleted_at IS NOT NULL THEN NULL
            ELSE tenants.rate_limit_per_second END,
        rate_limit_burst = CASE WHEN :set_limits THEN :rate_limit_burst
            WHEN tenants.deleted_at IS NOT NULL THEN NULL ELSE tenants.rate_limit_burst END,
        max_in_flight = CASE WHEN :set_limits THEN :max_in_flight
            WHEN tenants.deleted_at IS NOT NULL THEN NULL ELSE tenants.max_in_flight END,
        deleted_at = NULL,
        updated_at = now()
    WHERE tenants.origin = 'api'
""").bindparams(
    bindparam("rate_limit_per_second", type_=Float),
    bindparam("rate_limit_burst", type_=Integer),
    bindparam("max_in_flight", type_=Integer),
)

DELETE_TENANT = text("""
    UPDATE relay.tenants SET deleted_at = now(), updated_at = now()
    WHERE id = :id AND deleted_at IS NULL
""")

DELETE_TENANT_DESTINATIONS = text("""
    UPDATE relay.destinations SET deleted_at = now(), updated_at = now()
    WHERE tenant_id = :tenant_id AND deleted_at IS NULL
""")

# Seek pagination on (created_at, id); the page is read one past its size to learn
# whether there is more.
# Tenants as the API lists them: relay's own tenant for operator events
# (relay/opevents.py) is not one of them.
LIST_TENANTS = """
    SELECT {columns}
    FROM relay.tenants t
    WHERE t.deleted_at IS NULL AND t.id <> 'relay/operator'
      AND (CAST(:ids AS text[]) IS NULL OR t.id = ANY(CAST(:ids AS text[])))
      {seek}
    ORDER BY t.created_at {order}, t.id {order}
    LIMIT :limit
"""

COUNT_TENANTS = text("""
    SELECT count(*) FROM relay.tenants t
    WHERE t.deleted_at IS NULL AND t.id <> 'relay/operator'
      AND (CAST(:ids AS text[]) IS NULL OR t.id = ANY(CAST(:ids AS text[])))
""").bindparams(bindparam("ids", type_=ARRAY(Text)))


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    metadata: dict[str, str]
    origin: str
    created_at: datetime
    updated_at: datetime
    destinations_count: int
    topics: list[str]
    # Delivery control: the default for each of its destinations (None: no limit).
    rate_limit_per_second: float | None = None
    rate_limit_burst: int | None = None
    max_in_flight: int | None = None


def _tenant(row: Row[Any]) -> Tenant:
    topics = list(row.topics)
    return Tenant(
        id=row.id,
        metadata=dict(row.metadata or {}),
        origin=row.origin,
        created_at=row.created_at,
        updated_at=row.updated_at,
        destinations_count=row.destinations_count,
        topics=["*"] if "*" in topics else topics,
        rate_limit_per_second=row.rate_limit_per_second,
        rate_limit_burst=row.rate_limit_burst,
        max_in_flight=row.max_in_flight,
    )


LIVE_TENANT_CREATED = text(
    "SELECT created_at FROM relay.tenants WHERE id = :id AND deleted_at IS NULL"
)


async def live_tenant_created_at(conn: AsyncConnection, tenant_id: str) -> datetime | None:
    """When the live tenant was (re)created; None when it does not exist or is deleted."""
    created: datetime | None = (
        await conn.execute(LIVE_TENANT_CREATED, {"id": tenant_id})
    ).scalar_one_or_none()
    return created


async def get_tenant(conn: AsyncConnection, tenant_id: str) -> Tenant | None:
    row = (await conn.execute(GET_TENANT, {"id": tenant_id})).first()
    return None if row is None else _tenant(row)


async def tenant_origin(conn: AsyncConnection, tenant_id: str, *, live: bool = True) -> str | None:
    """Lock the tenant row for this transaction; its origin, or None when absent."""
    row = (await conn.execute(LOCK_TENANT, {"id": tenant_id})).first()
    if row is None or (live and row.deleted_at is not None):
        return None
    return str(row.origin)


async def upsert_tenant(
    conn: AsyncConnection,
    tenant_id: str,
    metadata: Mapping[str, str] | None,
    limits: Mapping[str, Any] | None = None,
) -> bool | None:
    """Create or update an API tenant: True when created, False when updated, None when
    the tenant belongs to the config file (nothing written). ``limits``: its delivery
    control defaults (None: keep them)."""
    row = (await conn.execute(LOCK_TENANT, {"id": tenant_id})).first()
    if row is not None and row.origin != "api":
        return None
    created = row is None or row.deleted_at is not None
    encoded = None if metadata is None else orjson.dumps(dict(metadata)).decode()
    given = limits or {}
    await conn.execute(
        UPSERT_TENANT,
        {
            "id": tenant_id,
            "metadata": encoded,
            "set_limits": limits is not None,
            "rate_limit_per_second": given.get("rate_limit_per_second"),
            "rate_limit_burst": given.get("rate_limit_burst"),
            "max_in_flight": given.get("max_in_flight"),
        },
    )
    return created


async def delete_tenant(conn: AsyncConnection, tenant_id: str) -> None:
    """Soft-delete a tenant and its destinations; their queued deliveries are dropped."""
    await conn.execute(DELETE_TENANT, {"id": tenant_id})
    await conn.execute(DELETE_TENANT_DESTINATIONS, {"tenant_id": tenant_id})
    await conn.execute(DROP_QUEUED, {"tenant_id": tenant_id, "destination_id": None})


async def list_tenants(
    conn: AsyncConnection,
    *,
    ids: Sequence[str] | None,
    after: Position | None,
    descending: bool,
    limit: int,
) -> list[Tenant]:
    """Up to ``limit`` tenants strictly past ``after`` in (created_at, id) order."""
    order = "DESC" if descending else "ASC"
    seek = ""
    if after is not None:
        op = "<" if descending else ">"
        seek = f"AND (t.created_at, t.id) {op} (:after_time, :after_id)"
    statement = text(LIST_TENANTS.format(columns=_TENANT_COLUMNS, seek=seek, order=order))
    statement = statement.bindparams(bindparam("ids", type_=ARRAY(Text)))
    if after is not None:
        statement = statement.bindparams(bindparam("after_time", type_=TS))
    params: dict[str, Any] = {"ids": list(ids) if ids else None, "limit": limit}
    if after is not None:
        params |= {"after_time": after.time, "after_id": str(after.key)}
    return [_tenant(r) for r in await conn.execute(statement, params)]


async def count_tenants(conn: AsyncConnection, ids: Sequence[str] | None) -> int:
    result = await conn.execute(COUNT_TENANTS, {"ids": list(ids) if ids else None})
    return int(result.scalar_one())


# --- destinations --------------------------------------------------------------------

_DESTINATION_COLUMNS = """
    tenant_id, id, type, topics, config, credentials, url, custom_headers, secret,
    previous_secret,
    previous_secret_invalid_at, metadata, delivery_metadata, filter, origin,
    disabled_at, created_at, updated_at, signature_mode, rate_limit_per_second,
    rate_limit_burst, max_in_flight, throttle, throttled_until, throttle_reason,
    ordering_key, ordering_on_failure
"""

LIST_DESTINATIONS = text(f"""
    SELECT {_DESTINATION_COLUMNS} FROM relay.destinations
    WHERE tenant_id = :tenant_id AND deleted_at IS NULL
    ORDER BY created_at, id
""")

GET_DESTINATION = text(f"""
    SELECT {_DESTINATION_COLUMNS} FROM relay.destinations
    WHERE tenant_id = :tenant_id AND id = :id AND deleted_at IS NULL
""")

LOCK_DESTINATION = text(f"""
    SELECT {_DESTINATION_COLUMNS} FROM relay.destinations
    WHERE tenant_id = :tenant_id AND id = :id AND deleted_at IS NULL
    FOR UPDATE
""")

# A deleted destination's id can be used again: the row (and the history pointing at
# it) is taken over by the new destination.
INSERT_DESTINATION = text(f"""
    INSERT INTO relay.destinations
        (tenant_id, id, type, topics, config, credentials, url, custom_headers, secret,
         signature_mode, metadata, delivery_metadata, filter, origin, disabled_at,
         disabled_reason, created_at, updated_at, rate_limit_per_second, rate_limit_burst,
         max_in_flight, ordering_key, ordering_on_failure)
    VALUES (:tenant_id, :id, :type, :topics, CAST(:config AS jsonb),
            CAST(:credentials AS jsonb), :url, CAST(:custom_headers AS jsonb), :secret,
            :webhook_mode, CAST(:metadata AS jsonb), CAST(:delivery_metadata AS jsonb),
            CAST(:filter AS jsonb), 'api', :disabled_at,
            CASE WHEN :disabled_at IS NOT NULL THEN 'disabled through the API' END,
            COALESCE(:created_at, now()), COALESCE(:updated_at, :created_at, now()),
            :rate_limit_per_second, :rate_limit_burst, :max_in_flight, :ordering_key,
            :ordering_on_failure)
    ON CONFLICT (tenant_id, id) DO UPDATE
    SET type = excluded.type, topics = excluded.topics, config = excluded.config,
        credentials = excluded.credentials, url = excluded.url,
        custom_headers = excluded.custom_headers, secret = excluded.secret,
        previous_secret = NULL, previous_secret_invalid_at = NULL,
        signature_mode = excluded.signature_mode, timeout_seconds = NULL,
        metadata = excluded.metadata, delivery_metadata = excluded.delivery_metadata,
        filter = excluded.filter, origin = 'api', disabled_at = excluded.disabled_at,
        disabled_reason = excluded.disabled_reason, consecutive_failures = 0,
        created_at = excluded.created_at, updated_at = excluded.updated_at,
        rate_limit_per_second = excluded.rate_limit_per_second,
        rate_limit_burst = excluded.rate_limit_burst,
        max_in_flight = excluded.max_in_flight,
        ordering_key = excluded.ordering_key,
        ordering_on_failure = excluded.ordering_on_failure,
        throttle = 1, throttled_until = NULL, throttle_reason = NULL,
        deleted_at = NULL
    WHERE destinations.deleted_at IS NOT NULL
    RETURNING {_DESTINATION_COLUMNS}
""").bindparams(
    bindparam("topics", type_=ARRAY(Text)),
    bindparam("disabled_at", type_=TS),
    bindparam("created_at", type_=TS),
    bindparam("updated_at", type_=TS),
)

UPDATE_DESTINATION = text(f"""
    UPDATE relay.destinations
    SET topics = :topics, config = CAST(:config AS jsonb),
        credentials = CAST(:credentials AS jsonb),
        url = :url, custom_headers = CAST(:custom_headers AS jsonb),
        secret = :secret, previous_secret = :previous_secret,
        previous_secret_invalid_at = :previous_secret_invalid_at,
        signature_mode = :webhook_mode,
        metadata = CAST(:metadata AS jsonb),
        delivery_metadata = CAST(:delivery_metadata AS jsonb),
        filter = CAST(:filter AS jsonb),
        rate_limit_per_second = :rate_limit_per_second,
        rate_limit_burst = :rate_limit_burst,
        max_in_flight = :max_in_flight,
        ordering_key = :ordering_key,
        ordering_on_failure = :ordering_on_failure,
        disabled_reason = CASE
            WHEN :disabled_at IS NULL THEN NULL
            WHEN disabled_at IS NULL THEN 'disabled through the API'
            ELSE disabled_reason END,
        disabled_at = :disabled_at,
        consecutive_failures = CASE WHEN :disabled_at IS NULL AND disabled_at IS NOT NULL
                                    THEN 0 ELSE consecutive_failures END,
        updated_at = now()
    WHERE tenant_id = :tenant_id AND id = :id AND deleted_at IS NULL
    RETURNING {_DESTINATION_COLUMNS}
""").bindparams(
    bindparam("topics", type_=ARRAY(Text)),
    bindparam("previous_secret_invalid_at", type_=TS),
    bindparam("disabled_at", type_=TS),
)

DELETE_DESTINATION = text("""
    UPDATE relay.destinations SET deleted_at = now(), updated_at = now()
    WHERE tenant_id = :tenant_id AND id = :id AND deleted_at IS NULL
""")

# Deliveries still waiting for a deleted destination will never be sent: end them.
# (Ones in flight finish and record their attempt as usual.)
DROP_QUEUED = text("""
    UPDATE relay.deliveries
    SET status = 'failed', last_error = 'destination deleted', updated_at = now()
    WHERE tenant_id = :tenant_id
      AND (CAST(:destination_id AS text) IS NULL OR destination_id = :destination_id)
      AND status = 'pending'
""")

# Filters of a tenant's live, enabled destinations that have one (publish applies them).
DESTINATION_FILTERS = text("""
    SELECT id, filter FROM relay.destinations
    WHERE tenant_id = :tenant_id AND deleted_at IS NULL AND disabled_at IS NULL
      AND filter IS NOT NULL AND filter <> '{}'::jsonb
""")


@dataclass(frozen=True, slots=True)
class Destination:
    tenant_id: str
    id: str
    type: str
    topics: list[str]
    # Every type but webhook: its config and credentials (relay/delivery/schemas/).
    config: dict[str, str]
    credentials: dict[str, str]
    # A webhook's own (None for the other types).
    url: str | None
    custom_headers: dict[str, str]
    secret: str | None
    previous_secret: str | None
    previous_secret_invalid_at: datetime | None
    metadata: dict[str, str]
    delivery_metadata: dict[str, str]
    filter: dict[str, Any] | None
    origin: str
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    # "standard" or "outpost"; None: the global delivery.webhook_mode.
    webhook_mode: str | None = None
    # Delivery control (None: the tenant's, else no limit) and adaptive backoff's state.
    rate_limit_per_second: float | None = None
    rate_limit_burst: int | None = None
    max_in_flight: int | None = None
    throttle: float = 1.0
    throttled_until: datetime | None = None
    throttle_reason: str | None = None
    # Ordered delivery: the metadata key that orders its events (None: unordered), and
    # "block" or "skip" for a key's head that finally fails.
    ordering_key: str | None = None
    ordering_on_failure: str = "block"


def _destination(row: Row[Any]) -> Destination:
    return Destination(
        tenant_id=row.tenant_id,
        id=row.id,
        type=row.type,
        topics=list(row.topics),
        config=dict(row.config or {}),
        credentials=dict(row.credentials or {}),
        url=row.url,
        custom_headers=dict(row.custom_headers or {}),
        secret=row.secret,
        previous_secret=row.previous_secret,
        previous_secret_invalid_at=row.previous_secret_invalid_at,
        metadata=dict(row.metadata or {}),
        delivery_metadata=dict(row.delivery_metadata or {}),
        filter=row.filter or None,
        origin=row.origin,
        disabled_at=row.disabled_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        webhook_mode=row.signature_mode,
        rate_limit_per_second=row.rate_limit_per_second,
        rate_limit_burst=row.rate_limit_burst,
        max_in_flight=row.max_in_flight,
        throttle=row.throttle,
        throttled_until=row.throttled_until,
        throttle_reason=row.throttle_reason,
        ordering_key=row.ordering_key,
        ordering_on_failure=row.ordering_on_failure,
    )


async def list_destinations(conn: AsyncConnection, tenant_id: str) -> list[Destination]:
    result = await conn.execute(LIST_DESTINATIONS, {"tenant_id": tenant_id})
    return [_destination(r) for r in result]


async def get_destination(
    conn: AsyncConnection, tenant_id: str, destination_id: str, *, lock: bool = False
) -> Destination | None:
    statement = LOCK_DESTINATION if lock else GET_DESTINATION
    row = (await conn.execute(statement, {"tenant_id": tenant_id, "id": destination_id})).first()
    return None if row is None else _destination(row)


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


@dataclass(frozen=True, slots=True)
class NewDestination:
    tenant_id: str
    id: str
    type: str
    topics: list[str]
    url: str | None
    custom_headers: dict[str, str]
    secret: str | None
    metadata: dict[str, str]
    delivery_metadata: dict[str, str]
    filter: dict[str, Any] | None
    config: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    disabled_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    webhook_mode: str | None = None
    rate_limit_per_second: float | None = None
    rate_limit_burst: int | None = None
    max_in_flight: int | None = None
    ordering_key: str | None = None
    ordering_on_failure: str = "block"


async def insert_destination(conn: AsyncConnection, new: NewDestination) -> Destination | None:
    """The created destination, or None when a live one already has this id."""
    row = (
        await conn.execute(
            INSERT_DESTINATION,
            {
                "tenant_id": new.tenant_id,
                "id": new.id,
                "type": new.type,
                "topics": new.topics,
                "config": _json(new.config),
                "credentials": _json(new.credentials),
                "url": new.url,
                "custom_headers": _json(new.custom_headers),
                "secret": new.secret,
                "webhook_mode": new.webhook_mode,
                "metadata": _json(new.metadata),
                "delivery_metadata": _json(new.delivery_metadata),
                "filter": _json(new.filter),
                "disabled_at": new.disabled_at,
                "created_at": new.created_at,
                "updated_at": new.updated_at,
                "rate_limit_per_second": new.rate_limit_per_second,
                "rate_limit_burst": new.rate_limit_burst,
                "max_in_flight": new.max_in_flight,
                "ordering_key": new.ordering_key,
                "ordering_on_failure": new.ordering_on_failure,
            },
        )
    ).first()
    return None if row is None else _destination(row)


async def update_destination(conn: AsyncConnection, d: Destination) -> Destination | None:
    """Write every changeable field of ``d``; None when it no longer exists."""
    row = (
        await conn.execute(
            UPDATE_DESTINATION,
            {
                "tenant_id": d.tenant_id,
                "id": d.id,
                "topics": d.topics,
                "config": _json(d.config),
                "credentials": _json(d.credentials),
                "url": d.url,
                "custom_headers": _json(d.custom_headers),
                "secret": d.secret,
                "previous_secret": d.previous_secret,
                "previous_secret_invalid_at": d.previous_secret_invalid_at,
                "webhook_mode": d.webhook_mode,
                "metadata": _json(d.metadata),
                "delivery_metadata": _json(d.delivery_metadata),
                "filter": _json(d.filter),
                "disabled_at": d.disabled_at,
                "rate_limit_per_second": d.rate_limit_per_second,
                "rate_limit_burst": d.rate_limit_burst,
                "max_in_flight": d.max_in_flight,
                "ordering_key": d.ordering_key,
                "ordering_on_failure": d.ordering_on_failure,
            },
        )
    ).first()
    return None if row is None else _destination(row)


async def delete_destination(conn: AsyncConnection, tenant_id: str, destination_id: str) -> None:
    params = {"tenant_id": tenant_id, "id": destination_id}
    await conn.execute(DELETE_DESTINATION, params)
    await conn.execute(DROP_QUEUED, {"tenant_id": tenant_id, "destination_id": destination_id})


async def destination_filters(conn: AsyncConnection, tenant_id: str) -> dict[str, Any]:
    """Destination id -> filter, for the tenant's enabled destinations that have one."""
    result = await conn.execute(DESTINATION_FILTERS, {"tenant_id": tenant_id})
    return {r.id: r.filter for r in result}


# --- manual retry --------------------------------------------------------------------

# The event together with the destination it should go to (same tenant). Event ids are
# unique per tenant; naming the destination settles which tenant's event is meant.
RETRY_TARGET = text("""
    SELECT e.seq, e.tenant_id, e.id, e.topic, e.time, e.data::text AS data,
           e.metadata, d.topics, d.filter, d.disabled_at IS NULL AS enabled,
           EXISTS (SELECT 1 FROM relay.deliveries r
                   WHERE r.event_seq = e.seq AND r.destination_id = d.id) AS routed
    FROM relay.events e
    JOIN relay.destinations d
      ON d.tenant_id = e.tenant_id AND d.id = :destination_id AND d.deleted_at IS NULL
    WHERE e.id = :event_id
      AND (CAST(:tenant_id AS text) IS NULL OR e.tenant_id = :tenant_id)
    ORDER BY e.seq DESC
    LIMIT 1
""")

# Due now, marked manual (the dispatcher copies that into the attempt). A delivery in
# flight is left alone: its lease owner is about to record an outcome. One that ended
# moves back from its slice of finished history to the hot table (same id, same count of
# attempts); one that never was is new. Nothing happens if the event has gone with its
# slice meanwhile (the caller kept it first if its slice is closing: relay/db/slices.py).
REQUEUE = text("""
    WITH revived AS (
        DELETE FROM relay.deliveries_finished f
        WHERE f.event_seq = :event_seq AND f.destination_id = :destination_id
          AND EXISTS (SELECT 1 FROM relay.events e WHERE e.seq = :event_seq)
        RETURNING f.*
    )
    INSERT INTO relay.deliveries_active
        (id, event_seq, tenant_id, destination_id, attempts, last_error, manual, created_at)
    SELECT COALESCE(r.id, nextval('relay.delivery_ids')), :event_seq, :tenant_id,
           :destination_id, COALESCE(r.attempts, 0), r.last_error, true,
           COALESCE(r.created_at, now())
    FROM (SELECT 1) AS one
    LEFT JOIN revived r ON true
    WHERE EXISTS (SELECT 1 FROM relay.events e WHERE e.seq = :event_seq)
    ON CONFLICT (event_seq, destination_id) DO UPDATE
    SET status = 'pending', next_attempt_at = now(), manual = true,
        claim_token = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE deliveries_active.status <> 'delivering'
    RETURNING id
""")

EVENT_EXISTS = text("SELECT EXISTS (SELECT 1 FROM relay.events WHERE seq = :event_seq)")


@dataclass(frozen=True, slots=True)
class RetryTarget:
    event_seq: int
    tenant_id: str
    event_id: str
    topic: str
    time: datetime
    data: str
    metadata: dict[str, str]
    topics: list[str]
    filter: dict[str, Any] | None
    enabled: bool
    # The event has (or had) a delivery to the destination.
    routed: bool


async def retry_target(
    conn: AsyncConnection, event_id: str, destination_id: str, tenant_id: str | None
) -> RetryTarget | None:
    params = {"event_id": event_id, "destination_id": destination_id, "tenant_id": tenant_id}
    row = (await conn.execute(RETRY_TARGET, params)).first()
    if row is None:
        return None
    return RetryTarget(
        event_seq=row.seq,
        tenant_id=row.tenant_id,
        event_id=row.id,
        topic=row.topic,
        time=row.time,
        data=row.data,
        metadata=dict(row.metadata or {}),
        topics=list(row.topics),
        filter=row.filter or None,
        enabled=row.enabled,
        routed=row.routed,
    )


async def requeue(
    conn: AsyncConnection, event_seq: int, tenant_id: str, destination_id: str
) -> bool | None:
    """Make the delivery due now as a manual attempt; False when one is in flight, None
    when the event has gone with its slice of history."""
    await slices.revive(conn)
    await slices.keep_revived(conn, [event_seq])
    params = {"event_seq": event_seq, "tenant_id": tenant_id, "destination_id": destination_id}
    queued = (await conn.execute(REQUEUE, params)).first() is not None
    if not queued and not (await conn.execute(EVENT_EXISTS, params)).scalar_one():
        return None
    if queued:
        await conn.execute(outbox.NOTIFY)
    return queued
