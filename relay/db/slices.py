"""History slices' SQL: making them ahead, and retiring them past the retention age.

A slice is one partition each of events (by seq), finished deliveries (by updated_at) and
attempts (by created_at) over the same span of time; relay.slices lists them (migration
0008). Retiring one never blocks a publish, claim or record: partitions are detached
CONCURRENTLY and then dropped, and new ones are attached, not created as partitions.

Events whose slice goes while a delivery of theirs is still active (or that are not yet
routed) move to relay.events_kept first. Whatever makes a delivery active again (a
retry, a replay, the router) holds the revive lock, shared, and keeps its events itself
once their slice is closing: see ``revive`` and ``keep_revived``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

EVENT_COLUMNS = (
    "seq, tenant_id, id, topic, data, body, metadata, eligible_for_retry, destination_id, "
    "time, created_at, routed_at, trace_context"
)

# The maintenance of slices runs in one process at a time (a session lock, held across
# the statements a detach needs outside any transaction); the others skip their round.
TRY_MAINTAIN = "SELECT pg_try_advisory_lock(hashtext('relay.slices.maintain'))"
END_MAINTAIN = "SELECT pg_advisory_unlock(hashtext('relay.slices.maintain'))"

# Revivers take it shared for their transaction; closing a slice takes it exclusive, so
# that every revival either committed before the slice's events were kept, or sees the
# slice closing and keeps its own events.
REVIVE_LOCK = "SELECT pg_advisory_xact_lock_shared(hashtext('relay.slices.revive'))"
CLOSE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('relay.slices.revive'))"

SLICES = "SELECT starts_at, ends_at, closing FROM relay.slices ORDER BY starts_at"

CREATE = "SELECT relay.create_slice($1, $2)"

CLOSE = "UPDATE relay.slices SET closing = true WHERE starts_at = $1"

# The slice's events that must outlive it: a delivery still active, or not yet routed.
# ($1, $2: its range of seq.)
KEEP_SLICE = f"""
    WITH moved AS (
        DELETE FROM relay.events_sliced e
        WHERE e.seq >= $1 AND e.seq < $2
          AND e.seq IN (
              SELECT a.event_seq FROM relay.deliveries_active a
              WHERE a.event_seq >= $1 AND a.event_seq < $2
              UNION
              SELECT u.seq FROM relay.events_sliced u
              WHERE u.routed_at IS NULL AND u.seq >= $1 AND u.seq < $2)
        RETURNING {EVENT_COLUMNS}
    )
    INSERT INTO relay.events ({EVENT_COLUMNS}, kept)
    SELECT {EVENT_COLUMNS}, true FROM moved
"""

# Revived events whose slice is closing move to events_kept (seq is the partition key:
# a moved row keeps it).
KEEP_REVIVED = f"""
    WITH moved AS (
        DELETE FROM relay.events_sliced e
        WHERE e.seq = ANY($1::bigint[])
          AND e.seq < (SELECT relay.seq_at(max(ends_at)) FROM relay.slices WHERE closing)
        RETURNING {EVENT_COLUMNS}
    )
    INSERT INTO relay.events ({EVENT_COLUMNS}, kept)
    SELECT {EVENT_COLUMNS}, true FROM moved
"""

# Where a partition stands: attached (and whether a concurrent detach was interrupted).
PARTITION = """
    SELECT i.inhdetachpending AS pending, p.relname AS parent
    FROM pg_class c
    JOIN pg_inherits i ON i.inhrelid = c.oid
    JOIN pg_class p ON p.oid = i.inhparent
    WHERE c.relnamespace = 'relay'::regnamespace AND c.relname = $1
"""

# A slice's keys go once its events have (an idempotent repeat is refused until then),
# in batches, each after the last seq of the one before ($1): not from the start of the
# range again, over the entries of keys already deleted that vacuum has not removed yet.
# Those of kept events stay. The answer: how many, and the last seq.
FORGET_KEYS = """
    WITH gone AS (
        DELETE FROM relay.event_keys
        WHERE seq IN (
            SELECT k.seq FROM relay.event_keys k
            WHERE k.seq > $1 AND k.seq < $2
              AND NOT EXISTS (SELECT 1 FROM relay.events_kept e WHERE e.seq = k.seq)
            ORDER BY k.seq
            LIMIT $3)
        RETURNING seq
    )
    SELECT count(*), max(seq) FROM gone
"""

FORGET_SLICE = "DELETE FROM relay.slices WHERE starts_at = $1"

# The hourly counts of attempts (relay.attempt_hours) from before the oldest slice kept:
# the metrics no longer read them (relay/db/aggregates.py), since the attempts they
# counted may be gone. While the legacy slice is kept (-infinity), none.
FORGET_HOURS = """
    DELETE FROM relay.attempt_hours
    WHERE hour < (SELECT min(starts_at) FROM relay.slices WHERE NOT closing)
