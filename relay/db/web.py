"""The SQL behind the web pages (relay/web/) that the API and the CLI do not already have.

Every statement does bounded work whatever the history holds (a page must render in
well under a second with a million attempts): health and latency look at each
destination's latest attempts through ix_attempts_destination_started, the live attempts
feed reads ``relay.attempts`` by its primary key from an id the page already shows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.db.history import LATENCY_SQL

# A destination's health, bounded whatever its volume: its last RECENT attempts (an index
# scan of ix_attempts_destination_started, newest first: the success rate, the last
# attempt, success and failure among them), its failures in a row, and its
# pending deliveries counted up to PENDING_CAP. The relay.destination_health view counts
# a whole day of attempts per destination: fine in psql, seconds on a page once a
# destination takes a million a day (bench/results/portal_pages.md).
RECENT = 100
PENDING_CAP = 10_000
HEALTH = f"""
    SELECT t.id AS destination_id, COALESCE(t.url, t.type) AS url,
           t.disabled_at IS NULL AS enabled, t.disabled_at,
           t.disabled_reason, t.consecutive_failures,
           r.recent, r.recent_successes,
           round(r.recent_successes::numeric / NULLIF(r.recent, 0), 4) AS success_rate,
           r.last_attempt_at, r.last_status, r.last_success_at, r.last_failure_at, p.pending,
           p.pending >= {PENDING_CAP} AS pending_capped
    FROM relay.destinations t
    CROSS JOIN LATERAL (
        SELECT count(*) AS recent,
               count(*) FILTER (WHERE a.status = 'success') AS recent_successes,
               max(a.started_at) AS last_attempt_at,
               max(a.started_at) FILTER (WHERE a.status = 'success') AS last_success_at,
               max(a.started_at) FILTER (WHERE a.status = 'failed') AS last_failure_at,
               (array_agg(a.status ORDER BY a.started_at DESC))[1] AS last_status
        FROM (SELECT a.status, a.started_at FROM relay.attempts a
              WHERE a.tenant_id = t.tenant_id AND a.destination_id = t.id
              ORDER BY a.started_at DESC LIMIT {RECENT}) a
    ) r
    CROSS JOIN LATERAL (
        SELECT count(*) AS pending
        FROM (SELECT 1 FROM relay.deliveries d
              WHERE d.tenant_id = t.tenant_id AND d.destination_id = t.id
                AND d.status IN ('pending', 'delivering')
              LIMIT {PENDING_CAP}) x
    ) p
    WHERE t.tenant_id = :tenant_id AND t.deleted_at IS NULL {{and_destination}}
    ORDER BY t.id
"""
TENANT_HEALTH = text(HEALTH.format(and_destination=""))
DESTINATION_HEALTH = text(HEALTH.format(and_destination="AND t.id = :destination_id"))

# Latency percentiles per destination over its last LATENCY_SAMPLE timed attempts: a
# bounded sort, where percentiles over a window sort every attempt in it.
LATENCY_SAMPLE = 1000
LATENCY = text(f"""
    SELECT t.id AS destination_id, l.n, l.p50, l.p95
    FROM relay.destinations t
    CROSS JOIN LATERAL (
        SELECT count(a.latency) AS n,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY a.latency) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency) AS p95
        FROM (SELECT {LATENCY_SQL} AS latency FROM relay.attempts a
              WHERE a.tenant_id = t.tenant_id AND a.destination_id = t.id
              ORDER BY a.started_at DESC LIMIT {LATENCY_SAMPLE}) a
    ) l
    WHERE t.tenant_id = :tenant_id AND t.deleted_at IS NULL
    ORDER BY t.id
""")

# Failing (a failure since the last success) or disabled, worst first; bounded.
TROUBLED = text("""
    SELECT t.tenant_id, t.id AS destination_id, COALESCE(t.url, t.type) AS url,
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

# A portal link works once: its id is kept until it would have expired (no row: used).
USE_LINK = text("""
    WITH gone AS (DELETE FROM relay.portal_links_used WHERE expires_at < now())
    INSERT INTO relay.portal_links_used (jti, expires_at)
    VALUES (:jti, to_timestamp(:expires))
    ON CONFLICT (jti) DO NOTHING
    RETURNING jti
""")


async def tenant_health(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(TENANT_HEALTH, {"tenant_id": tenant_id})
    return [dict(r) for r in rows.mappings()]


async def destination_health(
    conn: AsyncConnection, tenant_id: str, destination_id: str
) -> dict[str, Any] | None:
    params = {"tenant_id": tenant_id, "destination_id": destination_id}
    row = (await conn.execute(DESTINATION_HEALTH, params)).mappings().first()
    return None if row is None else dict(row)


async def latency(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in (await conn.execute(LATENCY, {"tenant_id": tenant_id})).mappings()]


async def troubled_destinations(conn: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    return [dict(r) for r in (await conn.execute(TROUBLED, {"limit": limit})).mappings()]


async def attempts_after(
    conn: AsyncConnection, after: int, tenant_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    params = {"after": after, "tenant_id": tenant_id, "limit": limit}
    return [dict(r) for r in (await conn.execute(ATTEMPTS_AFTER, params)).mappings()]


async def last_attempt_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(LAST_ATTEMPT_ID)).scalar_one())


async def use_link(conn: AsyncConnection, jti: str, expires: int) -> bool:
    """Whether this is the first time the link ``jti`` is opened (and now it has been)."""
    params = {"jti": jti, "expires": expires}
    return (await conn.execute(USE_LINK, params)).first() is not None
