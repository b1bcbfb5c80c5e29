"""Outpost's metrics API (/metrics/events, /metrics/attempts), driven by the official SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from outpost_sdk import Outpost, errors

from tests.support.receiver import Reply
from tests.support.relay import ADMIN_KEY, admin_headers, make_settings


@pytest.fixture
async def relay(start_relay: Any, database_url: str) -> Any:
    return await start_relay(make_settings(database_url))


@pytest.fixture
async def sdk(relay: Any) -> AsyncIterator[Outpost]:
    async with Outpost(api_key=ADMIN_KEY, server_url=str(relay.make_url("/api/v1"))) as client:
        yield client


@pytest.fixture
async def history(sdk: Outpost, receiver: Any) -> dict[str, str]:
    """acme: "ok" takes every topic, "bad" (always 500) order.created; globex: "ok" too.
    Six events, nine attempts: six succeed, three fail (no retries)."""
    receiver.reply = lambda n, path: Reply(status=500) if path == "/bad" else Reply()
    ids = {}
    for tenant, name, topics in (
        ("acme", "ok", "*"),
        ("acme", "bad", ["order.created"]),
        ("globex", "ok", "*"),
    ):
        await sdk.tenants.upsert_async(tenant_id=tenant)
        created = await sdk.destinations.create_async(
            tenant_id=tenant,
            body={"type": "webhook", "topics": topics, "config": {"url": receiver.url(f"/{name}")}},
        )
        ids[f"{tenant}/{name}"] = created.id
    for tenant, topic, times in (
        ("acme", "order.created", 3),
        ("acme", "user.deleted", 2),
        ("globex", "user.deleted", 1),
    ):
        for _ in range(times):
            await sdk.publish_async(
                request={
                    "tenant_id": tenant,
                    "topic": topic,
                    "data": {},
                    "eligible_for_retry": False,
                }
            )
    async with asyncio.timeout(10):
        while len((await sdk.attempts.list_async(request={})).models or []) < 9:
            await asyncio.sleep(0.05)
    return ids


def window() -> dict[str, datetime]:
    now = datetime.now(UTC)
    return {"start": now - timedelta(hours=1), "end": now + timedelta(hours=1)}


def by(points: Any, *names: str) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(p.dimensions[n] for n in names): p.metrics for p in points.data}


async def test_event_counts_by_topic_and_destination(sdk: Outpost, history: dict[str, str]) -> None:
    total = await sdk.metrics.get_event_metrics_async(
        request={"time": window(), "measures": "count"}
    )
    assert [(p.dimensions, p.metrics, p.time_bucket) for p in total.data or []] == [
        ({}, {"count": 6}, None)
    ]
    meta = total.metadata
    assert meta is not None and (meta.row_count, meta.truncated, meta.granularity) == (
        1,
        False,
        None,
    )

    topics = await sdk.metrics.get_event_metrics_async(
        request={
            "time": window(),
            "measures": ["count"],
            "dimensions": ["topic"],
            "filters[tenant_id]": "acme",
        }
    )
    assert by(topics, "topic") == {
        ("order.created",): {"count": 3},
        ("user.deleted",): {"count": 2},
    }

    # By destination, an event counts once per destination it was routed to.
    destinations = await sdk.metrics.get_event_metrics_async(
        request={
            "time": window(),
            "measures": "count",
            "dimensions": ["tenant_id", "destination_id"],
        }
    )
    assert by(destinations, "tenant_id", "destination_id") == {
        ("acme", history["acme/ok"]): {"count": 5},
        ("acme", history["acme/bad"]): {"count": 3},
        ("globex", history["globex/ok"]): {"count": 1},
    }

    # As a filter alone, an event routed to both destinations counts once (as /events).
    either = await sdk.metrics.get_event_metrics_async(
        request={
            "time": window(),
            "measures": "count",
            "filters[destination_id]": [history["acme/ok"], history["acme/bad"]],
        }
    )
    assert [p.metrics for p in either.data or []] == [{"count": 5}]

    # Nothing in another window.
    long_ago = {"start": datetime(2020, 1, 1, tzinfo=UTC), "end": datetime(2020, 1, 2, tzinfo=UTC)}
    empty = await sdk.metrics.get_event_metrics_async(
        request={"time": long_ago, "measures": "count"}
    )
    assert empty.data == [] and empty.metadata is not None and empty.metadata.row_count == 0


async def test_event_buckets_and_rate(sdk: Outpost, history: dict[str, str]) -> None:
    hourly = await sdk.metrics.get_event_metrics_async(
        request={"time": window(), "measures": ["count", "rate"], "granularity": "1h"}
    )
    # The events were published within a second or two: one hour bucket (two at most,
    # if this ran across the hour).
    assert hourly.metadata is not None and hourly.metadata.granularity == "1h"
    points = hourly.data or []
    assert sum(p.metrics["count"] for p in points) == 6
    for p in points:
        assert p.time_bucket is not None and p.time_bucket.tzinfo is not None
        assert (p.time_bucket.minute, p.time_bucket.second) == (0, 0)
        assert p.metrics["rate"] == pytest.approx(p.metrics["count"] / 3600)


async def test_attempt_measures(sdk: Outpost, history: dict[str, str]) -> None:
    measures = [
        "count",
        "successful_count",
        "failed_count",
        "error_rate",
        "first_attempt_count",
        "retry_count",
        "manual_retry_count",
        "avg_attempt_number",
    ]
    result = await sdk.metrics.get_attempt_metrics_async(
        request={"time": window(), "measures": measures, "dimensions": ["destination_id"]}
    )
    got = by(result, "destination_id")
    assert got[(history["acme/bad"],)] == {
        "count": 3,
        "successful_count": 0,
        "failed_count": 3,
        "error_rate": 1.0,
        "first_attempt_count": 3,
        "retry_count": 0,
        "manual_retry_count": 0,
        "avg_attempt_number": 1.0,
    }
    assert got[(history["acme/ok"],)]["successful_count"] == 5
    assert got[(history["acme/ok"],)]["error_rate"] == 0.0
    assert got[(history["globex/ok"],)]["count"] == 1

    codes = await sdk.metrics.get_attempt_metrics_async(
        request={
            "time": window(),
            "measures": "count",
            "dimensions": ["code", "status", "topic", "destination_type"],
        }
    )
    assert by(codes, "code", "status", "topic", "destination_type") == {
        ("200", "success", "order.created", "webhook"): {"count": 3},
        ("200", "success", "user.deleted", "webhook"): {"count": 3},
        ("500", "failed", "order.created", "webhook"): {"count": 3},
    }

    filtered = await sdk.metrics.get_attempt_metrics_async(
        request={
            "time": window(),
            "measures": ["count", "failed_rate"],
            "filters[status]": "failed",
            "filters[topic]": ["order.created", "nope"],
            "filters[attempt_number]": "1",
            "filters[manual]": "false",
            "filters[destination_type]": "webhook",
        }
    )
    [point] = filtered.data or []
    assert point.metrics["count"] == 3
    assert point.metrics["failed_rate"] == pytest.approx(3 / 7200)
    none = await sdk.metrics.get_attempt_metrics_async(
        request={"time": window(), "measures": "count", "filters[manual]": "true"}
    )
    assert none.data == []


def percentile(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear between the two nearest ranks."""
    ordered = sorted(values)
    at = fraction * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


