"""What an operator sees of each request and of the process: the access log (JSON in JSON
mode), HTTP metrics by route template and status, process metrics, no ``_created``
series, and database gauges read at most once per cache period however often scraped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.api.metrics import GAUGE_CACHE
from relay.logs import JsonFormatter
from tests.support.relay import admin_headers, make_settings

TENANTS = [{"id": "acme", "destinations": [{"id": "hook", "url": "http://127.0.0.1:9/"}]}]


async def scrape(http: Any, server: Any) -> tuple[str, dict[tuple[str, frozenset[Any]], float]]:
    async with http.get(server.make_url("/metrics")) as resp:
        assert resp.status == 200
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


async def test_every_request_leaves_a_log_line_and_a_metric_refusals_included(
    start_relay: Any, http: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.access")
    settings = make_settings(database_url, tenants=TENANTS, server={"max_body_bytes": 1000})
    server = await start_relay(settings, dispatcher=False)
    publish = server.make_url("/api/v1/publish")

    async with http.post(
        publish,
        data=b'{"tenant_id": "acme", "data": "' + b"x" * 2000 + b'"}',
        headers=admin_headers() | {"X-Request-Id": "producer-req-1"},
    ) as resp:
        assert resp.status == 413
        assert resp.headers["X-Request-Id"] == "producer-req-1"
    async with http.post(publish, json={"data": {}}, headers=admin_headers()) as resp:
        assert resp.status == 422
        generated = resp.headers["X-Request-Id"]
    async with http.post(
        publish, json={"tenant_id": "acme", "data": {}}, headers=admin_headers()
    ) as resp:
        assert resp.status == 202
    async with http.get(
        server.make_url("/api/v1/tenants/acme"),
        headers=admin_headers() | {"X-Request-Id": "not a sane\tid"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] != "not a sane\tid"
    async with http.get(server.make_url("/no/such/path%0Aforged?secret=1")) as resp:
        assert resp.status == 404

    lines = [orjson.loads(JsonFormatter().format(r)) for r in caplog.records]
    seen = [(e["method"], e["route"], e["status"]) for e in lines]
    assert seen == [
        ("POST", "/api/v1/publish", 413),
        ("POST", "/api/v1/publish", 422),
        ("POST", "/api/v1/publish", 202),
        ("GET", "/api/v1/tenants/{tenant_id}", 200),
        ("GET", "unmatched", 404),
    ]
    assert lines[0]["request_id"] == "producer-req-1"
    assert lines[1]["request_id"] == generated
    assert lines[3]["path"] == "/api/v1/tenants/acme"
    # As sent, percent-encoded: no forged line, and no query string.
    assert lines[4]["path"] == "/no/such/path%0Aforged"
    assert all("\n" not in r.getMessage() for r in caplog.records)
    assert all(e["level"] == "info" and e["logger"] == "relay.access" for e in lines)
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in lines)

    caplog.clear()
    text, m = await scrape(http, server)
    # The scrape itself is logged at DEBUG (probes and scrapers are frequent and dull).
    assert [(r.levelno, r.route) for r in caplog.records] == [  # type: ignore[attr-defined]
        (logging.DEBUG, "/metrics")
    ]

    def requests(route: str, method: str, status: str) -> float:
        labels = frozenset({"route": route, "method": method, "status": status}.items())
        return m[("relay_http_request_duration_seconds_count", labels)]

    assert requests("/api/v1/publish", "POST", "413") == 1
    assert requests("/api/v1/publish", "POST", "422") == 1
    assert requests("/api/v1/publish", "POST", "202") == 1
    assert requests("/api/v1/tenants/{tenant_id}", "GET", "200") == 1
    assert requests("unmatched", "GET", "404") == 1
    # Route templates, never raw paths: the label set stays bounded.
    assert "/api/v1/tenants/acme" not in text and "/no/such/path" not in text
    # The process itself.
    assert m[("process_cpu_seconds_total", frozenset())] > 0
    assert m[("process_resident_memory_bytes", frozenset())] > 0
    # No _created series, on counters or histograms.
    assert "_created" not in text
    assert ("relay_events_published_total", frozenset({("api", "outpost")})) in m


async def test_access_log_can_be_turned_off(
    start_relay: Any, http: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.access")
    settings = make_settings(database_url, logging={"access_log": False})
    server = await start_relay(settings, dispatcher=False)
    async with http.get(server.make_url("/healthz")) as resp:
        assert resp.status == 200
    _, m = await scrape(http, server)
    assert not caplog.records
    labels = frozenset({"route": "/healthz", "method": "GET", "status": "200"}.items())
    assert m[("relay_http_request_duration_seconds_count", labels)] == 1


async def test_database_gauges_are_read_once_per_cache_period(
    start_relay: Any, http: Any, database_url: str, db: Any
) -> None:
    """Ten scrapers at once, then more within the period: one query. Past it, the gauges
    are read again and show what was published meanwhile."""
    settings = make_settings(database_url, tenants=TENANTS, metrics={"database_cache_seconds": 1.0})
    server = await start_relay(settings, dispatcher=False)
    cache = server.app[GAUGE_CACHE]
    pending = frozenset({("status", "pending")})

    results = await asyncio.gather(*(scrape(http, server) for _ in range(10)))
    assert cache.reads == 1
    assert all(m[("relay_outbox_backlog", pending)] == 0 for _, m in results)

    async with http.post(
        server.make_url("/api/v1/publish"),
        json={"tenant_id": "acme", "data": {}},
        headers=admin_headers(),
    ) as resp:
        assert resp.status == 202
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'pending'") == 1
    _, m = await scrape(http, server)
    assert cache.reads == 1
    assert m[("relay_outbox_backlog", pending)] == 0  # cached: not read again yet

    await asyncio.sleep(1.1)
    _, m = await scrape(http, server)
    assert cache.reads == 2
    assert m[("relay_outbox_backlog", pending)] == 1
