"""The outbox's delivery SQL: claiming, leases, recording outcomes and the destination
health they imply.

The dispatcher's statements are here, named; writing events and their outbox rows is
relay/db/publishing.py. Callers never build SQL themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeAlias

import asyncpg
import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import BigInteger, Boolean, Float, Integer, Text

from relay.claiming import Claims, Destination, Position, Take
from relay.db.tables import TS

NOTIFY_CHANNEL = "relay_outbox"

# --- wake-ups ------------------------------------------------------------------------
# Publishing itself is relay/db/publishing.py; admin requeues notify here too.

# NOTIFY is delivered on commit only, and duplicates within a transaction fold into one.
# With no payload it names no destination: dispatchers forget their cursors and search
# every destination (relay/claiming.py). Requeues by operators and released leases send
# it: they are rare, and their rows may land behind any cursor.
NOTIFY = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")


# New pending rows announce their destination and their next_attempt_at, in microseconds
# since the epoch: a dispatcher's cursor on that destination moves back to it if it is
# past (relay/claiming.py). Written by the statements that make rows pending, from their
# rows' tenant_id and destination_id and ``at`` (now() for new rows: the writing
# transaction's start). A payload PostgreSQL would refuse (over 8000 bytes, for ids that
# long) becomes the one that names none.
def announce(at: str = "now()") -> str:
    return f"""pg_notify('{NOTIFY_CHANNEL}',
    CASE WHEN octet_length(tenant_id) + octet_length(destination_id) < 7000
         THEN json_build_array(tenant_id, destination_id,
                               (extract(epoch FROM {at}) * 1000000)::bigint)::text
         ELSE '' END)"""


ANNOUNCE = announce()

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def announced(payload: str) -> tuple[Destination, datetime] | None:
    """What a NOTIFY payload names: a destination and the key of its new rows, or None
    for a wake-up that names none (or one this version cannot read). Pure."""
    try:
        tenant_id, destination_id, micros = orjson.loads(payload)
        return (str(tenant_id), str(destination_id)), _EPOCH + timedelta(microseconds=micros)
    except (orjson.JSONDecodeError, TypeError, ValueError, OverflowError):
        return None


# --- dispatch ------------------------------------------------------------------------

# What a delivery needs, from a claimed row joined to its event (e) and destination (t).
# Only values the driver reads back whatever the producer sent: text, numbers, booleans
# and relay's own timestamps (the event's `time`, the producer's, comes as the text of
# its epoch seconds: exact, and readable whatever it is, infinity included).
_CLAIMED = """
    d.id, d.attempts, d.tenant_id, d.destination_id,
    {manual} AS manual, e.seq AS event_seq, e.id AS event_id, e.topic,
    COALESCE(e.body, e.data)::text AS body,
    e.metadata::text AS metadata, e.eligible_for_retry,
    e.created_at AS published_at, d.updated_at AS claimed_at,
    extract(epoch FROM e.time)::text AS event_time,
    t.type, t.config::text AS config, t.credentials::text AS credentials,
    t.url, t.custom_headers::text AS custom_headers, t.secret, t.previous_secret,
    t.previous_secret_invalid_at > now() AS previous_secret_valid,
    t.signature_mode, t.timeout_seconds, t.delivery_metadata::text AS delivery_metadata,
    e.trace_context,
    d.ordering_key, t.ordering_on_failure = 'block' AS ordering_blocks
"""

# One statement: for each destination asked for (relay/claiming.py decides which, how
# many rows and after which position), take its first due rows past the cursor, skipping
# rows another dispatcher holds; stamp them with our token and a lease, and return all a
# delivery needs, with the row's position (the destination's new cursor). It
# commits before any HTTP call. Disabled and deleted destinations give nothing: their
# pending rows stay pending until the destination is enabled again.
#
# Each destination's rows come from one range of ix_deliveries_due, (tenant_id,
# destination_id, next_attempt_at, id) over pending rows, read in order from just past the
# cursor and stopped at the count: entries behind the cursor (rows claimed before, dead or
# not) are never visited, and only rows that are claimed are locked. The position is
# (next_attempt_at, id), not the time alone: the rows of one transaction share its time,
# and a group commit writes hundreds.
#
# The update finds its rows by primary key from an array (`= ANY`), and the events and
# destinations are joined to what it returns. Joined inside the update, the planner
# (which cannot know how few rows a claim takes) hashed the destinations against a
# sequential scan of relay.deliveries: every claim read the whole table, 50 ms a claim
# behind a backlog of 200,000.
_QUEUE = """
    FROM relay.deliveries_active d
    WHERE d.tenant_id = {tenant} AND d.destination_id = {destination}
      AND d.status = 'pending'
      AND (d.next_attempt_at, d.id)
          > (COALESCE({since}.since_at, '-infinity'), COALESCE({since}.since_id, 0))
      AND d.next_attempt_at <= now()
    ORDER BY d.next_attempt_at, d.id"""


def _queue(tenant: str, destination: str, since: str) -> str:
    """A destination's due rows past its cursor (``since``: the alias of the row holding
    since_at and since_id), in queue order: one range of ix_deliveries_due."""
    return _QUEUE.format(tenant=tenant, destination=destination, since=since)


# A destination's own rate limit and burst, else its tenant's (``t`` a destination, ``n``
# its tenant); a burst unset is one second's worth.
_RATE = "COALESCE(t.rate_limit_per_second, n.rate_limit_per_second)"
_BURST = f"""COALESCE(t.rate_limit_burst, n.rate_limit_burst, GREATEST(1, ceil({_RATE}))::int)"""

# Destinations under delivery control (a rate limit or in-flight cap of their own or
# their tenant's, or slowed down by adaptive backoff): ``t`` a destination, ``n`` its
# tenant. CLAIM leaves them out; CLAIM_LIMITED takes them, under their lock.
_CONTROLLED = """(t.rate_limit_per_second IS NOT NULL OR t.max_in_flight IS NOT NULL
     OR n.rate_limit_per_second IS NOT NULL OR n.max_in_flight IS NOT NULL
     OR t.throttle < 1 OR COALESCE(t.throttled_until > now(), false)
     OR t.ordering_key IS NOT NULL)"""

# The end of both claims (CLAIM, CLAIM_LIMITED): ``due`` (a CTE each defines) holds the
# rows to take, with id and manual; they become ``delivering`` under our token and a
# lease (``claimed``), and come back with all a delivery needs (_RETURN_CLAIMED).
_TAKE = """claimed AS (
        UPDATE relay.deliveries_active d
        SET status = 'delivering',
            attempts = d.attempts + 1,
            manual = false,
            claim_token = :token,
            lease_expires_at = now() + make_interval(secs => :lease_seconds),
            updated_at = now()
        FROM due
        WHERE d.id = ANY(ARRAY(SELECT id FROM due)) AND d.id = due.id
        RETURNING d.*, due.manual AS was_manual"""

_RETURN_CLAIMED = f"""SELECT {_CLAIMED.format(manual="d.was_manual")}, d.next_attempt_at AS due_at
    FROM claimed d
    JOIN relay.events e ON e.seq = d.event_seq
    JOIN relay.destinations t ON t.tenant_id = d.tenant_id AND t.id = d.destination_id"""

# Both claims' parameters (claim_parameters builds them from a plan).
_CLAIM_PARAMS = (
    bindparam("tenants", type_=ARRAY(Text)),
    bindparam("destinations", type_=ARRAY(Text)),
    bindparam("counts", type_=ARRAY(Integer)),
    bindparam("since_at", type_=ARRAY(TS)),
    bindparam("since_id", type_=ARRAY(BigInteger)),
    bindparam("token", type_=UUID(as_uuid=True)),
    bindparam("lease_seconds", type_=Float),
)

CLAIM = text(f"""
    WITH asked AS (
        SELECT a.* FROM unnest(CAST(:tenants AS text[]), CAST(:destinations AS text[]),
                               CAST(:counts AS int[]), CAST(:since_at AS timestamptz[]),
                               CAST(:since_id AS bigint[]))
            AS a(tenant_id, destination_id, count, since_at, since_id)
        JOIN relay.destinations t ON t.tenant_id = a.tenant_id AND t.id = a.destination_id
        LEFT JOIN relay.tenants n ON n.id = t.tenant_id
        WHERE t.disabled_at IS NULL AND t.deleted_at IS NULL AND NOT {_CONTROLLED}
    ), due AS (
        SELECT p.id, p.manual, p.next_attempt_at
        FROM asked a
        CROSS JOIN LATERAL (
            SELECT d.id, d.manual, d.next_attempt_at
            {_queue("a.tenant_id", "a.destination_id", "a")}
            LIMIT a.count
            FOR UPDATE SKIP LOCKED
        ) p
    ), {_TAKE}
    )
    {_RETURN_CLAIMED}