async def test_latency_measures(sdk: Outpost, history: dict[str, str], db: Any) -> None:
    """outpost-sdk 1.7's latency measures: milliseconds over the attempts that were timed
    (an attempt's duration; not those never sent or cut short), null without one."""
    ok, bad = history["acme/ok"], history["acme/bad"]
    # Known durations for acme/ok's five attempts; one of them cut short (its lease ran
    # out), which leaves it out. acme/bad's three were refused by the SSRF guard: never
    # sent, so never timed.
    await db.execute(
        """
        UPDATE relay.attempts a
        SET duration_ms = v.ms, error_code = v.code,
            http_status = CASE WHEN v.code IS NULL THEN a.http_status END
        FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM relay.attempts
              WHERE destination_id = $1) o
        JOIN (VALUES (1, 10, NULL), (2, 40, NULL), (3, 20, NULL), (4, 50, NULL),
                     (5, 60000, 'lease_expired')) v(n, ms, code) ON v.n = o.n
        WHERE a.id = o.id
        """,
        ok,
    )
    await db.execute(
        "UPDATE relay.attempts SET error_code = 'blocked_address', duration_ms = 0,"
        " http_status = NULL WHERE destination_id = $1",
        bad,
    )
    latencies = ["avg_latency", "p50_latency", "p95_latency", "p99_latency"]
    result = await sdk.metrics.get_attempt_metrics_async(
        request={
            "time": window(),
            "measures": ["count", *latencies],
            "dimensions": ["destination_id"],
            "filters[tenant_id]": "acme",
        }
    )
    got = by(result, "destination_id")
    timed = [10.0, 40.0, 20.0, 50.0]
    assert got[(ok,)]["count"] == 5
    assert got[(ok,)]["avg_latency"] == pytest.approx(30.0)
    for name, fraction in (("p50_latency", 0.5), ("p95_latency", 0.95), ("p99_latency", 0.99)):
        assert got[(ok,)][name] == pytest.approx(percentile(timed, fraction)), name
    # No timed attempt in the group: null, not 0.
    assert got[(bad,)] == {"count": 3} | dict.fromkeys(latencies)

    # The attempt itself says the same: latency_ms null when not timed.
    attempts = await sdk.attempts.list_async(request={"destination_id": [ok, bad]})
    by_code = {(a.code, a.latency_ms) for a in attempts.models or []}
    assert ("lease_expired", None) in by_code and ("blocked_address", None) in by_code
    assert {("200", ms) for ms in (10, 40, 20, 50)} <= by_code

    # Without dimensions too: a window whose attempts were never timed has null latencies.
    whole = await sdk.metrics.get_attempt_metrics_async(
        request={"time": window(), "measures": latencies, "filters[destination_id]": bad}
    )
    assert [p.metrics for p in whole.data or []] == [dict.fromkeys(latencies)]


