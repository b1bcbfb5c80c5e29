"""Do relay's reads stay index-driven at size?

Loads 10 million attempt rows and 1 million pending deliveries into a fresh database
(migrated by relay's own migrations), then runs EXPLAIN (ANALYZE, BUFFERS) for every
query of docs/sql.md, the dispatcher's claim statement and the API's event and attempt
listings. It prints each plan's top node, its time, and whether any large table was read
by a sequential scan, and writes the figures to bench/results/history_scale.md.

History lies in time slices as a relay that kept 30 days would have it (migration 0008):
the fresh database's legacy slice is cut back to 31 days ago and the time up to now is
covered by slices as wide as relay makes them for retention.max_age_days = 30
(relay/retention.py), made with relay.create_slice(). Events get the seq of the minute
they were written (relay.seq_at(time), which puts them in their slice) and their
idempotency keys in relay.event_keys; finished deliveries go to the slice of their
updated_at, pending ones to relay.deliveries_active; attempts to the slice of their
created_at (= started_at). A sequential scan counts when it reads a partition (or
relay.event_keys) of 10,000 rows or more: the empty slices ahead of now are read that way.
Indexes used are named by the partitioned table's index, with how many partitions were
read through it (ix_attempts_started x46).

    .venv/bin/python bench/history_scale.py                 # throwaway embedded server
    RELAY_BENCH_DATABASE_URL=postgresql://... python bench/history_scale.py
    python bench/history_scale.py --attempts 1000000 --pending 100000   # smaller run

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relay.claiming import Claims  # noqa: E402
from relay.db import outbox  # noqa: E402
from relay.db.engine import asyncpg_url, create_engine  # noqa: E402
from relay.db.migrate import upgrade  # noqa: E402
from relay.retention import slice_width  # noqa: E402
from tests.support.sqldocs import bind, documented_queries  # noqa: E402

# The logical tables (partitioned but event_keys) whose partitions are "large tables".
LARGE_TABLES = ("events", "deliveries", "attempts", "event_keys")
LARGE_ROWS = 10_000
TENANTS = 20
DESTINATIONS_PER_TENANT = 5
HISTORY = timedelta(days=30)
# relay.events.seq is (minute << 32) | counter: the counter part.
COUNTER = "(e.seq & 4294967295)"


async def slice_history(conn: asyncpg.Connection) -> int:
    """Slices over the last 31 days, as relay with retention.max_age_days = 30 would have
    them: the (empty) legacy partitions are attached again ending 31 days ago, and
    relay.create_slice() covers the time from there to the first slice the migration
    made. Returns the number of slices made."""
    legacy_ends = await conn.fetchval(
        "SELECT ends_at FROM relay.slices WHERE starts_at = '-infinity'"
    )
    start = await conn.fetchval("SELECT date_trunc('day', now() - interval '31 days')")
    width = slice_width(HISTORY)
    for parent, legacy, bound in (
        ("events_sliced", "events_legacy", "relay.seq_at($1::timestamptz)"),
        ("deliveries_finished", "deliveries_legacy", "$1::timestamptz"),
        ("attempts", "attempts_legacy", "$1::timestamptz"),
    ):
        await conn.execute(f"ALTER TABLE relay.{parent} DETACH PARTITION relay.{legacy}")
        literal = await conn.fetchval(f"SELECT quote_literal(({bound})::text)", start)
        await conn.execute(
            f"ALTER TABLE relay.{parent} ATTACH PARTITION relay.{legacy} "
            f"FOR VALUES FROM (MINVALUE) TO ({literal})"
        )
    await conn.execute("UPDATE relay.slices SET ends_at = $1 WHERE starts_at = '-infinity'", start)
    made = 0
    at = start
    while at < legacy_ends:
        await conn.execute("SELECT relay.create_slice($1, $2)", at, min(at + width, legacy_ends))
        at += width
        made += 1
    return made


async def load(conn: asyncpg.Connection, attempts: int, pending: int) -> dict[str, float]:
    """Finished deliveries carry 2 attempts each on average (1 to 3); pending ones 0 to 2.
    Events span 30 days; one delivery per event."""
    finished = attempts // 2
    timings: dict[str, float] = {}
    started = time.perf_counter()
    await conn.execute(
        """
        INSERT INTO relay.tenants (id)
        SELECT 'tenant-' || t FROM generate_series(1, $1) t;
        """.replace("$1", str(TENANTS))
    )
    await conn.execute(
        f"""
        INSERT INTO relay.destinations (tenant_id, id, topics, url, secret)
        SELECT 'tenant-' || t, 'dest-' || d, '{{*}}', 'https://example.com/' || t || '/' || d,
               'whsec_x'
        FROM generate_series(1, {TENANTS}) t, generate_series(1, {DESTINATIONS_PER_TENANT}) d
        """
    )
    timings["tenants"] = time.perf_counter() - started
    started = time.perf_counter()
    made = await slice_history(conn)
    timings[f"{made} slices"] = time.perf_counter() - started
    # Load without the secondary indexes, then build them: the way a restore would. The
    # indexes of the partitioned tables (dropping one drops its partitions' too; made
    # again without ONLY, it is made on every partition) and those of one partition
    # alone (relay.deliveries_active's: the dispatcher's).
    indexes = await conn.fetch(
        """
        SELECT indexrelid::regclass::text AS name,
               replace(pg_get_indexdef(indexrelid), ' ON ONLY ', ' ON ') AS ddl
        FROM pg_index i,
             LATERAL (SELECT relid FROM pg_partition_tree('relay.events')
                      UNION ALL SELECT relid FROM pg_partition_tree('relay.deliveries')
                      UNION ALL SELECT relid FROM pg_partition_tree('relay.attempts')
                      UNION ALL SELECT 'relay.event_keys'::regclass) t
        WHERE i.indrelid = t.relid AND NOT i.indisprimary AND NOT i.indisunique
          AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
        """
    )
    for index in indexes:
        await conn.execute(f"DROP INDEX {index['name']}")
    started = time.perf_counter()
    total_events = finished + pending
    await conn.execute(
        f"""
        INSERT INTO relay.events (seq, tenant_id, id, topic, data, time, created_at)
        SELECT relay.seq_at(t) | g, 'tenant-' || (1 + g % {TENANTS}), 'evt-' || g,
               'topic.' || (g % 50), '{{"n": 1, "payload": "abcdefghijklmnopqrstuvwxyz"}}',
               t, t
        FROM generate_series(1, {total_events}) g,
             LATERAL (SELECT now() - interval '30 days' * (1 - g::float8 / {total_events})) s(t)
        """
    )
    await conn.execute(
        "INSERT INTO relay.event_keys (tenant_id, id, seq) "
        "SELECT tenant_id, id, seq FROM relay.events"
    )
    timings["events"] = time.perf_counter() - started
    started = time.perf_counter()
    await conn.execute(
        f"""
        INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id, status, attempts,
                                      next_attempt_at, last_error, created_at, updated_at)
        SELECT e.seq, e.tenant_id, 'dest-' || (1 + e.g % {DESTINATIONS_PER_TENANT}),
               CASE WHEN e.g > {finished} THEN 'pending'
                    WHEN e.g % 10 = 0 THEN 'failed' ELSE 'delivered' END,
               CASE WHEN e.g > {finished} THEN e.g % 3 ELSE 1 + e.g % 3 END,
               CASE WHEN e.g > {finished}
                    THEN now() + interval '1 hour' * ((e.g % 100) - 10) / 10
                    ELSE e.time END,
               CASE WHEN e.g % 10 = 0 THEN 'http_500' END,
               e.time, e.time + interval '2 seconds'
        FROM (SELECT e.*, {COUNTER} AS g FROM relay.events e) e
        """
    )
    timings["deliveries"] = time.perf_counter() - started
    started = time.perf_counter()
    await conn.execute(
        """
        INSERT INTO relay.attempts (delivery_id, event_seq, tenant_id, destination_id, number,
                                    status, http_status, duration_ms, started_at, created_at)
        SELECT d.id, d.event_seq, d.tenant_id, d.destination_id, n,
               CASE WHEN d.status = 'delivered' AND n = d.attempts THEN 'success' ELSE 'failed' END,
               CASE WHEN d.status = 'delivered' AND n = d.attempts THEN 200 ELSE 500 END,
               5 + d.id % 200, t, t
        FROM relay.deliveries d, generate_series(1, d.attempts) n,
             LATERAL (SELECT d.created_at + interval '1 second' * n) s(t)
        """
    )
    timings["attempts"] = time.perf_counter() - started
    started = time.perf_counter()
    for index in indexes:
        await conn.execute(index["ddl"])
    timings["indexes"] = time.perf_counter() - started
    started = time.perf_counter()
    await conn.execute(
        "VACUUM ANALYZE relay.events, relay.deliveries, relay.attempts, relay.event_keys,"
        " relay.attempt_hours"
    )
    timings["vacuum analyze"] = time.perf_counter() - started
    return timings


async def large_relations(conn: asyncpg.Connection) -> dict[str, str]:
    """Leaf partition -> its logical table, for the leaves of LARGE_ROWS rows or more
    (pg_class.reltuples, after VACUUM ANALYZE)."""
    large: dict[str, str] = {}
    for table in LARGE_TABLES:
        rows = await conn.fetch(
            """SELECT c.relname FROM pg_class c
               WHERE c.reltuples >= $2 AND c.relkind = 'r'
                 AND (c.oid = $1::regclass  -- a plain table: pg_partition_tree() is empty
                      OR c.oid IN (SELECT relid FROM pg_partition_tree($1::regclass)))""",
            f"relay.{table}",
            LARGE_ROWS,
        )
        large.update({r["relname"]: table for r in rows})
    return large


def seq_scans(plan: dict[str, Any], large: dict[str, str]) -> list[str]:
    """The large relations a plan reads by sequential scan: the logical table, and the
    partition when it is one (events/events_20261201_0000)."""
    found = []
    name = plan.get("Relation Name")
    if plan.get("Node Type") == "Seq Scan" and name in large:
        found.append(name if large[name] == name else f"{large[name]}/{name}")
    for child in plan.get("Plans", []):
        found.extend(seq_scans(child, large))
    return found


def index_names(plan: dict[str, Any]) -> list[str]:
    found = [plan["Index Name"]] if "Index Name" in plan else []
    for child in plan.get("Plans", []):
        found.extend(index_names(child))
    return found


async def index_roots(conn: asyncpg.Connection) -> dict[str, str]:
    """A partition's index -> the partitioned table's index it belongs to."""
    rows = await conn.fetch(
        """SELECT c.relname, r.relname AS root FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_class r ON r.oid = pg_partition_root(c.oid)
           WHERE n.nspname = 'relay' AND c.relkind = 'i' AND c.relispartition"""
    )
    return {r["relname"]: r["root"] for r in rows}


def logical_indexes(names: list[str], roots: dict[str, str]) -> list[str]:
    """The indexes a plan used, each partition's index named by its partitioned index,
    with the number of partitions read through it (ix_attempts_started x46)."""
    counts: dict[str, int] = {}
    for name in names:
        root = roots.get(name, name)
        counts[root] = counts.get(root, 0) + 1
    return [f"{name} x{n}" if n > 1 else name for name, n in sorted(counts.items())]


async def explain(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    tx = conn.transaction()
    await tx.start()
    try:
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    finally:
        await tx.rollback()  # the claim and replay statements write; leave no trace
    result: dict[str, Any] = orjson.loads(raw)[0]
    return result


async def sample(conn: asyncpg.Connection, events: int) -> dict[str, str]:
    """An event from the middle of the history (evt-<n>; seq encodes the minute)."""
    row = await conn.fetchrow(
        "SELECT e.tenant_id, e.id, d.destination_id FROM relay.events e "
        "JOIN relay.deliveries d ON d.event_seq = e.seq WHERE e.id = $1",
        f"evt-{max(1, events // 2)}",
    )
    assert row is not None
    return {
        "tenant_id": row["tenant_id"],
        "event_id": row["id"],
        "destination_id": row["destination_id"],
    }


def compiled(statement: Any, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """A SQLAlchemy statement as asyncpg-style SQL ($1, $2, ...) and its arguments."""
    from sqlalchemy.dialects import postgresql

    query = statement.compile(dialect=postgresql.asyncpg.dialect(), compile_kwargs={})
    sql = str(query)
    positional = [params[name] for name in query.positiontup]
    return sql, positional


async def api_listing_statements(url: str, values: dict[str, str]) -> list[tuple[str, str, Any]]:
    """Run the API's event and attempt listings (relay/db/history.py) as the API does,
    and capture the SQL they send, to EXPLAIN it."""
    from sqlalchemy import event

    from relay.db import history

    engine = create_engine(url, pool_size=1)
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        captured.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    now = datetime.now(UTC)
    week = history.TimeRange(gte=now - timedelta(days=7))
    calls: list[tuple[str, Any]] = [
        (
            "events, all tenants, page 1",
            lambda c: history.list_events(
                c, history.EventFilter(), limit=100, descending=True, cursor=None
            ),
        ),
        (
            "events, one tenant, 7 days",
            lambda c: history.list_events(
                c,
                history.EventFilter(tenant_ids=[values["tenant_id"]], time=week),
                limit=100,
                descending=True,
                cursor=None,
            ),
        ),
        (
            "events, one tenant, by topic",
            lambda c: history.list_events(
                c,
                history.EventFilter(tenant_ids=[values["tenant_id"]], topics=["topic.7"]),
                limit=100,
                descending=True,
                cursor=None,
            ),
        ),
        ("event by id", lambda c: history.get_event(c, values["event_id"], [values["tenant_id"]])),
        (
            "attempts, all tenants, page 1",
            lambda c: history.list_attempts(
                c, history.AttemptFilter(), limit=100, descending=True, cursor=None
            ),
        ),
        (
            "attempts, one destination",
            lambda c: history.list_attempts(
                c,
                history.AttemptFilter(
                    tenant_ids=[values["tenant_id"]], destination_ids=[values["destination_id"]]
                ),
                limit=100,
                descending=True,
                cursor=None,
            ),
        ),
        (
            "attempts, one event",
            lambda c: history.list_attempts(
                c,
                history.AttemptFilter(
                    tenant_ids=[values["tenant_id"]], event_ids=[values["event_id"]]
                ),
                limit=100,
                descending=True,
                cursor=None,
            ),
        ),
        (
            "attempts, failed, one tenant",
            lambda c: history.list_attempts(
                c,
                history.AttemptFilter(tenant_ids=[values["tenant_id"]], status="failed"),
                limit=100,
                descending=True,
                cursor=None,
            ),
        ),
    ]
    statements = []
    try:
        async with engine.connect() as conn:
            for label, call in calls:
                captured.clear()
                await call(conn)
                # The listing's own query is the last statement it sent.
                sql, params = captured[-1]
                statements.append((label, sql, list(params)))
    finally:
        await engine.dispose()
    return statements


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=10_000_000)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "history_scale.md"))
    args = parser.parse_args()

    server = None
    base_url = os.environ.get("RELAY_BENCH_DATABASE_URL")
    if not base_url:
        from relay.embedded import server_url, start_server

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = start_server(tempfile.mkdtemp(prefix="relay-bench-"), cleanup_mode="delete")
        base_url = server_url(server, "postgres")
    name = f"relay_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_url(base_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    from sqlalchemy.engine import make_url

    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, pool_size=1)
    await upgrade(engine)
    await engine.dispose()
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        print(f"loading {args.attempts:,} attempts and {args.pending:,} pending deliveries ...")
        timings = await load(conn, args.attempts, args.pending)
        for step, seconds in timings.items():
            print(f"  {step:<15} {seconds:8.1f} s")
        sizes = {
            table: await conn.fetchval(f"SELECT count(*) FROM relay.{table}")
            for table in LARGE_TABLES
        }
        sizes["pending"] = await conn.fetchval(
            "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"
        )
        sizes["slices"] = await conn.fetchval("SELECT count(*) FROM relay.slices")
        print("  rows:", ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
        values = await sample(conn, sizes["events"])
        large = await large_relations(conn)
        roots = await index_roots(conn)
        rows = []

        async def measure(label: str, sql: str, *sql_args: Any) -> None:
            result = await explain(conn, sql, *sql_args)
            plan = result["Plan"]
            scans = seq_scans(plan, large)
            rows.append(
                (
                    label,
                    result["Execution Time"],
                    plan["Node Type"],
                    scans,
                    logical_indexes(index_names(plan), roots),
                )
            )
            flag = "SEQ SCAN on " + ",".join(scans) if scans else "index-driven"
            print(f"  {label:<28} {result['Execution Time']:9.2f} ms  {flag}")

        print("EXPLAIN ANALYZE:")
        for query_name, sql in documented_queries().items():
            await measure(f"docs: {query_name}", bind(sql, **values).rstrip().rstrip(";"))

        claims = Claims(per_destination=10_000)
        claims.found(await outbox.find_due(conn, {}))
        claim_sql, claim_args = compiled(
            outbox.CLAIM,
            outbox.claim_parameters(claims.plan({}, 200), lease_seconds=60.0, token=uuid.uuid4()),
        )
        await measure("claim (200 due rows)", claim_sql, *claim_args)
        for label, sql, sql_args in await api_listing_statements(url, values):
            await measure(f"api: {label}", sql, *sql_args)
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
        if server is not None:
            server.cleanup()

    write_report(Path(args.out), args, timings, sizes, rows)
    print(f"wrote {args.out}")


def write_report(
    path: Path, args: Any, timings: dict[str, float], sizes: dict[str, int], rows: list[Any]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# History at scale: EXPLAIN ANALYZE",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}.",
        f"Command: `.venv/bin/python bench/history_scale.py --attempts {args.attempts} "
        f"--pending {args.pending}`",
        "",
        "Rows: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()) + ".",
        "Load: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
        "",
        "| query | execution (ms) | top node | seq scan on a large table | indexes used |",
        "|---|---:|---|---|---|",
    ]
    for label, ms, node, scans, indexes in rows:
        lines.append(
            f"| {label} | {ms:.2f} | {node} | {', '.join(scans) or 'none'} | "
            f"{', '.join(indexes) or '-'} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