"""

# Kept events go once they are past the retention age and have nothing left to deliver,
# with their keys (under the revive lock, exclusive: none of them is being revived).
PRUNE_KEPT = """
    WITH gone AS (
        DELETE FROM relay.events_kept e
        WHERE e.seq IN (
            SELECT k.seq FROM relay.events_kept k
            WHERE k.created_at < $1 AND k.routed_at IS NOT NULL
              AND NOT EXISTS (
                  SELECT 1 FROM relay.deliveries_active d WHERE d.event_seq = k.seq)
            LIMIT $2)
        RETURNING e.tenant_id, e.id
    )
    DELETE FROM relay.event_keys k USING gone
    WHERE k.tenant_id = gone.tenant_id AND k.id = gone.id
"""


def _count(status: str) -> int:
    """Rows a DELETE or INSERT status line names ("DELETE 12", "INSERT 0 12")."""
    return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True, slots=True)
class Slice:
    # '-infinity' for the legacy slice, which asyncpg reads as datetime.min (naive).
    starts_at: datetime
    ends_at: datetime
    closing: bool

    @property
    def legacy(self) -> bool:
        return self.starts_at.replace(tzinfo=None) == datetime.min


async def slices(conn: asyncpg.Connection) -> list[Slice]:
    return [Slice(*row) for row in await conn.fetch(SLICES)]


async def create(conn: asyncpg.Connection, starts_at: datetime, ends_at: datetime) -> None:
    await conn.execute(CREATE, starts_at, ends_at)


async def close(conn: asyncpg.Connection, starts_at: datetime, low: int, high: int) -> int:
    """Mark the slice closing and keep the events that must outlive it; how many were
    kept."""
    async with conn.transaction():
        await conn.execute(CLOSE_LOCK)
        await conn.execute(CLOSE, starts_at)
        return _count(await conn.execute(KEEP_SLICE, low, high))


async def partition(conn: asyncpg.Connection, name: str) -> tuple[str, bool] | None:
    """(parent, detach pending) for an attached partition, None when it is not."""
    row = await conn.fetchrow(PARTITION, name)
    return None if row is None else (row["parent"], row["pending"])


async def is_empty(conn: asyncpg.Connection, names: Sequence[str]) -> bool:
    """Whether these partitions hold no row (those already gone count as empty)."""
    for name in names:
        if await partition(conn, name) is not None and await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM relay.{name})"
        ):
            return False
    return True


async def detach_and_drop(conn: asyncpg.Connection, name: str) -> None:
    """Outside any transaction: DETACH CONCURRENTLY waits for transactions that may still
    read the partition, blocking no one, then the table is dropped. An interrupted detach
    is finished (FINALIZE) by the next round."""
    attached = await partition(conn, name)
    if attached is not None:
        parent, pending = attached
        how = "FINALIZE" if pending else "CONCURRENTLY"
        await conn.execute(f"ALTER TABLE relay.{parent} DETACH PARTITION relay.{name} {how}")
    await conn.execute(f"DROP TABLE IF EXISTS relay.{name}")


async def forget_keys(
    conn: asyncpg.Connection, after: int, high: int, limit: int
) -> tuple[int, int | None]:
    """One batch of a slice's keys with seq in (after, high): how many, and the last."""
    count, last = await conn.fetchrow(FORGET_KEYS, after, high, limit)
    return count, last


async def forget(conn: asyncpg.Connection, starts_at: datetime) -> None:
    await conn.execute(FORGET_SLICE, starts_at)


async def forget_hours(conn: asyncpg.Connection) -> int:
    """Hourly counts from before the oldest slice kept; how many rows went."""
    return _count(await conn.execute(FORGET_HOURS))


async def prune_kept(conn: asyncpg.Connection, cutoff: datetime, limit: int) -> int:
    async with conn.transaction():
        await conn.execute(CLOSE_LOCK)
        return _count(await conn.execute(PRUNE_KEPT, cutoff, limit))


async def revive(conn: asyncpg.Connection | AsyncConnection) -> None:
    """First thing in a transaction that makes deliveries active again."""
    await _execute(conn, REVIVE_LOCK)


async def keep_revived(conn: asyncpg.Connection | AsyncConnection, seqs: Sequence[int]) -> None:
    """Then, in the same transaction, before reading the events: those whose slice is
    closing are kept. (If the slice has gone since, so have they, and nothing is revived.)"""
    if seqs:
        await _execute(conn, KEEP_REVIVED, list(seqs))


async def _execute(conn: asyncpg.Connection | AsyncConnection, sql: str, *args: Any) -> None:
    if isinstance(conn, AsyncConnection):
        # Through SQLAlchemy, so that its transaction has begun (its driver's $n style).
        await conn.exec_driver_sql(sql, args)
    else:
        await conn.execute(sql, *args)


async def raw(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under an SQLAlchemy one (same transaction)."""
    return (await conn.get_raw_connection()).driver_connection
