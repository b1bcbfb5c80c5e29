"""Do relay's reads stay index-driven at size?

Loads 10 million attempt rows and 1 million pending deliveries into a fresh database
(migrated by relay's own migrations), then runs EXPLAIN (ANALYZE, BUFFERS) for every
query of docs/sql.md, the dispatcher's claim statement and the API's event and attempt
listings. It prints each plan's top node, its time, and whether any large table was read
by a sequential scan, and writes the figures to bench/results/history_scale.md.

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
from tests.support.sqldocs import bind, documented_queries  # noqa: E402

LARGE_TABLES = {"events", "deliveries", "attempts"}
TENANTS = 20
DESTINATIONS_PER_TENANT = 5


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
    # Load without the secondary indexes, then build them: the way a restore would.
    indexes = await conn.fetch(
        """
        SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS ddl
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'relay' AND c.relname IN ('events', 'deliveries', 'attempts')
          AND NOT i.indisprimary AND NOT i.indisunique
        """
    )
    for index in indexes:
        await conn.execute(f"DROP INDEX {index['name']}")
    total_events = finished + pending
    await conn.execute(
        f"""
        INSERT INTO relay.events (tenant_id, id, topic, data, time, created_at)
        SELECT 'tenant-' || (1 + g % {TENANTS}), 'evt-' || g,
               'topic.' || (g % 50), '{{"n": 1, "payload": "abcdefghijklmnopqrstuvwxyz"}}',
               now() - interval '30 days' * (1 - g::float8 / {total_events}),
               now() - interval '30 days' * (1 - g::float8 / {total_events})
        FROM generate_series(1, {total_events}) g
        """
    )
    timings["events"] = time.perf_counter() - started
    started = time.perf_counter()
    await conn.execute(
        f"""
        INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id, status, attempts,
                                      next_attempt_at, last_error, created_at, updated_at)
        SELECT e.seq, e.tenant_id, 'dest-' || (1 + e.seq % {DESTINATIONS_PER_TENANT}),
               CASE WHEN e.seq > {finished} THEN 'pending'
                    WHEN e.seq % 10 = 0 THEN 'failed' ELSE 'delivered' END,
               CASE WHEN e.seq > {finished} THEN e.seq % 3 ELSE 1 + e.seq % 3 END,
               CASE WHEN e.seq > {finished}
                    THEN now() + interval '1 hour' * ((e.seq % 100) - 10) / 10
                    ELSE e.time END,
               CASE WHEN e.seq % 10 = 0 THEN 'http_500' END,
               e.time, e.time + interval '2 seconds'
        FROM relay.events e
        """
    )
    timings["deliveries"] = time.perf_counter() - started
    started = time.perf_counter()
    await conn.execute(
        """
        INSERT INTO relay.attempts (delivery_id, event_seq, tenant_id, destination_id, number,
                                    status, http_status, duration_ms, started_at)
        SELECT d.id, d.event_seq, d.tenant_id, d.destination_id, n,
               CASE WHEN d.status = 'delivered' AND n = d.attempts THEN 'success' ELSE 'failed' END,
               CASE WHEN d.status = 'delivered' AND n = d.attempts THEN 200 ELSE 500 END,
               5 + d.id % 200, d.created_at + interval '1 second' * n
        FROM relay.deliveries d, generate_series(1, d.attempts) n
        """
    )
    timings["attempts"] = time.perf_counter() - started
    started = time.perf_counter()
    for index in indexes:
        await conn.execute(index["ddl"])
    timings["indexes"] = time.perf_counter() - started
    started = time.perf_counter()
    await conn.execute("VACUUM ANALYZE relay.events, relay.deliveries, relay.attempts")
    timings["vacuum analyze"] = time.perf_counter() - started
    return timings


def seq_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in LARGE_TABLES:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found.extend(seq_scans(child))
    return found


def index_names(plan: dict[str, Any]) -> list[str]:
    found = [plan["Index Name"]] if "Index Name" in plan else []
    for child in plan.get("Plans", []):
        found.extend(index_names(child))
    return found


async def explain(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    tx = conn.transaction()
    await tx.start()
    try:
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    finally:
        await tx.rollback()  # the claim and replay statements write; leave no trace
    result: dict[str, Any] = orjson.loads(raw)[0]
    return result


async def sample(conn: asyncpg.Connection) -> dict[str, str]:
    row = await conn.fetchrow(
        "SELECT e.tenant_id, e.id, d.destination_id FROM relay.events e "
        "JOIN relay.deliveries d ON d.event_seq = e.seq WHERE e.seq = "
        "(SELECT max(seq) / 2 FROM relay.events)"
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
            for table in ("events", "deliveries", "attempts")
        }
        sizes["pending"] = await conn.fetchval(
            "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"
        )
        print("  rows:", ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
        values = await sample(conn)
        rows = []

        async def measure(label: str, sql: str, *sql_args: Any) -> None:
            result = await explain(conn, sql, *sql_args)
            plan = result["Plan"]
            scans = seq_scans(plan)
            rows.append(
                (
                    label,
                    result["Execution Time"],
                    plan["Node Type"],
                    scans,
                    sorted(set(index_names(plan))),
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
