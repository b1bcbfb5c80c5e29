"""relay.attempt_hours (migration 0014): attempts counted per hour by triggers, and the
metrics that read whole hours from it give what relay.attempts alone gives.

Random attempts written from sessions in several time zones, then updated and deleted in
part; random windows (cut hours at either end or none, a window within one hour),
granularities, dimensions and filters, read from sessions in several time zones: the
answer from the rollup (aggregates.attempt_metrics) equals the answer from the attempts
(aggregates.attempt_metrics_from_attempts), floats included, before and after retention
drops the oldest slices.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relay import retention
from relay.config import RetentionSettings
from relay.db import aggregates, history
from relay.db.engine import create_engine
from tests.support.relay import admin_headers, make_settings

HOUR = timedelta(hours=1)
ZONES = ("UTC", "Asia/Kolkata", "America/St_Johns", "Pacific/Chatham", "Europe/Berlin")
TENANTS = ("acme", "globex")
DESTINATIONS = ("d1", "d2", "d3")
GRANULARITIES = (None, "1h", "2h", "5h", "60m", "1d", "1w", "1M", "24h")
MEASURES = (
    "count",
    "successful_count",
    "failed_count",
    "first_attempt_count",
    "retry_count",
    "manual_retry_count",
    "avg_attempt_number",
    "avg_latency",
)
# (status, http_status, error_code): answers, timed errors and untimed ones.
ANSWERS = (
    ("success", 200, None),
    ("success", 204, None),
    ("failed", 500, None),
    ("failed", 410, None),
    ("failed", None, "timeout"),
    ("failed", None, "connection_refused"),
    ("failed", None, "lease_expired"),
    ("failed", None, "blocked_address"),
    ("failed", None, "interrupted"),
)

INSERT = """
    INSERT INTO relay.attempts
        (delivery_id, event_seq, tenant_id, destination_id, number, status, http_status,
         error_code, duration_ms, manual, started_at, created_at)
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::int[],
                         $6::text[], $7::int[], $8::text[], $9::int[], $10::bool[],
                         $11::timestamptz[], $12::timestamptz[])
"""

# The rollup's rows added up over shards, and the same grouping over relay.attempts.
FROM_ROLLUP = """
    SELECT tenant_id, hour, destination_id, destination_type, status, code, sum(attempts),
           sum(first_attempts), sum(manual_attempts), sum(number_sum), sum(timed_attempts),
           sum(latency_ms_sum)
    FROM relay.attempt_hours
    GROUP BY 1, 2, 3, 4, 5, 6 HAVING sum(attempts) <> 0 ORDER BY 1, 2, 3, 4, 5, 6
"""
FROM_ATTEMPTS = f"""
    SELECT tenant_id, date_bin('1 hour', started_at, timestamptz '1970-01-01 00:00:00+00'),
           destination_id, COALESCE(destination_type, ''), status,
           {aggregates.ATTEMPT_DIMENSIONS["code"]},
           count(*)::numeric, count(*) FILTER (WHERE number = 1)::numeric,
           count(*) FILTER (WHERE manual)::numeric, sum(number)::numeric,
           count({history.LATENCY_SQL})::numeric,
           COALESCE(sum({history.LATENCY_SQL}), 0)::numeric
    FROM relay.attempts a
    GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
