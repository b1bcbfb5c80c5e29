"""What idempotent recording costs per outcome: relay's record_outcomes (idempotent since
f257dd1) against the statement and function before it (8a26928), in the same run.

    .venv/bin/python bench/record_cost.py            # full: 2-4 minutes on 2 cores
    .venv/bin/python bench/record_cost.py --quick    # smoke run: tiny sizes (seconds)
    .venv/bin/python bench/record_cost.py --history 1000000 --rounds 100

What it measures. A throwaway PostgreSQL (tests/support/pgserver.py, bench/run's settings,
plus pg_stat_statements) holds two databases migrated by relay's migrations, each with
one tenant and four destinations and a backlog published through relay.publish's
publish_many: "empty", whose relay.attempts starts empty (it grows by the rows this run
writes, some 80,000), and "history", whose relay.attempts starts with --history rows
(2,000,000; INSERT ... SELECT generate_series, of older deliveries, then VACUUM ANALYZE),
started and written over the last 30 days (created_at, relay.attempts' partition key, is
when they started: they are in the legacy slice, which migration 0008 ends at the time it
ran, so the new statement's NOT EXISTS, which looks at the slices since an hour before the
outcome started, still probes them).
Each round claims 200 deliveries with outbox.claim_due (the recorder's typical batch;
RECORD_BATCH is at most 500), builds their outcomes with the dispatcher's decide() (9 in 10
answered 200, 1 in 10 answered 500 and set to retry) and writes them in one transaction
on a raw asyncpg connection, as the dispatcher's recorder does, with either

    new: outbox.record_outcomes as it is in the working tree (an index probe of
         relay.attempts per outcome for the NOT EXISTS, RETURNING, health from the rows
         inserted), or
    old: the baseline, RECORD_OUTCOMES and record_outcomes copied below from 8a26928.

Per round both databases are visited and both variants run, old and new alternating
which goes first, so drift hits both. The first --warmup rounds are not counted (a
prepared statement is planned generically from its sixth run on, as in a long-running
dispatcher). Per database and variant it prints the batch's time from BEGIN to the end
of record_outcomes (both statements: the record and destination health) and to the end
of COMMIT, as median and p90 over the rounds in ms, and per outcome in µs; the ratio
new/old of the medians with a bootstrap 95% interval, the per-round paired ratios and
how many rounds each variant won (with a sign test); from pg_stat_statements, the record
statement's server-side time, shared buffers touched and WAL records per outcome (the
figures least moved by other load on the machine); whether the recorder's connection
ran the statements with generic plans, and, through auto_explain, how the new statement
read relay.attempts for one more batch. Last, the retry case: a batch written and
committed, then written again (same connection), as after a lost COMMIT answer; it
prints the second write's time and how many attempt rows it added (new: none; old: the
batch again).

With --baseline no-rollup, the baseline is relay's record_outcomes as it is, on a twin
of each database whose relay.attempts has no rollup triggers (migration 0014's
relay.attempt_hours, dropped after migrating): what counting attempts per hour adds to
recording, in the same run. The twins are seeded alike; "old" claims and writes in the
twin, "new" in the database with the triggers. pg_stat_statements then tracks nested
statements too, and the trigger's upsert is reported on its own.

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import run_all as bench
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.types import BigInteger, Boolean, Float, Integer, Text

from relay.config import DeliverySettings, RetrySettings
from relay.db import outbox
from relay.db.tables import TS
from relay.delivery.base import Outcome
from relay.dispatcher import decide
from relay.publish import Event, publish_many
from relay.retry import RetryPolicy
from tests.support.pgserver import PgServer

ROOT = Path(__file__).resolve().parents[1]
BATCH = 200
TENANT = "bench"
DESTINATIONS = ("d1", "d2", "d3", "d4")
# What bench/receiver.py's aiohttp answer brings back (relay keeps body and headers).
OK_HEADERS = {
    "content-type": "text/plain; charset=utf-8",
    "content-length": "2",
    "date": "Sun, 06 Dec 2026 12:00:00 GMT",
    "server": "Python/3.11 aiohttp/3.11.18",
}
FAIL_EVERY = 10  # one outcome in ten fails (500), and is set to retry

Record = Callable[..., Awaitable[list[outbox.Disabled]]]


# --- BASELINE: relay/db/outbox.py at 8a26928, before f257dd1 made recording idempotent --------
# Copied verbatim (RECORD_OUTCOMES and record_outcomes); UPDATE_HEALTH, health_changes and
# _fetch did not change in f257dd1, so the baseline uses relay's. Not relay's code any more:
# it is here only to be timed against the current statement in the same run.

OLD_RECORD_OUTCOMES = text("""
    WITH o AS (
        SELECT * FROM unnest(
            :delivery_id, :token, :event_seq, :tenant_id, :destination_id, :number,
            :attempt_status, :http_status, :error_code, :error_detail, :response_body,
            :response_headers, :duration_ms, :started_at, :next_status, :delay_seconds,
            :manual
        ) AS o(delivery_id, token, event_seq, tenant_id, destination_id, number,
               attempt_status, http_status, error_code, error_detail, response_body,
               response_headers, duration_ms, started_at, next_status, delay_seconds,
               manual)
    ), updated AS (
        UPDATE relay.deliveries d
        SET status = o.next_status,
            next_attempt_at = CASE WHEN o.next_status = 'pending'
                                   THEN now() + make_interval(secs => o.delay_seconds)
                                   ELSE d.next_attempt_at END,
            claim_token = NULL,
            lease_expires_at = NULL,
            last_error = CASE WHEN o.attempt_status = 'failed'
                              THEN COALESCE(o.error_code, 'http_' || o.http_status) END,
            updated_at = now()
        FROM o
        WHERE d.id = o.delivery_id AND d.claim_token = o.token
          AND d.status IS NOT DISTINCT FROM 'delivering'
        RETURNING d.id
    )
    INSERT INTO relay.attempts
        (delivery_id, event_seq, tenant_id, destination_id, number, status, http_status,
         error_code, error_detail, response_body, response_headers, duration_ms, started_at,
         manual)
    SELECT o.delivery_id, o.event_seq, o.tenant_id, o.destination_id, o.number,
           o.attempt_status, o.http_status, o.error_code, o.error_detail, o.response_body,
           CAST(o.response_headers AS jsonb), o.duration_ms, o.started_at, o.manual
    FROM o
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
    bindparam("next_status", type_=ARRAY(Text)),
    bindparam("delay_seconds", type_=ARRAY(Float)),
    bindparam("manual", type_=ARRAY(Boolean)),
)