""").bindparams(*_CLAIM_PARAMS)

# The session the claims and searches run in. Without sorts, a destination's due rows
# can only come from ix_deliveries_due, in order, stopped at the count. Planned from
# statistics that say a destination has a few rows (a table filled since the last
# ANALYZE: any new deployment, any sudden backlog), PostgreSQL read all of them through
# another index on the destination and sorted them: 44 ms per claim at 100,000 pending
# for one destination, instead of under one.
CLAIM_SESSION: dict[str, str] = {"enable_sort": "off"}

# The periodic search (polling is the truth): which enabled destinations have due rows
# past their cursor (from the head for those without one), and the first one's position.
# One probe of ix_deliveries_due per destination.
FIND_DUE = text(f"""
    SELECT t.tenant_id, t.id AS destination_id, first.next_attempt_at, first.id,
           {_CONTROLLED} AS controlled, {_RATE} * t.throttle AS rate, {_BURST} AS burst
    FROM relay.destinations t
    LEFT JOIN relay.tenants n ON n.id = t.tenant_id
    LEFT JOIN unnest(CAST(:tenants AS text[]), CAST(:destinations AS text[]),
                     CAST(:since_at AS timestamptz[]), CAST(:since_id AS bigint[]))
        AS c(tenant_id, destination_id, since_at, since_id)
      ON c.tenant_id = t.tenant_id AND c.destination_id = t.id
    CROSS JOIN LATERAL (
        SELECT d.next_attempt_at, d.id
        {_queue("t.tenant_id", "t.id", "c")}
        LIMIT 1
    ) first
    WHERE t.disabled_at IS NULL AND t.deleted_at IS NULL
""").bindparams(
    bindparam("tenants", type_=ARRAY(Text)),
    bindparam("destinations", type_=ARRAY(Text)),
    bindparam("since_at", type_=ARRAY(TS)),
    bindparam("since_id", type_=ARRAY(BigInteger)),
)

# --- delivery control -------------------------------------------------------------
# Rate limits and in-flight caps hold across every dispatcher sharing the database. A
# claim for destinations under control runs in a transaction that first takes each
# one's advisory lock (in key order: two claims cannot deadlock), so that the claim's
# snapshot, taken after the lock, sees every row claimed before it: the count of rows in
# flight (``delivering``, all processes) is exact, and the token bucket is the one the
# last claim left. Rows leave ``delivering`` without the lock (recorded, released): the
# count can only be high, never low. One lock and one bucket row per destination: no row
# is shared by all destinations (bench/limits_hot_row.py measures one destination's).
LIMIT_LOCK_CLASS = 0x72656C61  # "rela": the first key of relay's two-key advisory locks

LOCK_LIMITED = text(f"""
    SELECT pg_advisory_xact_lock({LIMIT_LOCK_CLASS}, k)
    FROM (SELECT DISTINCT hashtext(a.tenant_id || '/' || a.destination_id) AS k
          FROM unnest(CAST(:tenants AS text[]), CAST(:destinations AS text[]))
              AS a(tenant_id, destination_id)
          ORDER BY 1) keys
