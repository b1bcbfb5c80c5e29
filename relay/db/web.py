"""The SQL behind the web pages (relay/web/) that the API and the CLI do not already have.

Health comes from the documented ``relay.destination_health`` view (docs/sql.md), scoped
to one tenant where a tenant looks; the live attempts feed reads ``relay.attempts`` by
its primary key order, from an id the page already shows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

TENANT_HEALTH = text("""
    SELECT destination_id, url, enabled, disabled_at, disabled_reason, consecutive_failures,
           last_success_at, last_failure_at, attempts_24h, success_rate_24h, pending,
           oldest_pending_at
    FROM relay.destination_health
    WHERE tenant_id = :tenant_id AND deleted_at IS NULL
    ORDER BY destination_id
""")

DESTINATION_HEALTH = text("""
    SELECT destination_id, url, enabled, disabled_at, disabled_reason, consecutive_failures,
           last_success_at, last_failure_at, attempts_24h, success_rate_24h, pending,
           oldest_pending_at
    FROM relay.destination_health
    WHERE tenant_id = :tenant_id AND destination_id = :destination_id AND deleted_at IS NULL
""")

# Failing (a failure since the last success) or disabled, worst first; bounded.
TROUBLED = text("""
    SELECT t.tenant_id, t.id AS destination_id, t.url,
           t.disabled_at IS NULL AS enabled, t.disabled_at, t.disabled_reason,
           t.consecutive_failures
    FROM relay.destinations t
    WHERE t.deleted_at IS NULL AND (t.disabled_at IS NOT NULL OR t.consecutive_failures > 0)
    ORDER BY t.disabled_at IS NULL, t.consecutive_failures DESC, t.tenant_id, t.id
    LIMIT :limit
""")

# New attempts after the newest one a page shows, oldest first (the live feed).
ATTEMPTS_AFTER = text("""
    SELECT a.id, a.tenant_id, a.destination_id, a.number, a.status, a.http_status,
           a.error_code, a.duration_ms, a.manual, a.started_at, e.id AS event_id
    FROM relay.attempts a
    JOIN relay.events e ON e.seq = a.event_seq
    WHERE a.id > :after AND (CAST(:tenant_id AS text) IS NULL OR a.tenant_id = :tenant_id)
    ORDER BY a.id
    LIMIT :limit
""")

LAST_ATTEMPT_ID = text("SELECT COALESCE(max(id), 0) FROM relay.attempts")


async def tenant_health(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(TENANT_HEALTH, {"tenant_id": tenant_id})
    return [dict(r) for r in rows.mappings()]


async def destination_health(
    conn: AsyncConnection, tenant_id: str, destination_id: str
) -> dict[str, Any] | None:
    params = {"tenant_id": tenant_id, "destination_id": destination_id}
    row = (await conn.execute(DESTINATION_HEALTH, params)).mappings().first()
    return None if row is None else dict(row)


async def troubled_destinations(conn: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    return [dict(r) for r in (await conn.execute(TROUBLED, {"limit": limit})).mappings()]


async def attempts_after(
    conn: AsyncConnection, after: int, tenant_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    params = {"after": after, "tenant_id": tenant_id, "limit": limit}
    return [dict(r) for r in (await conn.execute(ATTEMPTS_AFTER, params)).mappings()]


async def last_attempt_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(LAST_ATTEMPT_ID)).scalar_one())
