"""Who holds PostgreSQL's xmin horizon back, and for how long.

VACUUM (and pruning on access) may remove a dead row only once no snapshot can still see
it. The oldest snapshot or transaction id anyone holds is that limit, the xmin horizon.
While one session holds it, every row relay's outbox finishes with stays behind as a dead
row the claim must step over, and the queue slows. What can hold it, as PostgreSQL
computes it for a table of this database (procarray.c, ComputeXidHorizons):

- a session of this database with a snapshot (``backend_xmin``: a REPEATABLE READ
  transaction, a long query, pg_dump) or a transaction id (``backend_xid``: a writing
  transaction that has not ended). A session of another database counts by its
  transaction id only: that id is in every snapshot taken here while it runs, so any
  snapshot of ours brings it in; its snapshots alone do not. Autovacuum's own snapshot is
  ignored by PostgreSQL, and here (as is a logical decoding connection's: its slot holds).
- a physical replication connection with hot_standby_feedback and no slot (its session
  has no database), and a replication slot: ``xmin`` (a standby's feedback) and
  ``catalog_xmin`` (logical decoding; it holds back the system catalogs' dead rows, not
  the outbox's, but a slot stuck there retains WAL too).
- a prepared transaction (two-phase commit) not yet committed or rolled back, in any
  database, by its transaction id, as for another database's session.

Ages come two ways. In transaction ids, exact: ``age(xid)``. In seconds, from what
PostgreSQL tells: a session's transaction start (the snapshot is at most that old; in READ
COMMITTED a transaction that runs many statements takes a new one for each, so this is an
upper bound), a prepared transaction's PREPARE time. A slot has no time, and a session of
another role has none for a role without pg_read_all_stats (PostgreSQL hides its
``xact_start``, not its ``backend_xmin``): then None.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

KINDS = ("session", "replication_slot", "prepared_transaction")

# The oldest `per_kind` holders of each kind, oldest first (by transaction ids, then by
# time: in a quiet database no ids are spent, and every snapshot has the same xmin).
# This session's own snapshot (taken for this very query) is left out.
HOLDERS = text("""
    WITH sessions AS (
        SELECT a.*,
               CASE WHEN a.datname = current_database() OR a.datid IS NULL
                    THEN greatest(age(a.backend_xid), age(a.backend_xmin))
                    ELSE age(a.backend_xid)
               END AS xids,
               -- xid has no ordering: the older of the two is the one with the larger age.
               CASE WHEN age(a.backend_xid) >= coalesce(age(a.backend_xmin), 0)
                         OR (a.datname IS DISTINCT FROM current_database()
                             AND a.datid IS NOT NULL)
                    THEN a.backend_xid ELSE a.backend_xmin
               END AS held
        FROM pg_stat_activity a
        WHERE a.pid <> pg_backend_pid()
          -- Autovacuum's snapshot, and a logical decoding connection's, do not count
          -- (PROC_IN_VACUUM, PROC_IN_LOGICAL_DECODING): the latter holds through its slot.
          AND a.backend_type IS DISTINCT FROM 'autovacuum worker'
          AND NOT (a.backend_type = 'walsender' AND a.datid IS NOT NULL)
    ),
    holders AS (
        SELECT 'session' AS kind, s.xids, s.held::text AS held,
               extract(epoch FROM now() - s.xact_start)::float8 AS seconds,
               s.pid, s.usename::text AS usename, s.application_name AS name, s.state,
               s.xact_start AS since, left(s.query, 200) AS query
        FROM sessions s
        WHERE s.xids IS NOT NULL
      UNION ALL
        SELECT 'replication_slot',
               greatest(age(r.xmin), age(r.catalog_xmin)),
               CASE WHEN coalesce(age(r.xmin), -1) >= coalesce(age(r.catalog_xmin), -1)
                    THEN r.xmin ELSE r.catalog_xmin END::text,
               NULL,
               r.active_pid, NULL, r.slot_name,
               concat_ws(' ', r.slot_type, CASE WHEN r.active THEN 'active' ELSE 'inactive' END,
                         CASE WHEN coalesce(age(r.xmin), -1) >= coalesce(age(r.catalog_xmin), -1)
                              THEN 'xmin' ELSE 'catalog_xmin' END),
               NULL, NULL
        FROM pg_replication_slots r
        WHERE (r.xmin IS NOT NULL OR r.catalog_xmin IS NOT NULL)
          AND (r.database IS NULL OR r.database = current_database())
      UNION ALL
        SELECT 'prepared_transaction', age(p.transaction), p.transaction::text,
               extract(epoch FROM now() - p.prepared)::float8,
               NULL, p.owner::text, p.gid, 'prepared in ' || p.database, p.prepared, NULL
        FROM pg_prepared_xacts p
    ),
    ranked AS (
        SELECT h.*, row_number() OVER (
            PARTITION BY h.kind ORDER BY h.xids DESC, h.seconds DESC NULLS LAST) AS rank
        FROM holders h
    )
    SELECT kind, xids, held, seconds, pid, usename, name, state, since, query
    FROM ranked
    WHERE rank <= :per_kind
    ORDER BY xids DESC, seconds DESC NULLS LAST
""")


@dataclass(frozen=True, slots=True)
class Holder:
    """Something that holds the xmin horizon back."""

    kind: str  # session | replication_slot | prepared_transaction
    xid: int  # the transaction id it holds (its snapshot's xmin, or its own id)
    age_xids: int
    # None when PostgreSQL does not tell (a slot; a session hidden from relay's role).
    age_seconds: float | None
    pid: int | None  # a session's; a slot's active connection
    usename: str | None  # a session's role; a prepared transaction's owner
    # A session's application_name, a slot's name, a prepared transaction's gid.
    name: str | None
    # A session's state (active, idle in transaction, ...); what a slot holds.
    state: str | None
    since: datetime | None  # a session's transaction start; the PREPARE time
    query: str | None  # the first 200 characters of a session's (last) statement


async def holders(conn: AsyncConnection, per_kind: int = 5) -> list[Holder]:
    """Up to ``per_kind`` holders of each kind, the oldest first (the first one holds
    the horizon)."""
    rows = (await conn.execute(HOLDERS, {"per_kind": per_kind})).mappings()
    return [
        Holder(
            kind=r["kind"],
            xid=int(r["held"]),
            age_xids=int(r["xids"]),
            age_seconds=None if r["seconds"] is None else max(float(r["seconds"]), 0.0),
            pid=r["pid"],
            usename=r["usename"],
            name=r["name"],
            state=r["state"],
            since=r["since"],
            query=r["query"],
        )
        for r in rows
    ]