""").bindparams(
    bindparam("tenants", type_=ARRAY(Text)),
    bindparam("destinations", type_=ARRAY(Text)),
)

# CLAIM for destinations under control. Each destination is granted the least of what
# the plan asks, its in-flight cap less what is in flight, and the whole tokens in its
# bucket (refilled at its rate since the last claim, up to its burst); a bucket is
# written back less what was taken. Adaptive backoff scales the rate and the cap by
# ``throttle`` and grants nothing before throttled_until. A destination with no cap of
# its own gets :default_in_flight (the per-process one, now held by all processes
# together), or one second of its rate if that is more: 32 in flight would hold a
# 1,500/s limit to what 32 slots can turn over, each freed slot waiting for a claim.
CLAIM_LIMITED = text(f"""
    WITH asked AS (
        SELECT a.*,
               {_RATE} * t.throttle AS rate, {_BURST} AS burst,
               GREATEST(1, floor(COALESCE(t.max_in_flight, n.max_in_flight,
                                          GREATEST(:default_in_flight, ceil({_RATE})))
                                 * t.throttle))::int AS cap,
               t.ordering_key IS NOT NULL AS ordered
        FROM unnest(CAST(:tenants AS text[]), CAST(:destinations AS text[]),
                    CAST(:counts AS int[]), CAST(:since_at AS timestamptz[]),
                    CAST(:since_id AS bigint[]))
            AS a(tenant_id, destination_id, count, since_at, since_id)
        JOIN relay.destinations t ON t.tenant_id = a.tenant_id AND t.id = a.destination_id
        LEFT JOIN relay.tenants n ON n.id = t.tenant_id
        WHERE t.disabled_at IS NULL AND t.deleted_at IS NULL
          AND (t.throttled_until IS NULL OR t.throttled_until <= now())
    ), measured AS (
        -- One reading of the clock per destination, for the refill and for refilled_at:
        -- read twice, the time between the readings (the in-flight count, longer the
        -- longer the backlog) was refilled twice, and a 500/s limit sent 530-630/s.
        SELECT a.*, clock.at,
               (SELECT count(*) FROM relay.deliveries_active d
                WHERE d.tenant_id = a.tenant_id AND d.destination_id = a.destination_id
                  AND d.status = 'delivering') AS in_flight,
               CASE WHEN a.rate IS NOT NULL THEN
                   LEAST(a.burst, COALESCE(
                       b.tokens + GREATEST(0, extract(epoch FROM clock.at - b.refilled_at))
                                  * a.rate,
                       a.burst))
               END AS tokens
        FROM asked a
        CROSS JOIN (SELECT clock_timestamp() AS at) clock
        LEFT JOIN relay.destination_buckets b
          ON b.tenant_id = a.tenant_id AND b.destination_id = a.destination_id
    ), granted AS (
        SELECT m.*,
               GREATEST(0, LEAST(m.count, m.cap - m.in_flight,
                                 COALESCE(floor(m.tokens)::int, m.count))) AS grant
        FROM measured m
    ), due AS (
        SELECT p.id, p.manual, p.next_attempt_at, g.tenant_id, g.destination_id
        FROM granted g
        CROSS JOIN LATERAL (
            SELECT d.id, d.manual, d.next_attempt_at
            {_queue("g.tenant_id", "g.destination_id", "g")}
            LIMIT g.grant
            FOR UPDATE SKIP LOCKED
        ) p
        WHERE NOT g.ordered
        UNION ALL
        -- An ordered destination: from its head (no cursor: a row passed over because
        -- its key was busy is taken later), only the first row of each key still in
        -- the hot table (pending or in flight, any dispatcher's), and rows without a key.
        SELECT p.id, p.manual, p.next_attempt_at, g.tenant_id, g.destination_id
        FROM granted g
        CROSS JOIN LATERAL (
            SELECT d.id, d.manual, d.next_attempt_at
            FROM relay.deliveries_active d
            WHERE d.tenant_id = g.tenant_id AND d.destination_id = g.destination_id
              AND d.status = 'pending' AND d.next_attempt_at <= now()
              AND (d.ordering_key IS NULL OR NOT EXISTS (
                  SELECT 1 FROM relay.deliveries_active o
                  WHERE o.tenant_id = d.tenant_id AND o.destination_id = d.destination_id
                    AND o.ordering_key = d.ordering_key AND o.id < d.id))
            ORDER BY d.next_attempt_at, d.id
            LIMIT g.grant
            FOR UPDATE SKIP LOCKED
        ) p
        WHERE g.ordered
    ), {_TAKE}
    ), spent AS (
        INSERT INTO relay.destination_buckets AS b (tenant_id, destination_id, tokens,
                                                    refilled_at)
        SELECT g.tenant_id, g.destination_id,
               g.tokens - (SELECT count(*) FROM due
                           WHERE due.tenant_id = g.tenant_id
                             AND due.destination_id = g.destination_id),
               g.at
        FROM granted g
        WHERE g.tokens IS NOT NULL
        ON CONFLICT (tenant_id, destination_id) DO UPDATE
        SET tokens = excluded.tokens, refilled_at = excluded.refilled_at
    )
    {_RETURN_CLAIMED}
""").bindparams(*_CLAIM_PARAMS, bindparam("default_in_flight", type_=Integer))

# A live dispatcher keeps its claims: in-flight rows get a fresh lease while it works.
EXTEND_LEASES = text("""
    UPDATE relay.deliveries_active
    SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
    WHERE id = ANY(:ids) AND claim_token = :token AND status = 'delivering'
""").bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("token", type_=UUID(as_uuid=True)),
    bindparam("lease_seconds", type_=Float),
)

# A try that was cut short becomes an attempt row, so "what happened to event X?" shows
# it, and its delivery goes back to pending. The request may or may not have reached the
# receiver, which dedupes on webhook-id. The claim stamped updated_at, so it tells when
# the lost try started. `picked` (a CTE each statement below defines) selects the rows,
# locked, with id and claimed_at.
_RETURN_AS_ATTEMPT = """
    released AS (
        UPDATE relay.deliveries_active d
        SET status = 'pending', claim_token = NULL, lease_expires_at = NULL,
            next_attempt_at = now(), last_error = :code, updated_at = now()
        FROM picked
        WHERE d.id = picked.id
        RETURNING d.id, d.event_seq, d.tenant_id, d.destination_id, d.attempts,
                  picked.claimed_at
    )
    INSERT INTO relay.attempts
        (delivery_id, event_seq, tenant_id, destination_id, number, status, error_code,
         error_detail, duration_ms, started_at)
    SELECT id, event_seq, tenant_id, destination_id, attempts, 'failed', :code, :detail,
           LEAST(extract(epoch FROM now() - claimed_at) * 1000, 2147483647)::int,
           claimed_at
    FROM released
    RETURNING delivery_id
"""


# A delivery that ends leaves the hot table for its slice of finished history: the
# statement deletes it from relay.deliveries_active (a CTE, ``source``, that returns the
# deleted rows) and this inserts it into relay.deliveries, which routes it to the slice of
# deliveries_finished of its updated_at. An explicit move, not an UPDATE of status (which
# PostgreSQL would also carry out as a move): a claim that meets a moved row raises an
# error, one that meets a deleted row skips it.
def _finish(source: str, status: str, **values: str) -> str:
    columns = {
        "id": "id",
        "event_seq": "event_seq",
        "tenant_id": "tenant_id",
        "destination_id": "destination_id",
        "status": status,
        "attempts": "attempts",
        "next_attempt_at": "next_attempt_at",
        "last_error": "last_error",
        "manual": "manual",
        "created_at": "created_at",
        "updated_at": "now()",
    } | values
    return f"""INSERT INTO relay.deliveries ({", ".join(columns)})
        SELECT {", ".join(columns.values())} FROM {source}"""


# A dispatcher that died (or lost the database for longer than its lease) gives its rows
# back when any dispatcher finds their lease run out.
RELEASE_EXPIRED = text(
    """
    WITH picked AS (
        SELECT id, updated_at AS claimed_at FROM relay.deliveries_active
        WHERE status = 'delivering' AND lease_expires_at < now()
        ORDER BY lease_expires_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ),"""
    + _RETURN_AS_ATTEMPT
)

LEASE_EXPIRED_DETAIL = (
    "the dispatcher holding this delivery stopped (or lost the database) before recording "
    "an outcome; the request may have reached the receiver, and it will be sent again"
)

# A stopping dispatcher gives back the tries its grace period cut short (still ours).
RELEASE_INTERRUPTED = text(
    """
    WITH picked AS (
        SELECT id, updated_at AS claimed_at FROM relay.deliveries_active
        WHERE id = ANY(:ids) AND claim_token = :token AND status = 'delivering'
        ORDER BY id
        FOR UPDATE
    ),"""
    + _RETURN_AS_ATTEMPT
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("token", type_=UUID(as_uuid=True)),
)

INTERRUPTED_DETAIL = (
    "relay stopped before the receiver answered (the shutdown grace period ran out); the "
    "request may have reached the receiver, and it will be sent again"
)

# Rows claimed ahead (relay/dispatcher.py) that were never sent go back as they were:
# no attempt row, since nothing was tried, and the claim's count of attempts undone. They
# keep their place in the queue (next_attempt_at), behind any cursor: the caller wakes the
# dispatchers.
GIVE_BACK_UNSENT = text("""
    UPDATE relay.deliveries_active
    SET status = 'pending', claim_token = NULL, lease_expires_at = NULL,
        attempts = attempts - 1, manual = id = ANY(:manual), updated_at = now()
    WHERE id = ANY(:ids) AND claim_token = :token AND status = 'delivering'