async def test_a_tenant_token_sees_its_own_tenant_only(
    sdk: Outpost, relay: Any, history: dict[str, str]
) -> None:
    token = await sdk.tenants.get_token_async(tenant_id="acme")
    url = str(relay.make_url("/api/v1"))
    async with Outpost(api_key=token.token, server_url=url) as scoped:
        mine = await scoped.metrics.get_event_metrics_async(
            request={"time": window(), "measures": "count"}
        )
        assert [p.metrics for p in mine.data or []] == [{"count": 5}]
        attempts = await scoped.metrics.get_attempt_metrics_async(
            request={"time": window(), "measures": "count"}
        )
        assert [p.metrics for p in attempts.data or []] == [{"count": 8}]
        for request in (
            {"time": window(), "measures": "count", "dimensions": "tenant_id"},
            {"time": window(), "measures": "count", "filters[tenant_id]": "globex"},
        ):
            with pytest.raises(errors.APIErrorResponse) as forbidden:
                await scoped.metrics.get_event_metrics_async(request=request)
            assert forbidden.value.status_code == 403


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("measures=count", "time[start]"),
        (
            "time[start]=2026-01-02T00:00:00Z&time[end]=2026-01-01T00:00:00Z&measures=count",
            "time[end]",
        ),
        ("time[start]=yesterday&time[end]=2026-01-01T00:00:00Z&measures=count", "time[start]"),
        ("time[start]=2026-01-01&time[end]=2026-01-02", "measures"),
        ("time[start]=2026-01-01&time[end]=2026-01-02&measures=p99", "measures"),
        (
            "time[start]=2026-01-01&time[end]=2026-01-02&measures=count&dimensions=color",
            "dimensions",
        ),
        (
            "time[start]=2026-01-01&time[end]=2026-01-02&measures=count&granularity=90s",
            "granularity",
        ),
        (
            "time[start]=2026-01-01&time[end]=2026-01-02&measures=count&granularity=1y",
            "granularity",
        ),
        (
            "time[start]=2026-01-01&time[end]=2026-01-02&measures=count&filters[color]=red",
            "filters[color]",
        ),
        (
            "time[start]=2026-01-01&time[end]=2026-01-02&measures=count&filters[manual]=yes",
            "filters[manual]",
        ),
        (
            "time[start]=2026-01-01&time[end]=2026-01-02&measures=count&filters[attempt_number]=x",
            "filters[attempt_number]",
        ),
    ],
)
async def test_bad_parameters_are_400s_that_name_them(
    relay: Any, http: Any, query: str, field: str
) -> None:
    url = relay.make_url(f"/api/v1/metrics/attempts?{query}")
    async with http.get(url, headers=admin_headers()) as resp:
        body = await resp.json()
    assert resp.status == 400, body
    assert body["status"] == 400 and field in body["message"] and body["data"] == [field]