"""


def floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def random_attempts(
    rng: random.Random, base: datetime, hours: int, n: int, *, created: str = "now"
) -> list[list[Any]]:
    """n attempts started within ``hours`` after base: some exactly on an hour, some a
    microsecond before one. created: "now" (the default, as relay writes them) or
    "started" (created_at = started_at: an old slice's)."""
    columns: list[list[Any]] = [[] for _ in range(12)]
    for _ in range(n):
        roll = rng.random()
        if roll < 0.15:
            started = base + rng.randrange(hours) * HOUR
        elif roll < 0.2:
            started = base + rng.randrange(1, hours) * HOUR - timedelta(microseconds=1)
        else:
            started = base + timedelta(seconds=rng.uniform(0, hours * 3600))
        status, http_status, error_code = rng.choice(ANSWERS)
        row = [
            rng.randrange(1, 10**9),
            rng.randrange(1, 10**12),
            rng.choice(TENANTS),
            rng.choice(DESTINATIONS),
            rng.choice((1, 1, 1, 2, 3, 7)),
            status,
            http_status,
            error_code,
            rng.randrange(0, 30_000),
            rng.random() < 0.1,
            started,
            started if created == "started" else datetime.now(UTC),
        ]
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


async def write(url: str, columns: list[list[Any]], zone: str) -> None:
    """Through a session in ``zone``, in batches of 200 (the recorder's)."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(f"SET TIME ZONE '{zone}'")
        for first in range(0, len(columns[0]), 200):
            await conn.execute(INSERT, *(c[first : first + 200] for c in columns))
    finally:
        await conn.close()


def random_query(rng: random.Random, base: datetime, hours: int) -> aggregates.Query:
    roll = rng.random()
    if roll < 0.3:  # whole hours both ends
        start = base + rng.randrange(-2, hours) * HOUR
        end = start + rng.randrange(1, hours + 4) * HOUR
    elif roll < 0.4:  # within one hour
        start = base + timedelta(seconds=rng.uniform(0, hours * 3600))
        end = start + timedelta(seconds=rng.uniform(1, 3500))
    else:
        start = base + timedelta(seconds=rng.uniform(-7200, hours * 3600))
        end = start + timedelta(seconds=rng.uniform(600, (hours + 4) * 3600))
    # The caller's offset does not matter: windows come as instants.
    offset = timedelta(minutes=rng.choice((0, 330, -210, 765)))
    start, end = (t.astimezone(timezone(offset)) for t in (start, end))
    granularity = rng.choice(GRANULARITIES)
    dimensions = rng.sample(list(aggregates.HOURLY_DIMENSIONS), rng.randrange(0, 4))
    filters: dict[str, list[str]] = {}
    if rng.random() < 0.5:
        filters["tenant_id"] = [rng.choice(TENANTS)]
    if rng.random() < 0.4:
        filters["destination_id"] = rng.sample(DESTINATIONS, rng.randrange(1, 3))
    if rng.random() < 0.2:
        filters["status"] = [rng.choice(("success", "failed"))]
    if rng.random() < 0.2:
        filters["code"] = rng.sample(["200", "500", "timeout", "lease_expired", ""], 2)
    if rng.random() < 0.1:
        filters["destination_type"] = ["webhook"]
    return aggregates.Query(
        start,
        end,
        None if granularity is None else aggregates.parse_granularity(granularity),
        dimensions,
        filters,
        rng.sample(MEASURES, rng.randrange(1, len(MEASURES) + 1)),
    )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def compare(
    engine: AsyncEngine, rng: random.Random, base: datetime, hours: int, rounds: int
) -> int:
    """Random queries, each from a session in a random zone; how many read the rollup."""
    by_hours = 0
    async with engine.connect() as conn:
        for i in range(rounds):
            zone = ZONES[i % len(ZONES)]
            await conn.execute(text(f"SET TIME ZONE '{zone}'"))
            q = random_query(rng, base, hours)
            if aggregates.hours_within(q.start, q.end) is not None and aggregates.by_hours(q):
                by_hours += 1
            got = await aggregates.attempt_metrics(conn, q)
            expected = await aggregates.attempt_metrics_from_attempts(conn, q)
            assert got == expected, (zone, q)
    return by_hours


async def rollup_is_exact(db: asyncpg.Connection) -> None:
    assert [tuple(r) for r in await db.fetch(FROM_ROLLUP)] == [
        tuple(r) for r in await db.fetch(FROM_ATTEMPTS)
    ]


async def test_metrics_from_the_rollup_equal_those_from_the_attempts(
    database_url: str, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    rng = random.Random(22)
    hours = 40
    base = floor_hour(datetime.now(UTC)) - 30 * HOUR
    for zone in ZONES[:3]:
        await write(database_url, random_attempts(rng, base, hours, 1000), zone)
    await rollup_is_exact(db)
    # Changed afterwards (an hour, a status, a code, a duration) and deleted in part.
    await db.execute(
        "UPDATE relay.attempts SET started_at = started_at + interval '37 minutes',"
        " status = 'failed', http_status = 503, error_code = NULL WHERE id % 7 = 0"
    )
    await db.execute(
        "UPDATE relay.attempts SET error_code = 'lease_expired', http_status = NULL,"
        " duration_ms = duration_ms + 1000, manual = NOT manual WHERE id % 11 = 0"
    )
    await db.execute("DELETE FROM relay.attempts WHERE id % 13 = 0")
    await rollup_is_exact(db)
    assert await db.fetchval("SELECT count(DISTINCT shard) FROM relay.attempt_hours") > 1

    read_by_hours = await compare(engine, rng, base, hours, 400)
    assert read_by_hours > 200

    # The answer for whole hours does come from the rollup: one more attempt counted in
    # the hour of base + 5 h changes the answer from it, and only from it.
    await db.execute(
        "UPDATE relay.attempt_hours SET attempts = attempts + 1, first_attempts ="
        " first_attempts + 1, number_sum = number_sum + 1 WHERE ctid = (SELECT ctid FROM"
        " relay.attempt_hours WHERE hour = $1 AND tenant_id = 'acme' LIMIT 1)",
        base + 5 * HOUR,
    )
    q = aggregates.Query(
        base,
        base + 24 * HOUR,
        aggregates.parse_granularity("1h"),
        (),
        {"tenant_id": ["acme"]},
        ("count",),
    )
    async with engine.connect() as conn:
        got = await aggregates.attempt_metrics(conn, q)
        expected = await aggregates.attempt_metrics_from_attempts(conn, q)
    changed = [
        (a.time_bucket, a.values["count"], b.values["count"])
        for a, b in zip(got.buckets, expected.buckets, strict=True)
        if a != b
    ]
    assert [(t, x - y) for t, x, y in changed] == [(base + 5 * HOUR, 1)]

    await db.execute("TRUNCATE relay.attempts")
    assert await db.fetchval("SELECT count(*) FROM relay.attempt_hours") == 0


async def test_hours_of_attempts_that_retention_dropped_come_from_what_is_left(
    database_url: str, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    rng = random.Random(2207)
    hours = 30
    now = datetime.now(UTC)
    base = floor_hour(now) - 24 * HOUR
    # Written a while ago (in the legacy slice, which ends when the suite migrated its
    # template), and written now, started up to 6 hours ahead of now.
    await write(database_url, random_attempts(rng, base, 20, 1500, created="started"), "UTC")
    await write(database_url, random_attempts(rng, base, hours, 1500), "Asia/Kolkata")
    await rollup_is_exact(db)
    await compare(engine, rng, base, hours, 100)
    before = await db.fetchval("SELECT count(*) FROM relay.attempts")

    # Every slice that has ended goes (judged an hour from now, with a minute's age).
    done = await retention.maintain(
        engine, RetentionSettings(), max_age=timedelta(minutes=1), now=now + HOUR
    )
    assert done is not None and done.retired
    assert done.retired[0].legacy
    left = await db.fetchval("SELECT count(*) FROM relay.attempts")
    assert 1500 <= left < before
    oldest = await db.fetchval("SELECT min(starts_at) FROM relay.slices")
    assert await db.fetchval("SELECT min(hour) FROM relay.attempt_hours") >= floor_hour(oldest)
    # The rollup still counts dropped attempts in hours it keeps (it is no longer equal
    # to the attempts), yet every answer is what the attempts left give.
    with pytest.raises(AssertionError):
        await rollup_is_exact(db)
    assert await compare(engine, rng, base, hours, 200) > 50


async def test_concurrent_writers_on_one_shard_neither_deadlock_nor_lose_counts(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Sessions whose pids share a shard write attempts of the same hours and
    destinations at once, each in a different order."""
    url = database_url.replace("postgresql+asyncpg", "postgresql")
    opened: list[asyncpg.Connection] = []
    by_shard: dict[int, list[asyncpg.Connection]] = {}
    try:
        while max((len(c) for c in by_shard.values()), default=0) < 3:
            conn = await asyncpg.connect(url)
            opened.append(conn)
            by_shard.setdefault(await conn.fetchval("SELECT pg_backend_pid() % 16"), []).append(
                conn
            )
        writers = next(c for c in by_shard.values() if len(c) >= 3)[:3]
        rng = random.Random(7)
        base = floor_hour(datetime.now(UTC)) - 3 * HOUR

        async def writer(conn: asyncpg.Connection, seed: int) -> None:
            own = random.Random(seed)
            for _ in range(30):
                columns = random_attempts(own, base, 4, 60)
                order = list(range(60))
                own.shuffle(order)
                await conn.execute(INSERT, *([c[i] for i in order] for c in columns))

        await asyncio.gather(*(writer(c, rng.randrange(10**6)) for c in writers))
    finally:
        for conn in opened:
            await conn.close()
    assert await db.fetchval("SELECT count(*) FROM relay.attempts") == 3 * 30 * 60
    await rollup_is_exact(db)


async def test_the_migration_backfills_what_was_written_before_it(
    database_url: str, db: asyncpg.Connection
) -> None:
    from alembic import command

    from relay.db.migrate import alembic_config

    engine = create_engine(database_url, pool_size=1, statement_timeout=0)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), "0013"))
        base = floor_hour(datetime.now(UTC)) - 10 * HOUR
        await write(database_url, random_attempts(random.Random(5), base, 12, 800), "UTC")
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
    finally:
        await engine.dispose()
    assert await db.fetchval("SELECT count(*) FROM relay.attempt_hours") > 0
    await rollup_is_exact(db)