""").bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("manual", type_=ARRAY(BigInteger)),
    bindparam("token", type_=UUID(as_uuid=True)),
)

# --- rows relay cannot process ----------------------------------------------------------
# A claim fails as a whole when one of its rows cannot be read: on the server (a value
# that cannot be converted to the connection's encoding, in a SQL_ASCII database), or in
# the driver after the claim committed (then every row of the batch is ours, and lost to
# us). Either way that row would come back with its neighbours at every claim or every
# lease, forever. So after such a failure the dispatcher looks at the rows one at a time:
# the ones it claimed and does not hold, and the due ones; each is read alone, and the one
# that cannot be read is quarantined, so it no longer holds up the others.

CLAIMED_IDS = text("""
    SELECT id FROM relay.deliveries_active
    WHERE claim_token = :token AND status = 'delivering' AND NOT (id = ANY(:held))
    ORDER BY id
""").bindparams(
    bindparam("token", type_=UUID(as_uuid=True)),
    bindparam("held", type_=ARRAY(BigInteger)),
)

# The rows a claim (its plan) would take first.
DUE_IDS = text(f"""
    SELECT p.id
    FROM unnest(CAST(:tenants AS text[]), CAST(:destinations AS text[]),
                CAST(:counts AS int[]), CAST(:since_at AS timestamptz[]),
                CAST(:since_id AS bigint[]))
        AS a(tenant_id, destination_id, count, since_at, since_id)
    CROSS JOIN LATERAL (
        SELECT d.id
        {_queue("a.tenant_id", "a.destination_id", "a")}
        LIMIT a.count
    ) p
""")

# One delivery as a claim returns it (whatever its state): can it be read at all?
READ_ONE = text(f"""
    SELECT {_CLAIMED.format(manual="d.manual")}
    FROM relay.deliveries d
    JOIN relay.events e ON e.seq = d.event_seq
    JOIN relay.destinations t ON t.tenant_id = d.tenant_id AND t.id = d.destination_id
    WHERE d.id = :id
""")

# Quarantine: the delivery fails for good, with an attempt row saying why (a pending one
# spends an attempt on it). An operator can replay it once the cause is fixed.
_SPENT = "attempts + CASE WHEN was_pending THEN 1 ELSE 0 END"
QUARANTINE = text(f"""
    WITH picked AS (
        SELECT id, status = 'pending' AS was_pending FROM relay.deliveries_active
        WHERE id = :id
          AND (status = 'pending' OR (status = 'delivering' AND claim_token = :token))
        FOR UPDATE
    ), taken AS (
        DELETE FROM relay.deliveries_active d
        USING picked
        WHERE d.id = picked.id
        RETURNING d.*, picked.was_pending
    ), ended AS (
        {_finish("taken", "'failed'", attempts=_SPENT, last_error=":code")}
        RETURNING id, event_seq, tenant_id, destination_id, attempts
    )
    INSERT INTO relay.attempts
        (delivery_id, event_seq, tenant_id, destination_id, number, status, error_code,
         error_detail, duration_ms, started_at)
    SELECT id, event_seq, tenant_id, destination_id, attempts, 'failed', :code, :detail, 0,
           now()
    FROM ended
    RETURNING delivery_id
""").bindparams(bindparam("token", type_=UUID(as_uuid=True)))

# Record a batch of outcomes in one statement. Every attempt becomes a row, even when
# the lease was lost meanwhile (the HTTP call did happen); the delivery's state changes
# only if we still hold it (claim token and attempt number match).
#
# Idempotent: when a commit's answer is lost, the recorder cannot tell whether the batch
# was written and writes it again. An attempt is known by its delivery, number and start
# time (the dispatcher's clock, microseconds, the same in every try of one batch); one
# that is already there is not inserted again, and a delivery already moved on is not
# touched (its claim token is gone, or its attempt number has moved on with a new claim
# by this same dispatcher). RETURNING names the attempts inserted now, so destination
# health counts each failure once.
#
# `status IS NOT DISTINCT FROM 'delivering'` is the same test as `=` (status is never
# NULL), written so that PostgreSQL cannot answer it from the partial indexes on
# 'delivering' rows. With `=`, the generic plan (from a prepared statement's sixth run)
# scanned every row in flight, all dispatchers', and for each of them every outcome of
# the batch: statistics read while few rows were in flight make that scan look like
# one row. Found by primary key instead, a batch of 200 took 12-20 ms with 2,000 rows in
# flight, against 185-305 ms.
RECORD_OUTCOMES = text(f"""
    WITH o AS (
        SELECT * FROM unnest(
            :delivery_id, :token, :event_seq, :tenant_id, :destination_id, :number,
            :attempt_status, :http_status, :error_code, :error_detail, :response_body,
            :response_headers, :duration_ms, :started_at, :next_status, :delay_seconds,
            :manual, :trace_id
        ) AS o(delivery_id, token, event_seq, tenant_id, destination_id, number,
               attempt_status, http_status, error_code, error_detail, response_body,
               response_headers, duration_ms, started_at, next_status, delay_seconds,
               manual, trace_id)
    ), held AS (
        -- The rows still ours, locked in key order first: the ends and the retries below
        -- are two passes, and lease upkeep locks the same rows in key order too (in two
        -- orders, they deadlocked). Each carries its outcome, so the passes below join
        -- only this (one row per delivery, found by primary key): joined to `o` again,
        -- which the generic plan takes for 10 rows, every row deleted or updated
        -- scanned the whole batch (500 x 500 comparisons, 140 ms of a 185 ms record).
        SELECT d.id, o.next_status, o.delay_seconds,
               CASE WHEN o.attempt_status = 'failed'
                    THEN COALESCE(o.error_code, 'http_' || o.http_status) END AS error
        FROM relay.deliveries_active d
        JOIN o ON d.id = o.delivery_id
        WHERE d.claim_token = o.token AND d.attempts = o.number
          AND d.status IS NOT DISTINCT FROM 'delivering'
        ORDER BY d.id
        FOR UPDATE OF d
    ), ended AS (
        DELETE FROM relay.deliveries_active d
        USING held h
        WHERE d.id = h.id AND h.next_status <> 'pending'
        RETURNING d.*, h.next_status, h.error
    ), finished AS (
        {_finish("ended", "next_status", last_error="error")}
    ), updated AS (
        UPDATE relay.deliveries_active d
        SET status = 'pending',
            -- An infinite delay: an ordered key's head that blocks it (never due).
            next_attempt_at = CASE WHEN h.delay_seconds = 'Infinity' THEN 'infinity'
                                   ELSE now() + make_interval(secs => h.delay_seconds) END,
            claim_token = NULL,
            lease_expires_at = NULL,
            last_error = h.error,
            updated_at = now()
        FROM held h
        WHERE d.id = h.id AND h.next_status = 'pending'
        RETURNING d.id, d.tenant_id, d.destination_id, d.status, d.next_attempt_at
    ), woken AS (
        -- Retries are due ahead of every cursor, unless their delay is shorter than
        -- this transaction: announced all the same.
        SELECT {announce("first_retry")}
        FROM (SELECT tenant_id, destination_id, min(next_attempt_at) AS first_retry
              FROM updated WHERE status = 'pending' AND next_attempt_at < 'infinity'
              GROUP BY tenant_id, destination_id) AS each_destination
    )
    INSERT INTO relay.attempts
        (delivery_id, event_seq, tenant_id, destination_id, number, status, http_status,
         error_code, error_detail, response_body, response_headers, duration_ms, started_at,
         manual, trace_id)
    SELECT o.delivery_id, o.event_seq, o.tenant_id, o.destination_id, o.number,
           o.attempt_status, o.http_status, o.error_code, o.error_detail, o.response_body,
           CAST(o.response_headers AS jsonb), o.duration_ms, o.started_at, o.manual,
           o.trace_id
    FROM o
    WHERE NOT EXISTS (
        -- A probe per outcome, by the attempts' index on delivery_id, in the slices
        -- written since the batch's first claim (a bound known before the statement runs:
        -- PostgreSQL does not prune by one that changes from row to row). OFFSET 0 keeps
        -- it a probe: as an anti join, the plan could hash every attempt written since.
        SELECT 1 FROM relay.attempts x
        WHERE x.delivery_id = o.delivery_id AND x.number = o.number
          AND x.started_at = o.started_at
          AND x.created_at >= :written_since AND x.created_at <= now()
        OFFSET 0)
      -- Always true; it is there to run woken (a SELECT CTE nothing reads is not run).
      AND (SELECT count(*) FROM woken) >= 0
    RETURNING delivery_id, number, id