@pytest.mark.parametrize(
    ("granularity", "at", "bucket"),
    [
        ("1h", "2026-03-02T14:59:59Z", "2026-03-02T14:00:00Z"),
        ("15m", "2026-03-02T14:44:00Z", "2026-03-02T14:30:00Z"),
        ("1d", "2026-03-02T23:30:00-05:00", "2026-03-03T00:00:00Z"),
        ("1w", "2026-03-08T12:00:00Z", "2026-03-02T00:00:00Z"),  # a Sunday: Monday's week
        ("1M", "2026-03-31T23:00:00Z", "2026-03-01T00:00:00Z"),
        ("3M", "2026-05-15T00:00:00Z", "2026-04-01T00:00:00Z"),
        ("12M", "2026-05-15T00:00:00Z", "2026-01-01T00:00:00Z"),
        # Before 1970 the month count is negative: still floored, not rounded to zero.
        ("3M", "1969-11-15T00:00:00Z", "1969-10-01T00:00:00Z"),
    ],
)
async def test_buckets_are_utc_and_weeks_start_on_monday(
    db: Any, granularity: str, at: str, bucket: str
) -> None:
    from relay.db.aggregates import bucket_sql, parse_granularity

    # The session's zone must not matter.
    await db.execute("SET TIME ZONE 'America/Los_Angeles'")
    found = await db.fetchval(
        f"SELECT {bucket_sql('$1::timestamptz', parse_granularity(granularity))}",
        datetime.fromisoformat(at),
    )
    assert found == datetime.fromisoformat(bucket)


async def test_an_event_dated_in_year_one_gets_a_bucket_not_a_500(
    sdk: Outpost, relay: Any, http: Any
) -> None:
    await sdk.tenants.upsert_async(tenant_id="acme")
    await sdk.publish_async(
        request={"tenant_id": "acme", "data": {}, "time": datetime(1, 1, 2, tzinfo=UTC)}
    )
    query = (
        "time[start]=0001-01-01T00:00:00Z&time[end]=0001-02-01T00:00:00Z"
        "&measures=count&granularity=3w"
    )
    async with http.get(
        relay.make_url(f"/api/v1/metrics/events?{query}"), headers=admin_headers()
    ) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    # date_bin puts it in a bucket that starts before year 1: clamped to the year's start.
    assert [(p["time_bucket"], p["metrics"]) for p in body["data"]] == [
        ("0001-01-01T00:00:00Z", {"count": 1})
    ]


async def test_unknown_time_keys_are_ignored_as_outpost_ignores_them(relay: Any, http: Any) -> None:
    query = "time[gte]=yesterday&time[start]=2026-01-01&time[end]=2026-01-02&measures=count"
    async with http.get(
        relay.make_url(f"/api/v1/metrics/attempts?{query}"), headers=admin_headers()
    ) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["data"] == [], body


async def test_attempt_numbers_group_in_numeric_order(
    sdk: Outpost, history: dict[str, str], db: Any
) -> None:
    # Later tries of one of the history's deliveries: 2 and 10 (as text, 10 sorts first).
    await db.execute(
        """
        INSERT INTO relay.attempts
            (delivery_id, event_seq, tenant_id, destination_id, number, status, duration_ms,
             started_at)
        SELECT delivery_id, event_seq, tenant_id, destination_id, n, 'failed', 1, started_at
        FROM (SELECT * FROM relay.attempts ORDER BY id LIMIT 1) a, unnest('{10, 2}'::int[]) n
        """
    )
    result = await sdk.metrics.get_attempt_metrics_async(
        request={"time": window(), "measures": "count", "dimensions": ["attempt_number"]}
    )
    points = [(p.dimensions or {}).get("attempt_number") for p in result.data or []]
    assert points == ["1", "2", "10"]
