"""Operator SQL: an event's story, bulk replay, backlog and health, retention.

Reads go through the history views (the supported interface, docs/sql.md); writes are
bounded batches so a large replay or prune never holds long locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Text

from relay.db.outbox import NOTIFY
from relay.db.tables import TS

# --- relay events show ------------------------------------------------------------------

EVENT = text("""
    SELECT seq, tenant_id, id, topic, time, eligible_for_retry, metadata::text AS metadata,
           data::text AS data
    FROM relay.events
    WHERE id = :id AND (CAST(:tenant_id AS text) IS NULL OR tenant_id = :tenant_id)
    ORDER BY seq
""")

EVENT_DELIVERIES = text("""
    SELECT destination_id, status, attempts, next_attempt_at, last_error, updated_at
    FROM relay.delivery_state WHERE event_seq = :seq ORDER BY destination_id
""")

EVENT_ATTEMPTS = text("""
    SELECT attempt_id, attempted_at, destination_id, attempt_number, status, http_status,
           error_code, error_detail, duration_ms, manual
    FROM relay.delivery_log WHERE event_seq = :seq ORDER BY attempt_id
""")


@dataclass
class EventStory:
    event: dict[str, Any]
    deliveries: list[dict[str, Any]]
    attempts: list[dict[str, Any]]


async def event_stories(
    conn: AsyncConnection, event_id: str, tenant_id: str | None = None
) -> list[EventStory]:
    """The event (one per tenant that has this id) with its deliveries and attempts."""
    stories = []
    events = (await conn.execute(EVENT, {"id": event_id, "tenant_id": tenant_id})).mappings()
    for event in list(events):
        seq = {"seq": event["seq"]}
        deliveries = (await conn.execute(EVENT_DELIVERIES, seq)).mappings().all()
        attempts = (await conn.execute(EVENT_ATTEMPTS, seq)).mappings().all()
        stories.append(
            EventStory(dict(event), [dict(d) for d in deliveries], [dict(a) for a in attempts])
        )
    return stories


# --- relay replay ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayFilter:
    """Which deliveries to try again. Statuses default to the terminal failure."""

    statuses: Sequence[str] = ("failed",)
    tenant_id: str | None = None
    destination_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


# A deleted destination's deliveries are not replayed: nothing would ever claim them.
_REPLAY_WHERE = """
    d.status = ANY(:statuses)
    AND NOT EXISTS (SELECT 1 FROM relay.destinations t
                    WHERE t.tenant_id = d.tenant_id AND t.id = d.destination_id
                      AND t.deleted_at IS NOT NULL)
    AND (CAST(:tenant_id AS text) IS NULL OR d.tenant_id = :tenant_id)
    AND (CAST(:destination_id AS text) IS NULL OR d.destination_id = :destination_id)
    AND (CAST(:since AS timestamptz) IS NULL OR d.created_at >= :since)
    AND (CAST(:until AS timestamptz) IS NULL OR d.created_at < :until)