""").bindparams(
    bindparam("delivery_id", type_=ARRAY(BigInteger)),
    bindparam("token", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("event_seq", type_=ARRAY(BigInteger)),
    bindparam("tenant_id", type_=ARRAY(Text)),
    bindparam("destination_id", type_=ARRAY(Text)),
    bindparam("number", type_=ARRAY(Integer)),
    bindparam("attempt_status", type_=ARRAY(Text)),
    bindparam("http_status", type_=ARRAY(Integer)),
    bindparam("error_code", type_=ARRAY(Text)),
    bindparam("error_detail", type_=ARRAY(Text)),
    bindparam("response_body", type_=ARRAY(Text)),
    bindparam("response_headers", type_=ARRAY(Text)),
    bindparam("duration_ms", type_=ARRAY(Integer)),
    bindparam("started_at", type_=ARRAY(TS)),
    bindparam("written_since", type_=TS),
    bindparam("next_status", type_=ARRAY(Text)),
    bindparam("delay_seconds", type_=ARRAY(Float)),
    bindparam("manual", type_=ARRAY(Boolean)),
    bindparam("trace_id", type_=ARRAY(Text)),
)

# Destination health: a success resets the count of consecutive failed attempts, each
# failure adds one. An attempt with a disable_reason (a webhook's 410 Gone) disables the
# destination at once; reaching :threshold
# (when > 0) disables it too. Rows are locked in key order so that dispatchers recording
# at the same time cannot deadlock; destinations with nothing to change are not touched.
UPDATE_HEALTH = text("""
    WITH h AS (
        SELECT * FROM unnest(CAST(:tenant_id AS text[]), CAST(:destination_id AS text[]),
                             CAST(:reset AS boolean[]), CAST(:failures AS int[]),
                             CAST(:disable_reason AS text[]), CAST(:slowed AS int[]),
                             CAST(:retry_after AS float8[]), CAST(:slowed_by AS text[]),
                             CAST(:recovered AS int[]))
            AS h(tenant_id, destination_id, reset, failures, disable_reason, slowed,
                 retry_after, slowed_by, recovered)
    ), locked AS (
        SELECT t.tenant_id, t.id, h.disable_reason AS disabled_by,
               t.disabled_at IS NULL AS was_enabled,
               t.consecutive_failures AS previous,
               CASE WHEN h.reset THEN h.failures
                    ELSE t.consecutive_failures + h.failures END AS failures,
               h.slowed, h.retry_after, h.slowed_by, h.recovered
        FROM relay.destinations t
        JOIN h ON h.tenant_id = t.tenant_id AND h.destination_id = t.id
        WHERE h.failures > 0 OR t.consecutive_failures <> 0 OR h.slowed > 0
           OR t.throttle < 1 OR t.throttled_until IS NOT NULL
        ORDER BY t.tenant_id, t.id
        FOR UPDATE OF t
    ), judged AS (
        SELECT locked.*,
               CASE WHEN disabled_by IS NOT NULL THEN disabled_by
                    WHEN :threshold > 0 AND failures >= :threshold
                        THEN failures || ' consecutive failed attempts'
               END AS disable_reason
        FROM locked
    )
    UPDATE relay.destinations t
    SET consecutive_failures = j.failures,
        -- Adaptive backoff (docs/sql.md): halved by a batch that says "slow down", down
        -- to :min_throttle; back up by :recover_step per healthy answer after it.
        throttle = CASE
            WHEN j.slowed > 0 THEN GREATEST(CAST(:min_throttle AS float8), t.throttle / 2)
            ELSE LEAST(1, t.throttle + CAST(:recover_step AS float8) * j.recovered) END,
        throttled_until = CASE
            WHEN j.slowed > 0 AND j.retry_after > 0
                THEN GREATEST(t.throttled_until, now() + make_interval(
                    secs => LEAST(j.retry_after, CAST(:max_pause AS float8))))
            WHEN t.throttled_until <= now() THEN NULL
            ELSE t.throttled_until END,
        throttle_reason = CASE
            WHEN j.slowed > 0 THEN j.slowed_by
            WHEN t.throttle + CAST(:recover_step AS float8) * j.recovered >= 1
                 AND COALESCE(t.throttled_until <= now(), true) THEN NULL
            ELSE t.throttle_reason END,
        disabled_at = CASE WHEN t.disabled_at IS NULL AND j.disable_reason IS NOT NULL
                           THEN now() ELSE t.disabled_at END,
        disabled_reason = CASE WHEN t.disabled_at IS NULL AND j.disable_reason IS NOT NULL
                               THEN j.disable_reason ELSE t.disabled_reason END,
        updated_at = now()
    FROM judged j
    WHERE t.tenant_id = j.tenant_id AND t.id = j.id
    RETURNING t.tenant_id, t.id, t.consecutive_failures, j.previous,
              j.was_enabled AND j.disable_reason IS NOT NULL AS disabled_now,
              t.disabled_at, t.disabled_reason
