"""Aggregates over history, for Outpost's metrics API (GET /metrics/events, /attempts)
and the portal's charts.

Each query is one GROUP BY over relay.events (events, joined to relay.deliveries when a
destination is asked about) or relay.attempts (joined to relay.events when a topic is),
bounded by a time range the indexes on ``events.time`` and ``attempts.started_at`` serve.
Attempts are also counted per hour in relay.attempt_hours (migration 0014, kept by
triggers in the transaction that writes them): a query that buckets by whole hours and
asks for nothing that table lacks reads the hours its window holds whole from there, and
only the hours it cuts from relay.attempts, with the same answer (tests/integration/
test_attempt_hours.py). Buckets are in UTC; weeks start on Monday. Only buckets with rows
are returned.

Dimension and measure names come from the fixed tables below, never from the request;
values are bound parameters.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import RowMapping
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Boolean, Integer, Text

from relay.db.history import LATENCY_SQL, TimeRange, Where
from relay.db.tables import TS

# Rows a query returns at most; one more tells it was truncated.
ROW_LIMIT = 100_000

# --- granularity ---------------------------------------------------------------------

_GRANULARITY = re.compile(r"([1-9][0-9]*)([smhdwM])")
_UNIT_MAX = {"s": 60, "m": 60, "h": 24, "d": 31, "w": 4, "M": 12}
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class Granularity:
    count: int
    unit: str  # s m h d w M

    @property
    def text(self) -> str:
        return f"{self.count}{self.unit}"


def parse_granularity(text: str) -> Granularity:
    """``<number><unit>``: s (1-60), m (1-60), h (1-24), d (1-31), w (1-4), M (1-12). Pure;
    ValueError says what is wrong."""
    match = _GRANULARITY.fullmatch(text)
    if match is None:
        raise ValueError(f"must be <number><unit> with unit s, m, h, d, w or M (got {text!r})")
    count, unit = int(match.group(1)), match.group(2)
    if count > _UNIT_MAX[unit]:
        raise ValueError(f"{unit} takes 1 to {_UNIT_MAX[unit]} (got {text!r})")
    return Granularity(count, unit)


def bucket_sql(column: str, g: Granularity) -> str:
    """The SQL expression for the start of the bucket ``column`` falls in. Pure."""
    if g.unit == "M":
        # Months since 1970-01 (UTC), floored to a multiple of the count, computed on a
        # timestamp without time zone so the session's zone plays no part.
        utc = f"({column} AT TIME ZONE 'UTC')"
        since = (
            f"((extract(year FROM {utc})::int - 1970) * 12 + extract(month FROM {utc})::int - 1)"
        )
        # floor(), not integer division, which rounds toward zero before 1970.
        months = f"floor({since}::numeric / {g.count})::int * {g.count}"
        return f"((timestamp '1970-01-01' + make_interval(months => {months})) AT TIME ZONE 'UTC')"
    # 1970-01-05 was a Monday: week buckets start on Mondays, the others at 00:00 UTC.
    origin = "1970-01-05 00:00:00+00" if g.unit == "w" else "1970-01-01 00:00:00+00"
    seconds = g.count * _UNIT_SECONDS[g.unit]
    return f"date_bin(interval '{seconds} seconds', {column}, timestamptz '{origin}')"


def bucket_seconds(
    start: datetime, g: Granularity | None, window: tuple[datetime, datetime]
) -> float:
    """The rate measures' divisor: how much of the window the bucket starting at ``start``
    covers (a bucket cut by either end of the window counts only its part inside); without
    a granularity, the whole window. Pure."""
    if g is None:
        return (window[1] - window[0]).total_seconds()
    if g.unit != "M":
        length = float(g.count * _UNIT_SECONDS[g.unit])
    else:
        year, month, days = start.year, start.month, 0
        for _ in range(g.count):
            days += calendar.monthrange(year, month)[1]
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        length = float(days * 86400)
    inside_from = max(start, window[0])
    inside_to = min(start.timestamp() + length, window[1].timestamp())
    return max(inside_to - inside_from.timestamp(), 0.0)


# --- queries -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    start: datetime
    end: datetime
    granularity: Granularity | None = None
    dimensions: Sequence[str] = ()
    # Dimension name -> the values it must take (already validated for its type).
    filters: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The measures asked for: those that cost a sort (percentiles) are computed only then.
    measures: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Bucket:
    time_bucket: datetime | None
    dimensions: dict[str, str]
    # Every aggregate this kind of query computes; the API picks the requested ones.
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Result:
    buckets: list[Bucket]
    truncated: bool


EVENT_DIMENSIONS = {
    "tenant_id": "e.tenant_id",
    "topic": "e.topic",
    "destination_id": "d.destination_id",
}

ATTEMPT_DIMENSIONS = {
    "tenant_id": "a.tenant_id",
    "destination_id": "a.destination_id",
    # The destination's type: the attempt's own once the destination no longer says it
    # (migration 0018), else relay.destinations' (joined when asked for).
    "destination_type": "COALESCE(a.destination_type, dt.type, 'webhook')",
    "topic": "e.topic",
    "status": "a.status",
    # As the attempts API spells an attempt's code (relay/delivery/base.py, attempt_code): the
    # HTTP status, else the error code, else "OK" for a broker's success.
    "code": "COALESCE(a.http_status::text, a.error_code,"
    " CASE WHEN a.status = 'success' THEN 'OK' ELSE '' END)",
    "manual": "CASE WHEN a.manual THEN 'true' ELSE 'false' END",
    # Grouped and ordered as the number it is (2 before 10); answered as text.
    "attempt_number": "a.number",
}

_ATTEMPT_AGGREGATES = """
    count(*) AS count,
    count(*) FILTER (WHERE a.status = 'success') AS successful_count,
    count(*) FILTER (WHERE a.status = 'failed') AS failed_count,
    count(*) FILTER (WHERE a.number = 1) AS first_attempt_count,
    count(*) FILTER (WHERE a.number > 1) AS retry_count,
    count(*) FILTER (WHERE a.manual) AS manual_retry_count,
    avg(a.number)::float8 AS avg_attempt_number"""

# Milliseconds, over the attempts that were timed (history.LATENCY_SQL); NULL for a group
# without one (SDK 1.7: "null for a bucket with no such attempts, rather than 0").
LATENCY_MEASURES = {
    "avg_latency": f"avg({LATENCY_SQL})::float8",
    "p50_latency": f"percentile_cont(0.5) WITHIN GROUP (ORDER BY {LATENCY_SQL})",
    "p95_latency": f"percentile_cont(0.95) WITHIN GROUP (ORDER BY {LATENCY_SQL})",
    "p99_latency": f"percentile_cont(0.99) WITHIN GROUP (ORDER BY {LATENCY_SQL})",
}


async def event_metrics(conn: AsyncConnection, q: Query) -> Result:
    """Events published in the window (by event time). With destination_id as a
    dimension, each (event, destination it was routed to) counts once; as a filter alone,
    each event routed to any of them counts once (as the /events listing filters)."""
    source = "relay.events e"
    if "destination_id" in q.dimensions:
        source += " JOIN relay.deliveries d ON d.event_seq = e.seq"
    where = Where()
    where.time("e.time", TimeRange(gte=q.start, lt=q.end))
    for name, values in q.filters.items():
        if name == "destination_id" and "destination_id" not in q.dimensions:
            where.add(
                "EXISTS (SELECT 1 FROM relay.deliveries d WHERE d.event_seq = e.seq"
                " AND d.destination_id = ANY(:f_destination_id))",
                f_destination_id=(list(values), ARRAY(Text)),
            )
        else:
            where.any_of(EVENT_DIMENSIONS[name], f"f_{name}", values)
    return await _aggregate(conn, q, source, "e.time", EVENT_DIMENSIONS, "count(*) AS count", where)


async def attempt_metrics(conn: AsyncConnection, q: Query) -> Result:
    """Delivery attempts started in the window: its whole hours from relay.attempt_hours
    when it can answer (``by_hours``), else everything from relay.attempts."""
    hours = hours_within(q.start, q.end)
    if hours is not None and by_hours(q):
        return await _attempt_hours_metrics(conn, q, *hours)
    return await attempt_metrics_from_attempts(conn, q)


async def attempt_metrics_from_attempts(conn: AsyncConnection, q: Query) -> Result:
    """The same answer from relay.attempts alone, whatever the query."""
    source = "relay.attempts a"
    if "topic" in q.dimensions or "topic" in q.filters:
        source += " JOIN relay.events e ON e.seq = a.event_seq"
    if _by_type(q):
        source += _type_join("a")
    where = Where()
    where.time("a.started_at", TimeRange(gte=q.start, lt=q.end))
    for name, values in q.filters.items():
        if name == "manual":
            where.add(
                "a.manual = ANY(:f_manual)",
                f_manual=([v == "true" for v in values], ARRAY(Boolean)),
            )
        elif name == "attempt_number":
            numbers = [int(v) for v in values]
            where.add(
                "a.number = ANY(:f_attempt_number)", f_attempt_number=(numbers, ARRAY(Integer))
            )
        else:
            where.any_of(ATTEMPT_DIMENSIONS[name], f"f_{name}", values)
    measures = _ATTEMPT_AGGREGATES + "".join(
        f",\n    {sql} AS {name}" for name, sql in LATENCY_MEASURES.items() if name in q.measures
    )
    return await _aggregate(conn, q, source, "a.started_at", ATTEMPT_DIMENSIONS, measures, where)


def _by_type(q: Query) -> bool:
    return "destination_type" in q.dimensions or "destination_type" in q.filters


def _type_join(rows: str) -> str:
    """relay.destinations as ``dt``, for ATTEMPT_DIMENSIONS["destination_type"], joined to
    attempts (or the rollup's rows) named ``rows``."""
    return (
        " LEFT JOIN relay.destinations dt"
        f" ON dt.tenant_id = {rows}.tenant_id AND dt.id = {rows}.destination_id"
    )


# --- attempts by the hour (relay.attempt_hours) ------------------------------------------

# What relay.attempt_hours keeps of an attempt, as columns of ``u`` (the union below).
HOURLY_DIMENSIONS = {
    "tenant_id": "u.tenant_id",
    "destination_id": "u.destination_id",
    # The rollup keeps an attempt's own destination_type as '' when it has none.
    "destination_type": "COALESCE(NULLIF(u.destination_type, ''), dt.type, 'webhook')",
    "status": "u.status",
    "code": "u.code",
}
# Percentiles need every duration; the rollup keeps their sum.
PERCENTILES = frozenset({"p50_latency", "p95_latency", "p99_latency"})
HOUR = timedelta(hours=1)


def by_hours(q: Query) -> bool:
    """Whether relay.attempt_hours can answer q: its buckets are whole UTC hours (or there
    are none), and it asks for no dimension, filter or measure the rollup lacks (topic,
    manual, attempt_number, percentiles). Pure."""
    g = q.granularity
    whole_hours = g is None or g.unit in "hdwM" or (g.unit == "m" and g.count == 60)
    return (
        whole_hours
        and all(name in HOURLY_DIMENSIONS for name in (*q.dimensions, *q.filters))
        and PERCENTILES.isdisjoint(q.measures)
    )


def hours_within(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The start of the first whole UTC hour in [start, end) and the end of the last;
    None when there is none. Pure."""
    try:
        first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if first < start:
            first += HOUR
        last = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    except OverflowError:  # within an hour of year 1 or 9999
        return None
    return (first, last) if first < last else None


# The first hour the rollup may answer for. Retention drops whole partitions (no DELETE,
# so no trigger): the rollup still counts what they held. An attempt is written (its
# created_at, the partition key) after it started, so every attempt that started since
# the oldest slice still kept (not closing) is still there; the hour after that allows
# for a dispatcher's clock ahead of the database's. While the legacy slice (everything
# from before migration 0008) is kept, nothing was dropped: -infinity. Read in the same
# statement as the rest, so a slice closing meanwhile cannot come between.
_HOURS_KEPT = """(
    SELECT CASE WHEN bool_or(s.starts_at = '-infinity') THEN timestamptz '-infinity'
                ELSE COALESCE(date_bin(interval '1 hour', min(s.starts_at),
                                       timestamptz '1970-01-01 00:00:00+00')
                              + interval '2 hours', timestamptz 'infinity')
           END
    FROM relay.slices s WHERE NOT s.closing)"""

# An attempt as one of the rollup's rows.
_ATTEMPT_AS_HOURLY = f"""
    SELECT a.started_at AS t, a.tenant_id, a.destination_id,
           COALESCE(a.destination_type, '') AS destination_type, a.status,
           {ATTEMPT_DIMENSIONS["code"]} AS code, 1::bigint AS attempts,
           (a.number = 1)::int::bigint AS first_attempts,
           a.manual::int::bigint AS manual_attempts, a.number::bigint AS number_sum,
           (({LATENCY_SQL}) IS NOT NULL)::int::bigint AS timed_attempts,
           COALESCE({LATENCY_SQL}, 0)::bigint AS latency_ms_sum
    FROM relay.attempts a"""

# As _ATTEMPT_AGGREGATES computes them over attempts; averages divide the same numeric
# sums PostgreSQL's avg() does (exactly equal). No group has a count of 0 (HAVING).
_HOURLY_AGGREGATES = """
    sum(u.attempts)::bigint AS count,
    COALESCE(sum(u.attempts) FILTER (WHERE u.status = 'success'), 0)::bigint
        AS successful_count,
    COALESCE(sum(u.attempts) FILTER (WHERE u.status = 'failed'), 0)::bigint AS failed_count,
    sum(u.first_attempts)::bigint AS first_attempt_count,
    (sum(u.attempts) - sum(u.first_attempts))::bigint AS retry_count,
    sum(u.manual_attempts)::bigint AS manual_retry_count,
    (sum(u.number_sum) / sum(u.attempts))::float8 AS avg_attempt_number"""
_HOURLY_AVG_LATENCY = (
    "(sum(u.latency_ms_sum) / NULLIF(sum(u.timed_attempts), 0))::float8 AS avg_latency"
)


async def _attempt_hours_metrics(
    conn: AsyncConnection, q: Query, hours_from: datetime, hours_to: datetime
) -> Result:
    rollup, attempts = Where(), Where()
    # The destination's type is the rollup's only where recorded: the union's rows are
    # joined to the destinations for the rest.
    by_type = ""
    for name, values in q.filters.items():
        if name == "destination_type":
            by_type = f"WHERE {HOURLY_DIMENSIONS[name]} = ANY(:f_{name})"
            attempts.bind(f"f_{name}", list(values), ARRAY(Text))
        else:
            rollup.any_of(f"r.{name}", f"f_{name}", values)
            attempts.any_of(ATTEMPT_DIMENSIONS[name], f"f_{name}", values)
    for name, value in (
        ("window_start", q.start),
        ("window_end", q.end),
        ("hours_from", hours_from),
        ("hours_to", hours_to),
    ):
        attempts.bind(name, value, TS)
    keys: list[str] = []
    if q.granularity is not None:
        bucket = bucket_sql("u.t", q.granularity)
        keys.append(f"GREATEST({bucket}, timestamptz '0001-01-01 00:00:00+00') AS time_bucket")
    keys += [f"{HOURLY_DIMENSIONS[name]} AS dim_{i}" for i, name in enumerate(q.dimensions)]
    positions = ", ".join(str(n) for n in range(1, len(keys) + 1))
    aggregates = _HOURLY_AGGREGATES
    if "avg_latency" in q.measures:
        aggregates += ",\n    " + _HOURLY_AVG_LATENCY
    attempts.bind("row_limit", ROW_LIMIT + 1, Integer)
    # Whole hours from the rollup, the window's cut hours (before hours_from, from
    # hours_to) from relay.attempts; with no whole hour kept, all of it from there.
    sql = f"""
        WITH kept AS (
            SELECT GREATEST(:hours_from, {_HOURS_KEPT}) AS hours_from
        ), bounds AS (
            SELECT CASE WHEN k.hours_from < :hours_to THEN k.hours_from
                        ELSE :window_end END AS hours_from,
                   CASE WHEN k.hours_from < :hours_to THEN :hours_to
                        ELSE :window_end END AS hours_to
            FROM kept k
        )
        SELECT {", ".join([*keys, aggregates])}
        FROM (
            SELECT r.hour AS t, r.tenant_id, r.destination_id, r.destination_type, r.status,
                   r.code, r.attempts,
                   r.first_attempts, r.manual_attempts, r.number_sum, r.timed_attempts,
                   r.latency_ms_sum
            FROM relay.attempt_hours r
            WHERE r.hour >= (SELECT hours_from FROM bounds)
              AND r.hour < (SELECT hours_to FROM bounds) AND {rollup.sql()}
            UNION ALL
            {_ATTEMPT_AS_HOURLY}
            WHERE a.started_at >= :window_start
              AND a.started_at < (SELECT hours_from FROM bounds) AND {attempts.sql()}
            UNION ALL
            {_ATTEMPT_AS_HOURLY}
            WHERE a.started_at >= (SELECT hours_to FROM bounds)
              AND a.started_at < :window_end AND {attempts.sql()}
        ) u{_type_join("u") if _by_type(q) else ""}
        {by_type}
        {f"GROUP BY {positions}" if keys else ""}
        HAVING sum(u.attempts) > 0
        {f"ORDER BY {positions}" if keys else ""}
        LIMIT :row_limit
    """
    rows = (await conn.execute(attempts.statement(sql), attempts.params)).mappings().all()
    return _result(q, rows)


async def _aggregate(
    conn: AsyncConnection,
    q: Query,
    source: str,
    time_column: str,
    dimensions: Mapping[str, str],
    aggregates: str,
    where: Where,
) -> Result:
    keys: list[str] = []
    if q.granularity is not None:
        # Clamped: a bucket starting before year 1 (an event dated then) cannot be read
        # back into Python.
        bucket = bucket_sql(time_column, q.granularity)
        keys.append(f"GREATEST({bucket}, timestamptz '0001-01-01 00:00:00+00') AS time_bucket")
    keys += [f"{dimensions[name]} AS dim_{i}" for i, name in enumerate(q.dimensions)]
    positions = ", ".join(str(n) for n in range(1, len(keys) + 1))
    grouping = f"GROUP BY {positions} ORDER BY {positions}" if keys else ""
    where.bind("row_limit", ROW_LIMIT + 1, Integer)
    sql = f"""
        SELECT {", ".join([*keys, aggregates])}
        FROM {source}
        WHERE {where.sql()}
        {grouping}
        LIMIT :row_limit
    """
    rows = (await conn.execute(where.statement(sql), where.params)).mappings().all()
    return _result(q, rows)


def _result(q: Query, rows: Sequence[RowMapping]) -> Result:
    buckets = []
    for row in rows[:ROW_LIMIT]:
        values = dict(row)
        time_bucket = values.pop("time_bucket", None)
        dims = {name: _text(values.pop(f"dim_{i}")) for i, name in enumerate(q.dimensions)}
        if q.granularity is None and not q.dimensions and values["count"] == 0:
            continue  # an aggregate without GROUP BY has a row even when nothing matched
        buckets.append(Bucket(time_bucket, dims, values))
    return Result(buckets, truncated=len(rows) > ROW_LIMIT)


def _text(value: Any) -> Any:
    """Dimension values are strings in the contract (attempt_number is grouped as a number)."""
    return value if value is None or isinstance(value, str) else str(value)
