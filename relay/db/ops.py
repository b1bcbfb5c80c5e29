"""Operator SQL: an event's story, bulk replay, backlog and health.

Reads go through the history views (the supported interface, docs/sql.md); writes are
bounded batches so a large replay never holds long locks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Text

from relay.db import slices
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
REPLAY_PICK = text(f"""
    SELECT d.id, d.event_seq FROM relay.deliveries d
    WHERE {_REPLAY_WHERE} AND d.id > :after
    ORDER BY d.id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
""").bindparams(
    bindparam("statuses", type_=ARRAY(Text)),
    bindparam("since", type_=TS),
    bindparam("until", type_=TS),
)

# Finished ones move back to the hot table (PostgreSQL moves a row whose status changes
# partition); those whose event has gone with its slice meanwhile stay as they are.
REPLAY = text("""
    UPDATE relay.deliveries d
    SET status = 'pending', next_attempt_at = now(), manual = true, updated_at = now()
    WHERE d.id = ANY(:ids)
      AND EXISTS (SELECT 1 FROM relay.events e WHERE e.seq = d.event_seq)
    RETURNING d.id
""").bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


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
) -> tuple[list[int], int | None]:
    """Make one batch due now (manual): the ids replayed, ascending, and the last id
    looked at (None when there was none left)."""
    params = _replay_params(f) | {"after": after, "limit": limit}
    await slices.revive(conn)
    picked = (await conn.execute(REPLAY_PICK, params)).all()
    await slices.keep_revived(conn, sorted({row.event_seq for row in picked}))
    replayed = await conn.execute(REPLAY, {"ids": [row.id for row in picked]})
    ids = sorted(replayed.scalars())
    if ids:
        await conn.execute(NOTIFY)
    return ids, max((row.id for row in picked), default=None)


# --- the console's replays (relay.replay_jobs): progress any relay process can show -------

# A replay unfinished with no progress for this long lost the process running it (a batch
# takes a second or so).
STALLED_AFTER = timedelta(seconds=60)

REPLAY_JOB_START = text("""
    WITH gone AS (
        DELETE FROM relay.replay_jobs WHERE finished_at < now() - interval '30 days'
    )
    INSERT INTO relay.replay_jobs (id, selection, total, after_attempt)
    VALUES (:id, CAST(:selection AS jsonb), :total, :after_attempt)
""")

REPLAY_JOB_PROGRESS = text(
    "UPDATE relay.replay_jobs SET done = :done, updated_at = now() WHERE id = :id"
)

REPLAY_JOB_FINISH = text("""
    UPDATE relay.replay_jobs SET finished_at = now(), updated_at = now(), error = :error
    WHERE id = :id
""")

REPLAY_JOB = text("""
    SELECT id, selection::text AS selection, total, done, after_attempt, started_at,
           updated_at, finished_at, error, now() - updated_at AS idle
    FROM relay.replay_jobs WHERE id = :id
""")


@dataclass(frozen=True, slots=True)
class ReplayJob:
    id: str
    selection: ReplayFilter
    total: int
    done: int
    after_attempt: int
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error: str | None
    # Unfinished and unchanged for STALLED_AFTER: its process stopped without saying so.
    stalled: bool

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def as_json(self) -> dict[str, Any]:
        error = self.error
        if self.stalled:
            error = (
                f"no progress since {self.updated_at.astimezone(UTC):%H:%M:%S} UTC: the relay "
                "process running it stopped; what it replayed stays replayed, and a new "
                "replay with the same selection does the rest"
            )
        return {
            "id": self.id,
            "total": self.total,
            "done": self.done,
            "finished": self.finished,
            "stalled": self.stalled,
            "error": error,
            "after_attempt": self.after_attempt,
        }


def _selection_json(f: ReplayFilter) -> str:
    return json.dumps(
        {
            "statuses": list(f.statuses),
            "tenant_id": f.tenant_id,
            "destination_id": f.destination_id,
            "since": None if f.since is None else f.since.isoformat(),
            "until": None if f.until is None else f.until.isoformat(),
        }
    )


def _selection(raw: str) -> ReplayFilter:
    d = json.loads(raw)
    return ReplayFilter(
        statuses=tuple(d["statuses"]),
        tenant_id=d["tenant_id"],
        destination_id=d["destination_id"],
        since=None if d["since"] is None else datetime.fromisoformat(d["since"]),
        until=None if d["until"] is None else datetime.fromisoformat(d["until"]),
    )


async def start_replay_job(
    conn: AsyncConnection, id: str, f: ReplayFilter, total: int, after_attempt: int
) -> None:
    params = {"id": id, "selection": _selection_json(f), "total": total}
    await conn.execute(REPLAY_JOB_START, params | {"after_attempt": after_attempt})


async def replay_job_progress(conn: AsyncConnection, id: str, done: int) -> None:
    """In the batch's own transaction: ``done`` is what committed."""
    await conn.execute(REPLAY_JOB_PROGRESS, {"id": id, "done": done})


async def finish_replay_job(conn: AsyncConnection, id: str, error: str | None) -> None:
    await conn.execute(REPLAY_JOB_FINISH, {"id": id, "error": error})


async def replay_job(conn: AsyncConnection, id: str) -> ReplayJob | None:
    row = (await conn.execute(REPLAY_JOB, {"id": id})).mappings().first()
    if row is None:
        return None
    return ReplayJob(
        id=row["id"],
        selection=_selection(row["selection"]),
        total=row["total"],
        done=row["done"],
        after_attempt=row["after_attempt"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        stalled=row["finished_at"] is None and row["idle"] > STALLED_AFTER,
    )


# --- relay stats ---------------------------------------------------------------------------

BACKLOG = text("SELECT * FROM relay.outbox_backlog ORDER BY status")

HEALTH = text("""
    SELECT tenant_id, destination_id, enabled, disabled_reason, consecutive_failures,
           attempts_1h, success_rate_1h, pending, oldest_pending_age, last_success_at
    FROM relay.destination_health
    WHERE deleted_at IS NULL
    ORDER BY enabled, consecutive_failures DESC, tenant_id, destination_id
""")


# Delivery control at a glance: destinations slowed down by adaptive backoff, and the
# ordered keys each holds blocked (a head that failed for good under "block").
CONTROL = text("""
    SELECT t.tenant_id, t.id AS destination_id, t.throttle, t.throttled_until,
           t.throttle_reason, COALESCE(b.blocked_keys, 0) AS blocked_keys
    FROM relay.destinations t
    LEFT JOIN (
        SELECT tenant_id, destination_id, count(*) AS blocked_keys
        FROM relay.deliveries_active
        WHERE status = 'pending' AND next_attempt_at = 'infinity'
        GROUP BY tenant_id, destination_id
    ) b ON b.tenant_id = t.tenant_id AND b.destination_id = t.id
    WHERE t.deleted_at IS NULL
      AND (t.throttle < 1 OR t.throttled_until > now() OR b.blocked_keys > 0)
    ORDER BY t.tenant_id, t.id
""")


async def control(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Destinations slowed down (adaptive backoff) or with ordered keys blocked."""
    return [dict(r) for r in (await conn.execute(CONTROL)).mappings()]


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


async def fail_deleted_destinations(conn: AsyncConnection) -> int:
    """End the pending deliveries of deleted destinations (in the caller's transaction).
    (Its estimate passes jit_above_cost; relay's sessions have jit off: relay/db/engine.py.)"""
    return (await conn.execute(FAIL_DELETED_DESTINATIONS)).rowcount