""")


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and this
# one is built for every delivery (25 fields). Never mutated.
@dataclass(slots=True)
class Claimed:
    """A delivery this dispatcher holds, with what it needs to send it."""

    id: int
    attempt: int
    token: uuid.UUID
    manual: bool
    tenant_id: str
    destination_id: str
    event_seq: int
    event_id: str
    topic: str
    # The bytes receivers get: the event's data, or its envelope (pod events).
    body: str
    metadata: str
    eligible_for_retry: bool
    # When the event was committed (for publish-to-delivery latency).
    published_at: datetime
    # When the claim took it, by the database's clock: its attempt rows are written later.
    claimed_at: datetime
    # The destination's type and its config and credentials (JSON objects of strings):
    # what its Publisher is made from (relay/delivery/). Webhooks keep theirs in the
    # columns below (url: NULL for other types).
    type: str
    config: str
    credentials: str
    url: str | None
    custom_headers: str
    secret: str | None
    previous_secret: str | None
    previous_secret_valid: bool
    # "standard" or "outpost"; None: the global delivery.webhook_mode.
    signature_mode: str | None
    timeout_seconds: float | None
    delivery_metadata: str
    # Its next_attempt_at when claimed: with its id, its place in its destination's queue.
    due_at: datetime | None = None
    # The publish span's W3C traceparent (relay/tracing.py), when it was traced.
    trace_context: str | None = None
    # Ordered delivery: the event's key at this destination (None: unordered), and
    # whether a head that finally fails blocks its key (else it is skipped).
    ordering_key: str | None = None
    ordering_blocks: bool = False
    # The event's `time` (the producer's, else its publish time) in seconds since the
    # epoch, as text (what S3 object keys are made of).
    event_time: str | None = None

    @property
    def position(self) -> Position | None:
        return None if self.due_at is None else (self.due_at, self.id)

    @property
    def destination(self) -> tuple[str, str]:
        return (self.tenant_id, self.destination_id)


def claim_parameters(
    plan: Sequence[Take], *, lease_seconds: float, token: uuid.UUID
) -> dict[str, Any]:
    """CLAIM's parameters (also what a benchmark EXPLAINs it with)."""
    return {
        "tenants": [t.destination[0] for t in plan],
        "destinations": [t.destination[1] for t in plan],
        "counts": [t.count for t in plan],
        "since_at": [None if t.since is None else t.since[0] for t in plan],
        "since_id": [None if t.since is None else t.since[1] for t in plan],
        "lease_seconds": lease_seconds,
        "token": token,
    }


# The dispatcher's hot statements also run on a plain asyncpg connection: no pool
# checkout, no greenlet hop, and a lone claim needs no BEGIN/COMMIT round trips (one
# statement is its own transaction). The SQL is the same text() statement, compiled once
# for asyncpg ($n parameters with their casts).
@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]


_COMPILED: dict[int, _Compiled] = {}

Connection: TypeAlias = AsyncConnection | asyncpg.Connection


def _compiled(statement: TextClause) -> _Compiled:
    found = _COMPILED.get(id(statement))
    if found is None:
        compiled = statement.compile(dialect=asyncpg_dialect())
        found = _Compiled(compiled.string, tuple(compiled.positiontup or ()))
        _COMPILED[id(statement)] = found
    return found


async def _fetch(
    conn: Connection, statement: TextClause, params: Mapping[str, Any]
) -> Sequence[Mapping[str, Any]]:
    """Run a statement on either kind of connection; its rows as mappings."""
    if isinstance(conn, asyncpg.Connection):
        compiled = _compiled(statement)
        rows: list[Mapping[str, Any]] = await conn.fetch(
            compiled.sql, *(params[name] for name in compiled.names)
        )
        return rows
    return list((await conn.execute(statement, params)).mappings())


async def claim(
    conn: Connection, plan: Sequence[Take], *, lease_seconds: float, token: uuid.UUID
) -> list[Claimed]:
    """Claim what ``plan`` asks for (relay/claiming.py); the rows, in no particular order,
    each with its ``position`` in its destination's queue."""
    if not plan:
        return []
    params = claim_parameters(plan, lease_seconds=lease_seconds, token=token)
    return [_claimed(r, token) for r in await _fetch(conn, CLAIM, params)]


# After CLAIM_LIMITED, in its transaction: which of the destinations still have rows
# due (their claim was held back by a limit, or another process holds their keys): the
# dispatcher asks them again soon, since no wake-up will say so.
STILL_DUE = text("""
    SELECT a.tenant_id, a.destination_id
    FROM unnest(CAST(:tenants AS text[]), CAST(:destinations AS text[]))
        AS a(tenant_id, destination_id)
    WHERE EXISTS (
        SELECT 1 FROM relay.deliveries_active d
        WHERE d.tenant_id = a.tenant_id AND d.destination_id = a.destination_id
          AND d.status = 'pending' AND d.next_attempt_at <= now())
""").bindparams(
    bindparam("tenants", type_=ARRAY(Text)),
    bindparam("destinations", type_=ARRAY(Text)),
)


async def claim_limited(
    conn: Connection,
    plan: Sequence[Take],
    *,
    lease_seconds: float,
    token: uuid.UUID,
    default_in_flight: int,
) -> tuple[list[Claimed], set[Destination]]:
    """Claim what ``plan`` asks for destinations under delivery control, within their
    rate, burst, in-flight cap and key order across all dispatchers: one transaction
    that takes their locks, then claims (see CLAIM_LIMITED). The rows, and the
    destinations that still have rows due."""
    if not plan:
        return [], set()
    params = claim_parameters(plan, lease_seconds=lease_seconds, token=token)
    params["default_in_flight"] = default_in_flight
    if isinstance(conn, asyncpg.Connection):
        async with conn.transaction():
            await _fetch(conn, LOCK_LIMITED, params)
            rows = await _fetch(conn, CLAIM_LIMITED, params)
            due = await _fetch(conn, STILL_DUE, params)
    else:
        async with conn.begin_nested() if conn.in_transaction() else conn.begin():
            await _fetch(conn, LOCK_LIMITED, params)
            rows = await _fetch(conn, CLAIM_LIMITED, params)
            due = await _fetch(conn, STILL_DUE, params)
    still = {(r["tenant_id"], r["destination_id"]) for r in due}
    return [_claimed(r, token) for r in rows], still


@dataclass(frozen=True, slots=True)
class Due:
    """A destination with due rows, as the periodic search finds it."""

    destination: Destination
    # A cursor just before its first due row.
    position: Position
    # Under delivery control: claimed with claim_limited.
    controlled: bool
    # Its rate now (deliveries a second, adaptive backoff applied), if it has one, and
    # its burst (the most its token bucket holds).
    rate: float | None
    burst: int | None


async def search_due(conn: Connection, cursors: Mapping[Destination, Position]) -> list[Due]:
    """Enabled destinations with rows due past their cursor, each with a cursor just
    before the first of them and whether it is under delivery control."""
    rows = await _fetch(
        conn,
        FIND_DUE,
        {
            "tenants": [t for t, _ in cursors],
            "destinations": [d for _, d in cursors],
            "since_at": [at for at, _ in cursors.values()],
            "since_id": [id for _, id in cursors.values()],
        },
    )
    return [
        Due(
            (r["tenant_id"], r["destination_id"]),
            (r["next_attempt_at"], r["id"] - 1),
            bool(r["controlled"]),
            r["rate"],
            r["burst"],
        )
        for r in rows
    ]


async def find_due(
    conn: Connection, cursors: Mapping[Destination, Position]
) -> list[tuple[Destination, Position]]:
    """Enabled destinations with rows due past their cursor, each with a cursor just
    before the first of them."""
    return [(d.destination, d.position) for d in await search_due(conn, cursors)]