async def old_record_outcomes(
    conn: outbox.Connection, batch: Sequence[outbox.Recorded], *, auto_disable_after: int = 0
) -> list[outbox.Disabled]:
    """BASELINE (8a26928): write a batch of attempts and delivery states, then update
    destination health. Not idempotent: writing a batch twice adds its attempts twice."""
    if not batch:
        return []
    columns: dict[str, list[Any]] = {
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
    }
    await outbox._fetch(conn, OLD_RECORD_OUTCOMES, columns)
    changes = outbox.health_changes(batch)
    rows = await outbox._fetch(
        conn, outbox.UPDATE_HEALTH, outbox.health_params(changes, auto_disable_after, 3600.0)
    )
    return [
        outbox.Disabled(r["tenant_id"], r["id"], r["disabled_reason"])
        for r in rows
        if r["disabled_now"]
    ]


# --- end of the baseline -----------------------------------------------------------------

VARIANTS: dict[str, Record] = {"new": outbox.record_outcomes, "old": old_record_outcomes}

# --baseline no-rollup: drop what migration 0014 added to relay.attempts' writes.
ROLLUP_TRIGGERS = (
    "attempt_hours_insert",
    "attempt_hours_update",
    "attempt_hours_delete",
    "attempt_hours_truncate",
)


@dataclass
class Db:
    name: str
    url: str
    history: int
    # --baseline no-rollup: the twin without the rollup's triggers, where "old" runs.
    twin_url: str | None = None
    claim: asyncpg.Connection = field(init=False)
    record: asyncpg.Connection = field(init=False)
    old_claim: asyncpg.Connection = field(init=False)
    old_record: asyncpg.Connection = field(init=False)
    # variant -> [(to the end of record_outcomes, to the end of COMMIT)] in seconds
    times: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {name: [] for name in VARIANTS}
    )


# --- seeding -----------------------------------------------------------------------------