"""

REPLAY_COUNT = text(f"SELECT count(*) FROM relay.deliveries d WHERE {_REPLAY_WHERE}").bindparams(
    bindparam("statuses", type_=ARRAY(Text)),
    bindparam("since", type_=TS),
    bindparam("until", type_=TS),
)

# Keyset over the delivery id: each batch is its own short transaction, and rows already
# made pending by an earlier batch are not picked again (their status changed).
REPLAY_BATCH = text(f"""
    WITH batch AS (
        SELECT d.id FROM relay.deliveries d
        WHERE {_REPLAY_WHERE} AND d.id > :after
        ORDER BY d.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE relay.deliveries d
    SET status = 'pending', next_attempt_at = now(), manual = true, updated_at = now()
    FROM batch WHERE d.id = batch.id
    RETURNING d.id
""").bindparams(
    bindparam("statuses", type_=ARRAY(Text)),
    bindparam("since", type_=TS),
    bindparam("until", type_=TS),
)


def _replay_params(f: ReplayFilter) -> dict[str, Any]:
    return {
        "statuses": list(f.statuses),
        "tenant_id": f.tenant_id,
        "destination_id": f.destination_id,
        "since": f.since,
        "until": f.until,
    }


async def replay_count(conn: AsyncConnection, f: ReplayFilter) -> int:
    return int((await conn.execute(REPLAY_COUNT, _replay_params(f))).scalar_one())


async def replay_batch(
    conn: AsyncConnection, f: ReplayFilter, *, after: int, limit: int
) -> list[int]:
    """Make one batch due now (manual); the ids replayed, ascending."""
    params = _replay_params(f) | {"after": after, "limit": limit}
    ids = sorted((await conn.execute(REPLAY_BATCH, params)).scalars())
    if ids:
        await conn.execute(NOTIFY)
    return ids


# --- relay stats ---------------------------------------------------------------------------

BACKLOG = text("SELECT * FROM relay.outbox_backlog ORDER BY status")

HEALTH = text("""
    SELECT tenant_id, destination_id, enabled, disabled_reason, consecutive_failures,
           attempts_1h, success_rate_1h, pending, oldest_pending_age, last_success_at
    FROM relay.destination_health
    WHERE deleted_at IS NULL
    ORDER BY enabled, consecutive_failures DESC, tenant_id, destination_id
""")


async def backlog(conn: AsyncConnection) -> list[dict[str, Any]]:
    return [dict(r) for r in (await conn.execute(BACKLOG)).mappings()]


async def health(conn: AsyncConnection) -> list[dict[str, Any]]:
    return [dict(r) for r in (await conn.execute(HEALTH)).mappings()]


# --- housekeeping --------------------------------------------------------------------------

# Deliveries can become pending for a destination that is already deleted (an attempt in
# flight during the DELETE is recorded as a retry; a publish races the DELETE). The claim
# never takes them; this ends them, so they do not sit in the backlog forever.
# It starts from the deleted destinations and looks each one's pending rows up in an index
# by destination, so a round costs what the strays cost. Written as a join, it walked the
# whole pending backlog instead (the planner has no statistics for a handful of
# destinations), in every dispatcher every minute, once any destination was deleted.
# OFFSET 0 keeps the look-up per destination (a subquery with one is not merged into a
# join), and = ANY(ARRAY(...)) updates the rows found by key.
FAIL_DELETED_DESTINATIONS = text("""
    UPDATE relay.deliveries d
    SET status = 'failed', last_error = 'destination deleted', next_attempt_at = now(),
        updated_at = now()
    WHERE d.status = 'pending' AND d.id = ANY(ARRAY(
        SELECT stray.id
        FROM relay.destinations t
        CROSS JOIN LATERAL (
            SELECT s.id FROM relay.deliveries s
            WHERE s.tenant_id = t.tenant_id AND s.destination_id = t.id
              AND s.status = 'pending'
            OFFSET 0
        ) stray
        WHERE t.deleted_at IS NOT NULL
    ))
""")


# The plan's estimate is one destination's share of the whole table for each deleted
# destination, which soon passes jit_above_cost on a server built with JIT (Debian's
# packages are, and jit is on by default): compiling then took 240 ms of a statement
# whose plan ran in 0.14 ms.
NO_JIT = text("SET LOCAL jit = off")


async def fail_deleted_destinations(conn: AsyncConnection) -> int:
    """End the pending deliveries of deleted destinations (in the caller's transaction)."""
    await conn.execute(NO_JIT)
    return (await conn.execute(FAIL_DELETED_DESTINATIONS)).rowcount


# --- retention -----------------------------------------------------------------------------

# Events stored before the cutoff whose deliveries are all finished. An event with a pending
# or in-flight delivery is never picked, however old.
PRUNABLE_EVENTS = text("""
    SELECT e.seq FROM relay.events e
    WHERE e.created_at < :cutoff
      AND NOT EXISTS (
          SELECT 1 FROM relay.deliveries d
          WHERE d.event_seq = e.seq AND d.status IN ('pending', 'delivering'))
    ORDER BY e.created_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
""").bindparams(bindparam("cutoff", type_=TS))

# The candidates' deliveries, locked, as they are now: a replay or POST /retry that made
# one due again after PRUNABLE_EVENTS looked is seen here (we wait for it to commit), and
# once locked no one can change them before we are done.
LOCK_DELIVERIES = text("""
    SELECT event_seq, status FROM relay.deliveries
    WHERE event_seq = ANY(:seqs)
    ORDER BY id
    FOR UPDATE
""").bindparams(bindparam("seqs", type_=ARRAY(BigInteger)))

DELETE_ATTEMPTS = text("DELETE FROM relay.attempts WHERE event_seq = ANY(:seqs)").bindparams(
    bindparam("seqs", type_=ARRAY(BigInteger))
)
DELETE_DELIVERIES = text("DELETE FROM relay.deliveries WHERE event_seq = ANY(:seqs)").bindparams(
    bindparam("seqs", type_=ARRAY(BigInteger))
)
DELETE_EVENTS = text("DELETE FROM relay.events WHERE seq = ANY(:seqs)").bindparams(
    bindparam("seqs", type_=ARRAY(BigInteger))
)

# Only one process prunes at a time; the others skip the round.
TRY_PRUNE_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtext('relay.prune'))")


@dataclass
class Pruned:
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    # Candidates left alone because a delivery became due again meanwhile.
    skipped: int = 0


async def prune_batch(conn: AsyncConnection, cutoff: datetime, limit: int) -> Pruned | None:
    """Remove one batch of finished history older than cutoff; None if another process
    holds the prune lock."""
    if not (await conn.execute(TRY_PRUNE_LOCK)).scalar_one():
        return None
    candidates = (await conn.execute(PRUNABLE_EVENTS, {"cutoff": cutoff, "limit": limit})).scalars()
    seqs = list(candidates)
    if not seqs:
        return Pruned()
    deliveries = (await conn.execute(LOCK_DELIVERIES, {"seqs": seqs})).all()
    revived = {row.event_seq for row in deliveries if row.status in ("pending", "delivering")}
    seqs = [seq for seq in seqs if seq not in revived]
    if not seqs:
        # Everything in this batch came back to life; the next round looks further.
        return Pruned(skipped=len(revived))
    attempts = (await conn.execute(DELETE_ATTEMPTS, {"seqs": seqs})).rowcount
    deleted_deliveries = (await conn.execute(DELETE_DELIVERIES, {"seqs": seqs})).rowcount
    events = (await conn.execute(DELETE_EVENTS, {"seqs": seqs})).rowcount
    return Pruned(events, deleted_deliveries, attempts, skipped=len(revived))