async def claim_due(
    conn: Connection,
    *,
    limit: int,
    lease_seconds: float,
    token: uuid.UUID,
    per_destination: int = 10_000,
    in_flight: Mapping[Destination, int] | None = None,
) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries, at most ``per_destination`` in flight for any
    destination counting its ``in_flight`` ones: one search, one claim, from each
    destination's head. For tools and tests; the dispatcher keeps cursors instead."""
    claims = Claims(per_destination=per_destination)
    found = await search_due(conn, {})
    claims.found((d.destination, d.position) for d in found)
    controlled = {d.destination for d in found if d.controlled}
    plan = claims.plan(in_flight or {}, limit)
    free = [t for t in plan if t.destination not in controlled]
    held = [t for t in plan if t.destination in controlled]
    limited, _ = await claim_limited(
        conn, held, lease_seconds=lease_seconds, token=token, default_in_flight=per_destination
    )
    return await claim(conn, free, lease_seconds=lease_seconds, token=token) + limited


def _claimed(r: Mapping[str, Any], token: uuid.UUID) -> Claimed:
    return Claimed(
        id=r["id"],
        attempt=r["attempts"],
        token=token,
        manual=r["manual"],
        tenant_id=r["tenant_id"],
        destination_id=r["destination_id"],
        event_seq=r["event_seq"],
        event_id=r["event_id"],
        topic=r["topic"],
        body=r["body"],
        metadata=r["metadata"],
        eligible_for_retry=r["eligible_for_retry"],
        published_at=r["published_at"],
        claimed_at=r["claimed_at"],
        type=r["type"],
        config=r["config"],
        credentials=r["credentials"],
        url=r["url"],
        custom_headers=r["custom_headers"],
        secret=r["secret"],
        previous_secret=r["previous_secret"],
        previous_secret_valid=bool(r["previous_secret_valid"]),
        signature_mode=r["signature_mode"],
        timeout_seconds=r["timeout_seconds"],
        delivery_metadata=r["delivery_metadata"],
        due_at=r.get("due_at"),
        trace_context=r["trace_context"],
        ordering_key=r["ordering_key"],
        ordering_blocks=bool(r["ordering_blocks"]),
        event_time=r["event_time"],
    )


async def claimed_ids(conn: Connection, token: uuid.UUID, *, exclude: Sequence[int]) -> list[int]:
    """Rows this dispatcher (``token``) has claimed and does not hold."""
    rows = await _fetch(conn, CLAIMED_IDS, {"token": token, "held": list(exclude)})
    return [r["id"] for r in rows]


async def due_ids(conn: Connection, plan: Sequence[Take]) -> list[int]:
    """The pending deliveries a claim with this plan would look at first."""
    params = claim_parameters(plan, lease_seconds=0, token=uuid.UUID(int=0))
    return [r["id"] for r in await _fetch(conn, DUE_IDS, params)]


async def read_one(conn: Connection, id: int, token: uuid.UUID) -> Claimed | None:
    """One delivery read alone, as a claim returns it (None if it is gone). Raises
    whatever reading it raises: that is what this is for."""
    rows = await _fetch(conn, READ_ONE, {"id": id})
    return _claimed(rows[0], token) if rows else None


async def quarantine(conn: Connection, id: int, token: uuid.UUID, *, code: str, detail: str) -> int:
    """End a delivery relay cannot process (pending, or claimed by ``token``): failed,
    with an attempt row; 1 if it was ended here."""
    rows = await _fetch(
        conn, QUARANTINE, {"id": id, "token": token, "code": code, "detail": detail}
    )
    return len(rows)


async def extend_leases(
    conn: AsyncConnection, ids: Sequence[int], token: uuid.UUID, lease_seconds: float
) -> int:
    """Push the lease of rows we still hold; the number still held."""
    if not ids:
        return 0
    result = await conn.execute(
        EXTEND_LEASES, {"ids": list(ids), "token": token, "lease_seconds": lease_seconds}
    )
    return int(result.rowcount)


async def release_expired(conn: AsyncConnection, limit: int = 1000) -> int:
    """Return rows whose lease ran out to pending, with a ``lease_expired`` attempt each."""
    result = await conn.execute(
        RELEASE_EXPIRED, {"limit": limit, "code": "lease_expired", "detail": LEASE_EXPIRED_DETAIL}
    )
    return await _given_back(conn, len(result.all()))


async def release_interrupted(conn: AsyncConnection, ids: Sequence[int], token: uuid.UUID) -> int:
    """Return rows we hold whose try was cut short (shutdown) to pending, with an
    ``interrupted`` attempt each; how many."""
    if not ids:
        return 0
    result = await conn.execute(
        RELEASE_INTERRUPTED,
        {"ids": list(ids), "token": token, "code": "interrupted", "detail": INTERRUPTED_DETAIL},
    )
    return await _given_back(conn, len(result.all()))


async def give_back_unsent(
    conn: AsyncConnection, claimed: Sequence[Claimed], token: uuid.UUID
) -> int:
    """Return rows we claimed and never sent to pending, untried; how many."""
    if not claimed:
        return 0
    result = await conn.execute(
        GIVE_BACK_UNSENT,
        {
            "ids": [c.id for c in claimed],
            "manual": [c.id for c in claimed if c.manual],
            "token": token,
        },
    )
    return await _given_back(conn, int(result.rowcount))


async def _given_back(conn: AsyncConnection, released: int) -> int:
    """Rows back to pending, now(): behind dispatchers' cursors, maybe. Wake them all."""
    if released:
        await conn.execute(NOTIFY)
    return released


@dataclass(slots=True)  # one per attempt: not frozen, as Claimed
class Recorded:
    """An attempt's outcome and the delivery's next state, ready to be written."""

    claimed: Claimed
    attempt_status: str  # success | failed
    http_status: int | None
    error_code: str | None
    error_detail: str | None
    response_body: str | None
    duration_ms: int
    started_at: datetime
    next_status: str  # delivered | pending | failed
    delay_seconds: float
    response_headers: Mapping[str, str] | None = None
    # The answer disables the destination at once (a webhook's 410 Gone), saying why.
    disable_reason: str | None = None
    # The attempt span's trace id (hex), when the dispatcher traces.
    trace_id: str | None = None
    # Seconds the receiver asked for (Retry-After), when it said so.
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class HealthChange:
    """What a batch of attempts says about one destination."""

    tenant_id: str
    destination_id: str
    # A success in the batch: the count restarts from the failures after the last one.
    reset: bool
    failures: int
    # The batch's first attempt that disables the destination at once says why.
    disable_reason: str | None
    # Adaptive backoff: answers that say "slow down" (429, 503, a timeout), the longest
    # Retry-After among them and what the last one was; the successes after the last.
    slowed: int = 0
    retry_after: float | None = None
    slowed_by: str | None = None
    recovered: int = 0


@dataclass(frozen=True, slots=True)
class Disabled:
    tenant_id: str
    destination_id: str
    reason: str


# Answers that slow the whole destination down (adaptive backoff).
SLOW_DOWN_STATUSES = frozenset({429, 503})
# A broker's "too many requests" (relay/delivery/base.py THROTTLED): taken as a 429.
PAUSE_ERRORS = frozenset({"throttled"})
SLOW_DOWN_ERRORS = frozenset({"timeout"}) | PAUSE_ERRORS