async def seed(url: str, history: int, pending: int) -> dict[str, float]:
    """The tenant and its destinations, ``history`` attempt rows of older deliveries and a
    backlog of at least ``pending`` due deliveries published by relay's publish_many."""
    taken: dict[str, float] = {}
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("INSERT INTO relay.tenants (id) VALUES ($1)", TENANT)
        await conn.executemany(
            "INSERT INTO relay.destinations (tenant_id, id, topics, url, secret) "
            "VALUES ($1, $2, '{*}', $3, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')",
            [(TENANT, d, f"http://127.0.0.1:9/{d}") for d in DESTINATIONS],
        )
        # Older deliveries 1..history/2, two attempts each (a failure, then a success),
        # over 30 days. New deliveries get ids above them in both databases, as they would.
        older = history // 2 + 1
        started = time.perf_counter()
        if history:
            await conn.execute(
                f"""
                INSERT INTO relay.attempts
                    (delivery_id, event_seq, tenant_id, destination_id, number, status,
                     http_status, response_body, response_headers, duration_ms, started_at,
                     created_at)
                SELECT 1 + (g - 1) / 2, 1 + (g - 1) / 2, '{TENANT}',
                       'd' || (1 + ((g - 1) / 2) % {len(DESTINATIONS)}), 1 + (g - 1) % 2,
                       CASE WHEN g % 2 = 1 THEN 'failed' ELSE 'success' END,
                       CASE WHEN g % 2 = 1 THEN 503 ELSE 200 END,
                       CASE WHEN g % 2 = 1 THEN 'unavailable' ELSE 'ok' END,
                       $1::jsonb, 3 + g % 40, t, t
                FROM generate_series(1, {history}) g,
                     LATERAL (SELECT now() - interval '30 days' * (1 - g::float8 / {history})) s(t)
                """,
                orjson.dumps(OK_HEADERS).decode(),
            )
        # relay.delivery_ids gives deliveries their ids (no identity column since 0008);
        # events.seq encodes the minute it was written, so it is above the old ones anyway.
        await conn.execute("SELECT setval('relay.delivery_ids', $1, false)", older)
        taken["history"] = time.perf_counter() - started

        started = time.perf_counter()
        pad = "x" * bench.PAYLOAD_PAD
        events = -(-pending // len(DESTINATIONS))
        for first in range(0, events, 200):
            chunk = [
                Event(TENANT, "order.created", orjson.dumps({"n": n, "pad": pad}))
                for n in range(first, min(events, first + 200))
            ]
            for result in await publish_many(conn, chunk):
                if isinstance(result, Exception):
                    raise result
        taken["publish"] = time.perf_counter() - started

        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE relay.events, relay.deliveries, relay.attempts")
        await conn.execute("CHECKPOINT")
        taken["vacuum"] = time.perf_counter() - started
    finally:
        await conn.close()
    return taken


# --- a round ---------------------------------------------------------------------------------

POLICY = RetryPolicy.from_settings(RetrySettings())
AUTO_DISABLE = DeliverySettings().auto_disable_after_failures


async def claim_batch(db: Db, variant: str = "new") -> list[outbox.Recorded]:
    """Claim BATCH due deliveries (committed, as the dispatcher's claim is) and decide
    their outcomes as the dispatcher would after sending them."""
    conn = db.old_claim if variant == "old" else db.claim
    claimed = await outbox.claim_due(conn, limit=BATCH, lease_seconds=600, token=uuid.uuid4())
    if len(claimed) < BATCH:
        raise RuntimeError(f"{db.name}: the backlog ran out ({len(claimed)} claimed)")
    now = datetime.now(UTC)
    batch = []
    for i, c in enumerate(claimed):
        started_at = now - timedelta(milliseconds=20 + i % 50)
        if i % FAIL_EVERY == FAIL_EVERY - 1:
            outcome = Outcome(
                False,
                started_at,
                12,
                # A 500, not a 503: a 503 would slow the destination down (adaptive
                # backoff) and the claims here would find it paused.
                http_status=500,
                response_body="unavailable",
                response_headers={**OK_HEADERS, "content-length": "11"},
            )
        else:
            outcome = Outcome(
                True,
                started_at,
                4,
                http_status=200,
                response_body="ok",
                response_headers=OK_HEADERS,
            )
        batch.append(decide(c, outcome, POLICY))
    return batch


async def write(db: Db, variant: str, batch: list[outbox.Recorded]) -> tuple[float, float]:
    """One transaction, as the recorder writes it: (to the end of record_outcomes, to the
    end of COMMIT), seconds from before BEGIN."""
    conn = db.old_record if variant == "old" else db.record
    tx = conn.transaction()
    start = time.perf_counter()
    await tx.start()
    try:
        await VARIANTS[variant](conn, batch, auto_disable_after=AUTO_DISABLE)
    except BaseException:
        await tx.rollback()
        raise
    recorded = time.perf_counter()
    await tx.commit()
    return recorded - start, time.perf_counter() - start


async def attempt_rows(db: Db, batch: list[outbox.Recorded], variant: str = "new") -> int:
    return int(
        await (db.old_claim if variant == "old" else db.claim).fetchval(
            "SELECT count(*) FROM relay.attempts WHERE delivery_id = ANY($1::bigint[])",
            [r.claimed.id for r in batch],
        )
    )


# --- figures ---------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bootstrap_ratio(new: list[float], old: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95% interval of median(new) / median(old), resampling each side's rounds."""
    rng = random.Random(7)
    ratios = sorted(
        statistics.median(rng.choices(new, k=len(new)))
        / statistics.median(rng.choices(old, k=len(old)))
        for _ in range(rounds)
    )
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


def sign_test(faster: int, rounds: int) -> float:
    """Two-sided binomial p of ``faster`` wins in ``rounds`` if either variant were as
    likely to win a round."""
    tail = min(faster, rounds - faster)
    return min(1.0, 2 * sum(math.comb(rounds, k) for k in range(tail + 1)) / float(2**rounds))


def report(db: Db) -> list[str]:
    lines = [f"{db.name} ({db.history:,} attempt rows of history at the start)"]
    for part, label in ((0, "BEGIN..record_outcomes"), (1, "BEGIN..COMMIT")):
        medians = {}
        for variant in VARIANTS:
            ms = [t[part] * 1000 for t in db.times[variant]]
            medians[variant] = statistics.median(ms)
            lines.append(
                f"  {variant} {label:<23} median {medians[variant]:6.2f} ms  "
                f"p90 {pct(ms, 0.9):6.2f} ms  {medians[variant] * 1000 / BATCH:5.1f} µs/outcome"
            )
        new = [t[part] for t in db.times["new"]]
        old = [t[part] for t in db.times["old"]]
        low, high = bootstrap_ratio(new, old)
        paired = [n / o for n, o in zip(new, old, strict=True)]
        extra = (medians["new"] - medians["old"]) * 1000 / BATCH
        noise = "within noise" if low <= 1 <= high else "outside noise"
        faster = sum(p < 1 for p in paired)
        lines.append(
            f"  new/old {label}: {medians['new'] / medians['old']:.3f}x "
            f"(95% bootstrap {low:.3f}-{high:.3f}x, {noise}); {extra:+.1f} µs/outcome; "
            f"paired rounds p10/p50/p90 {pct(paired, 0.1):.2f}/{statistics.median(paired):.2f}/"
            f"{pct(paired, 0.9):.2f}x; new faster in {faster} of {len(paired)} rounds "
            f"(sign test p={sign_test(faster, len(paired)):.3f})"
        )
    return lines


STATEMENT_STATS = """
    SELECT query LIKE '%NOT EXISTS%' AS new, calls, total_exec_time, wal_records,
           shared_blks_hit + shared_blks_read + shared_blks_dirtied AS blocks,
           query LIKE '%relay.attempt_hours%' AS rollup
    FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((query LIKE '%INSERT INTO relay.attempts%' AND query LIKE '%unnest(%')
           OR query LIKE '%INSERT INTO relay.attempt_hours%')
      AND query NOT LIKE '%pg_stat_statements%'
"""


async def statement_stats(db: Db) -> list[str]:
    """pg_stat_statements' view of the record statements since the warm-up (and, with a
    twin, of the rollup trigger's upsert, nested in the new one's)."""
    if db.twin_url is None:
        rows = [(None, r) for r in await db.claim.fetch(STATEMENT_STATS)]
    else:
        rows = [
            (variant, r)
            for variant, conn in (("new", db.claim), ("old", db.old_claim))
            for r in await conn.fetch(STATEMENT_STATS)
        ]
    lines = []
    for variant, r in sorted(rows, key=lambda vr: (vr[1]["rollup"], vr[0] != "new")):
        outcomes = r["calls"] * BATCH
        if r["rollup"]:
            label = "rollup trigger's upsert (part of the new record statement's time)"
        else:
            label = f"{variant or ('new' if r['new'] else 'old')} record statement"
        lines.append(
            f"  {label} in PostgreSQL: "
            f"{r['total_exec_time'] / r['calls']:.2f} ms/batch, "
            f"{r['total_exec_time'] * 1000 / outcomes:.1f} µs/outcome, "
            f"{r['blocks'] / outcomes:.1f} buffers/outcome, "
            f"{r['wal_records'] / outcomes:.2f} WAL records/outcome ({r['calls']} batches)"
        )
    return lines


async def prepared_plans(db: Db) -> list[str]:
    """How the recorder's connection ran its two prepared record statements."""
    rows = await db.record.fetch(
        """
        SELECT statement LIKE '%NOT EXISTS%' AS new, generic_plans, custom_plans
        FROM pg_prepared_statements
        WHERE statement LIKE '%INSERT INTO relay.attempts%' AND statement LIKE '%unnest(%'
          AND statement NOT LIKE '%pg_prepared_statements%'
        """
    )
    return [
        f"  {'new' if r['new'] else 'old'} record statement: {r['generic_plans']} generic and "
        f"{r['custom_plans']} custom plans on the recorder's connection"
        for r in sorted(rows, key=lambda r: not r["new"])
    ]


async def executed_plan(db: Db, log: Path) -> list[str]:
    """The new statement's plan as the recorder's connection ran it (auto_explain, for
    one more batch): how the NOT EXISTS reads relay.attempts."""
    for setting in (
        "LOAD 'auto_explain'",
        "SET auto_explain.log_analyze = on",
        "SET auto_explain.log_buffers = on",
        "SET auto_explain.log_min_duration = 0",
    ):
        await db.record.execute(setting)
    offset = await asyncio.to_thread(lambda: log.stat().st_size)
    try:
        await write(db, "new", await claim_batch(db))
    finally:
        await db.record.execute("SET auto_explain.log_min_duration = -1")
    await asyncio.sleep(0.2)  # the server's log is written by another process
    logged = await asyncio.to_thread(read_from, log, offset)
    # The probe: a subplan per outcome since 608f023 (an anti join before it).
    start = next(
        (n for n, line in enumerate(logged) if "SubPlan" in line or "Anti Join" in line), None
    )
    if start is None:
        return ["  (no probe of relay.attempts in the logged plan of the new statement)"]
    plan: list[str] = []
    for line in logged[start:]:
        if "LOG:" in line or len(plan) == 18:
            break
        plan.append("  " + line.lstrip("\t").rstrip())
    return plan


def read_from(path: Path, offset: int) -> list[str]:
    with open(path, errors="replace") as f:
        f.seek(offset)
        return f.read().splitlines()


async def retry_case(db: Db) -> list[str]:
    """A batch written and committed, then written again: a lost COMMIT answer."""
    lines = []
    for variant in VARIANTS:
        batch = await claim_batch(db, variant)
        await write(db, variant, batch)
        first = await attempt_rows(db, batch, variant)
        again = await write(db, variant, batch)
        second = await attempt_rows(db, batch, variant)
        lines.append(
            f"  {variant}: the same batch written again took {again[0] * 1000:.2f} ms "
            f"({again[0] * 1e6 / BATCH:.1f} µs/outcome; {again[1] * 1000:.2f} ms with COMMIT) "
            f"and added {second - first} attempt rows (the first write added {first})"
        )
    return lines


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"{os.cpu_count()} CPUs ({cpu}), load {' '.join(load)}"


def commit() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--", "relay/db/outbox.py")
    return git("rev-parse", "--short", "HEAD") + (
        " (relay/db/outbox.py modified in the working tree)" if dirty else ""
    )


async def main_async(args: argparse.Namespace) -> None:
    began = time.monotonic()
    print(f"commit {commit()}; {machine()}", flush=True)
    print(
        f"batch {BATCH}, {args.warmup} warm-up + {args.rounds} measured rounds per variant "
        f"and database; history {args.history:,} attempt rows",
        flush=True,
    )
    # Enough backlog for every write, the retry case and the batch auto_explain logs.
    pending = ((args.warmup + args.rounds) * len(VARIANTS) + len(VARIANTS) + 1) * BATCH + BATCH
    pg = PgServer()
    dbs: list[Db] = []
    try:
        twins = args.baseline == "no-rollup"
        extra = {"shared_preload_libraries": "pg_stat_statements"}
        if twins:
            extra["pg_stat_statements.track"] = "all"
        bench.start_postgres(pg, **extra)
        b = bench.Bench(pg, args.quick, 1)
        for name, history in (("empty", 0), ("history", args.history)):
            db = Db(name, await b.fresh_db(), history)
            if twins:
                db.twin_url = await b.fresh_db()
                conn = await asyncpg.connect(db.twin_url)
                for trigger in ROLLUP_TRIGGERS:
                    await conn.execute(f"DROP TRIGGER {trigger} ON relay.attempts")
                await conn.close()
            for url in (db.url, db.twin_url) if twins else (db.url,):
                assert url is not None
                taken = await seed(url, history, pending)
                print(
                    f"seeded {name}{' (no rollup)' if url == db.twin_url else ''}: "
                    + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in taken.items()),
                    flush=True,
                )
            dbs.append(db)
        for db in dbs:
            db.claim = await asyncpg.connect(db.url)
            db.record = await asyncpg.connect(db.url)
            db.old_claim, db.old_record = db.claim, db.record
            if db.twin_url is not None:
                db.old_claim = await asyncpg.connect(db.twin_url)
                db.old_record = await asyncpg.connect(db.twin_url)

        for n in range(args.warmup + args.rounds):
            if n == args.warmup:
                for db in dbs:
                    await db.claim.execute("SELECT pg_stat_statements_reset()")
            for db in dbs:
                order = ["new", "old"] if n % 2 == 0 else ["old", "new"]
                for variant in order:
                    batch = await claim_batch(db, variant)
                    taken_s = await write(db, variant, batch)
                    if n >= args.warmup:
                        db.times[variant].append(taken_s)
        print(f"measured in {time.monotonic() - began:.0f} s since the start", flush=True)

        if args.quick:
            print("--quick: a smoke run; too few rounds for its figures to mean anything")
        for db in dbs:
            print("\n".join(report(db)))
            print("\n".join(await statement_stats(db)))
            print("\n".join(await prepared_plans(db)))
        for db in dbs:
            print(f"{db.name}: the new statement's NOT EXISTS, as executed (auto_explain):")
            print("\n".join(await executed_plan(db, pg.log)))
        print("retry case (a lost COMMIT answer), one batch per variant and database:")
        for db in dbs:
            print(f" {db.name}:")
            print("\n".join(await retry_case(db)))
        for db in dbs:
            size = await db.claim.fetchval("SELECT count(*) FROM relay.attempts")
            print(f"{db.name}: {size:,} attempt rows at the end")
    finally:
        for db in dbs:
            for name in ("claim", "record", "old_claim", "old_record"):
                conn = getattr(db, name, None)
                if conn is not None and not conn.is_closed():
                    await conn.close()
        pg.cleanup()
    print(f"done in {time.monotonic() - began:.0f} s; {machine()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--history", type=int, help="attempt rows of history (2,000,000)")
    parser.add_argument("--rounds", type=int, help="measured rounds (200)")
    parser.add_argument("--warmup", type=int, help="uncounted rounds first (6)")
    parser.add_argument(
        "--baseline",
        choices=("8a26928", "no-rollup"),
        default="8a26928",
        help="old: the statement before idempotent recording (8a26928), or relay's own "
        "on a twin database without the hourly rollup's triggers (migration 0014)",
    )
    args = parser.parse_args()
    if args.baseline == "no-rollup":
        VARIANTS["old"] = outbox.record_outcomes
    defaults = (2000, 2, 1) if args.quick else (2_000_000, 200, 6)
    args.history = defaults[0] if args.history is None else args.history
    args.rounds = defaults[1] if args.rounds is None else args.rounds
    args.warmup = defaults[2] if args.warmup is None else args.warmup
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