async def test_attempts_written_with_the_triggers_off_are_counted_by_a_recount(
    database_url: str, db: asyncpg.Connection
) -> None:
    base = floor_hour(datetime.now(UTC)) - 5 * HOUR
    await write(database_url, random_attempts(random.Random(3), base, 6, 300), "UTC")
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute(INSERT, *random_attempts(random.Random(4), base, 6, 100))
    with pytest.raises(AssertionError):
        await rollup_is_exact(db)
    assert await db.fetchval("SELECT relay.recount_attempt_hours()") > 0
    await rollup_is_exact(db)


def test_the_rollup_times_the_attempts_history_times() -> None:
    """The trigger (migration 0014) leaves out of latency the codes history does."""
    path = Path(__file__).resolve().parents[2] / "migrations/versions"
    [migration] = path.glob("*_0014_attempt_hours.py")
    spec = importlib.util.spec_from_file_location("attempt_hours_migration", migration)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.UNTIMED_CODES == history.UNTIMED_CODES


def test_which_queries_the_rollup_answers() -> None:
    start = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)

    def query(
        granularity: str | None,
        dimensions: Sequence[str] = (),
        filters: dict[str, list[str]] | None = None,
        measures: Sequence[str] = ("count",),
    ) -> aggregates.Query:
        g = None if granularity is None else aggregates.parse_granularity(granularity)
        return aggregates.Query(start, start + 5 * HOUR, g, dimensions, filters or {}, measures)

    assert aggregates.by_hours(query("1h", ["destination_id", "code"], {"status": ["failed"]}))
    assert aggregates.by_hours(query("60m")) and aggregates.by_hours(query("1M"))
    assert not aggregates.by_hours(query("30m"))
    assert not aggregates.by_hours(query("1h", ["topic"]))
    assert not aggregates.by_hours(query("1d", filters={"manual": ["true"]}))
    assert not aggregates.by_hours(query(None, measures=["count", "p95_latency"]))
    assert aggregates.hours_within(start, start + 5 * HOUR) == (
        datetime(2026, 3, 1, 11, tzinfo=UTC),
        datetime(2026, 3, 1, 15, tzinfo=UTC),
    )
    assert aggregates.hours_within(start, start + 40 * timedelta(minutes=1)) is None
    on_the_hour = datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert aggregates.hours_within(on_the_hour, on_the_hour + HOUR) == (
        on_the_hour,
        on_the_hour + HOUR,
    )