def slows_down(http_status: int | None, error_code: str | None) -> bool:
    """A 429, a 503, a broker's throttling or a timeout: the receiver is overwhelmed. Pure."""
    return http_status in SLOW_DOWN_STATUSES or error_code in SLOW_DOWN_ERRORS


def pauses(http_status: int | None, error_code: str | None) -> bool:
    """A 429, a 503 or a broker's throttling: the destination gets nothing for a while
    (its Retry-After, else PAUSE_SECONDS); a timeout took its time already. Pure."""
    return http_status in SLOW_DOWN_STATUSES or error_code in PAUSE_ERRORS


def _slowed_by(r: Recorded) -> str:
    if r.http_status is None and r.error_code in PAUSE_ERRORS:
        return f"the receiver refused: too many requests ({r.error_code})"
    if r.http_status is None:
        return f"the receiver did not answer in time ({r.error_code})"
    said = "" if r.retry_after is None else f" with Retry-After: {r.retry_after:g}"
    return f"the receiver answered {r.http_status}{said}"


@dataclass(frozen=True, slots=True)
class HealthRow:
    """What a batch did to one destination's health."""

    previous: int
    failures: int
    disabled_now: bool
    disabled_at: datetime | None


class AfterRecord(Protocol):
    """Called in the recording transaction once a batch is written (operator events:
    relay/db/operator_events.py)."""

    async def __call__(
        self,
        conn: Connection,
        batch: Sequence[Recorded],
        attempt_ids: Mapping[tuple[int, int], int],
        health_rows: Sequence[Mapping[str, Any]],
    ) -> None: ...


def health_by_destination(
    rows: Sequence[Mapping[str, Any]],
) -> dict[tuple[str, str], HealthRow]:
    """UPDATE_HEALTH's rows (what record_outcomes passes its ``after``), by destination."""
    return {
        (r["tenant_id"], r["id"]): HealthRow(
            r["previous"], r["consecutive_failures"], r["disabled_now"], r["disabled_at"]
        )
        for r in rows
    }


def health_changes(batch: Sequence[Recorded]) -> list[HealthChange]:
    """Fold a batch of attempts (in the order they finished) per destination. Pure."""
    # Per destination: reset, failures, disable_reason, slowed, retry_after, slowed_by,
    # recovered
    # (a list, not a dataclass copied per attempt: this runs for every delivery).
    state: dict[tuple[str, str], list[Any]] = {}
    for r in batch:
        h = state.get(r.claimed.destination)
        if h is None:
            h = state[r.claimed.destination] = [False, 0, None, 0, None, None, 0]
        if r.attempt_status == "success":
            h[0], h[1] = True, 0
            h[6] += 1
            continue
        h[1] += 1
        h[2] = h[2] or r.disable_reason
        if r.http_status in SLOW_DOWN_STATUSES or r.error_code in SLOW_DOWN_ERRORS:
            h[3] += 1
            if r.retry_after is not None:
                h[4] = max(h[4] or 0.0, r.retry_after)
            elif pauses(r.http_status, r.error_code):  # a 429 or 503 without one, too
                h[4] = max(h[4] or 0.0, PAUSE_SECONDS)
            h[5] = _slowed_by(r)
            h[6] = 0
    return [HealthChange(t, d, *h) for (t, d), h in sorted(state.items())]


# Adaptive backoff: a batch that says "slow down" halves a destination's throttle (its
# rate and in-flight cap, as a fraction), not below MIN_THROTTLE; a 429 or 503 also
# pauses it for the longest Retry-After (PAUSE_SECONDS without one, at most
# retry.max_retry_after_seconds); a timeout does not (it took its time already). Each
# healthy answer after that gives back RECOVER_STEP.
MIN_THROTTLE = 0.05
RECOVER_STEP = 0.05
PAUSE_SECONDS = 1.0


def health_params(
    changes: Sequence[HealthChange], auto_disable_after: int, max_pause: float
) -> dict[str, Any]:
    """UPDATE_HEALTH's parameters for a batch's health changes."""
    return {
        "tenant_id": [c.tenant_id for c in changes],
        "destination_id": [c.destination_id for c in changes],
        "reset": [c.reset for c in changes],
        "failures": [c.failures for c in changes],
        "disable_reason": [c.disable_reason for c in changes],
        "slowed": [c.slowed for c in changes],
        "retry_after": [c.retry_after for c in changes],
        "slowed_by": [c.slowed_by for c in changes],
        "recovered": [c.recovered for c in changes],
        "threshold": auto_disable_after,
        "min_throttle": MIN_THROTTLE,
        "recover_step": RECOVER_STEP,
        "max_pause": max_pause,
    }


async def record_outcomes(
    conn: Connection,
    batch: Sequence[Recorded],
    *,
    auto_disable_after: int = 0,
    max_pause: float = 3600.0,
    after: AfterRecord | None = None,
) -> list[Disabled]:
    """Write a batch of attempts and delivery states, then update destination health,
    then call ``after`` (in the same transaction, if the caller holds one).

    Returns the destinations this batch disabled (410 Gone, or too many failures)."""
    if not batch:
        return []
    columns: dict[str, Any] = {
        "delivery_id": [r.claimed.id for r in batch],
        "token": [r.claimed.token for r in batch],
        "event_seq": [r.claimed.event_seq for r in batch],
        "tenant_id": [r.claimed.tenant_id for r in batch],
        "destination_id": [r.claimed.destination_id for r in batch],
        "number": [r.claimed.attempt for r in batch],
        "attempt_status": [r.attempt_status for r in batch],
        "http_status": [r.http_status for r in batch],
        "error_code": [r.error_code for r in batch],
        "error_detail": [r.error_detail for r in batch],
        "response_body": [r.response_body for r in batch],
        "response_headers": [
            None if r.response_headers is None else orjson.dumps(r.response_headers).decode()
            for r in batch
        ],
        "duration_ms": [r.duration_ms for r in batch],
        "started_at": [r.started_at for r in batch],
        "next_status": [r.next_status for r in batch],
        "delay_seconds": [r.delay_seconds for r in batch],
        "manual": [r.claimed.manual for r in batch],
        "trace_id": [r.trace_id for r in batch],
        # Attempts are written after their claim, by the same (the database's) clock.
        "written_since": min(r.claimed.claimed_at for r in batch),
    }
    inserted = {
        (r["delivery_id"], r["number"]): r["id"]
        for r in await _fetch(conn, RECORD_OUTCOMES, columns)
    }
    if len(inserted) < len(batch):  # some were written before (a retried batch)
        batch = [r for r in batch if (r.claimed.id, r.claimed.attempt) in inserted]
    changes = health_changes(batch)
    rows: Sequence[Mapping[str, Any]] = []
    if changes:
        rows = await _fetch(
            conn, UPDATE_HEALTH, health_params(changes, auto_disable_after, max_pause)
        )
    if after is not None and batch:
        await after(conn, batch, inserted, rows)
    return [
        Disabled(r["tenant_id"], r["id"], r["disabled_reason"]) for r in rows if r["disabled_now"]
    ]