async def test_attempts_keep_their_destinations_type_when_it_is_deleted_and_its_id_reused(
    start_relay: Any, database_url: str, db: asyncpg.Connection, http: Any, receiver: Any
) -> None:
    """A RabbitMQ destination delivers and is deleted (its row stays, soft-deleted), then
    its id is taken by a webhook (the API lets a deleted destination's id be used again,
    and the new destination takes the row over): its attempts still count as rabbitmq,
    from the attempts (the raw path) and from the rollup alike."""
    relay = await start_relay(make_settings(database_url))
    api = relay.make_url("/api/v1").human_repr()

    async def call(method: str, path: str, body: Any = None) -> Any:
        async with http.request(method, api + path, json=body, headers=admin_headers()) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def deliver(count: int, attempts: int) -> None:
        for _ in range(count):
            await call("POST", "/publish", {"tenant_id": "acme", "topic": "t", "data": {}})
        async with asyncio.timeout(20):
            while await db.fetchval("SELECT count(*) FROM relay.attempts") < attempts:
                await asyncio.sleep(0.05)

    async def counts(measure: str = "count", **filters: str) -> dict[str, dict[str, int]]:
        """Attempts by destination type, per path: whole hours (the rollup; the hour being
        written in is one of them), and minutes of a window that cuts an hour (the
        attempts)."""
        hour = floor_hour(datetime.now(UTC))
        found: dict[str, dict[str, int]] = {}
        for path, start, granularity in (
            ("rollup", hour - HOUR, "1h"),
            ("attempts", hour - timedelta(minutes=7), "1m"),
        ):
            end = hour + 2 * HOUR
            q = aggregates.Query(start, end, aggregates.parse_granularity(granularity))
            assert aggregates.by_hours(q) == (path == "rollup")
            query = (
                f"time[start]={start.isoformat()}&time[end]={end.isoformat()}"
                f"&granularity={granularity}&measures={measure}&dimensions=destination_type"
            ).replace("+", "%2B") + "".join(f"&filters[{k}]={v}" for k, v in filters.items())
            by_type = found[path] = {}
            for point in (await call("GET", "/metrics/attempts?" + query))["data"]:
                kind = point["dimensions"]["destination_type"]
                by_type[kind] = by_type.get(kind, 0) + point["metrics"][measure]
        return found

    await call("PUT", "/tenants/acme")
    rabbitmq = {
        "id": "orders",
        "type": "rabbitmq",
        "topics": "*",
        "config": {"server_url": "127.0.0.1:5672", "exchange": "", "tls": "false"},
        "credentials": {"username": "guest", "password": "guest"},
    }
    await call("POST", "/tenants/acme/destinations", rabbitmq)
    await deliver(3, 3)
    await call("DELETE", "/tenants/acme/destinations/orders")
    assert await counts() == {"rollup": {"rabbitmq": 3}, "attempts": {"rabbitmq": 3}}

    webhook = {"id": "orders", "type": "webhook", "topics": "*", "config": {"url": receiver.url()}}
    await call("POST", "/tenants/acme/destinations", webhook)
    await deliver(2, 5)
    assert await db.fetchval("SELECT count(*) FROM relay.attempts WHERE status = 'success'") == 5
    both = {"rabbitmq": 3, "webhook": 2}
    assert await counts() == {"rollup": both, "attempts": both}
    assert await counts("successful_count", destination_type="rabbitmq") == {
        "rollup": {"rabbitmq": 3},
        "attempts": {"rabbitmq": 3},
    }
    await rollup_is_exact(db)
    # The attempts API's filter by type says the same.
    listed = await call("GET", "/attempts?tenant_id=acme&destination_type=rabbitmq")
    assert len(listed["models"]) == 3

    # A row deleted outright (by hand: relay keeps it) leaves its type with its attempts.
    await db.execute("DELETE FROM relay.destinations WHERE tenant_id = 'acme' AND id = 'orders'")
    assert await counts() == {"rollup": both, "attempts": both}
    await rollup_is_exact(db)
