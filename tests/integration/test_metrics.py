"""GET /metrics: Prometheus figures that match what the database holds."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from relay.appkeys import METRICS
from tests.support.receiver import Reply
from tests.support.relay import admin_headers, make_settings


async def scrape(http: Any, server: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(server.make_url("/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_match_the_database(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any
) -> None:
    receiver.reply = lambda n, path: Reply(status=500) if path == "/bad" else Reply()
    tenants = [
        {
            "id": "acme",
            "destinations": [
                {"id": "good", "url": receiver.url("/good")},
                {"id": "bad", "url": receiver.url("/bad"), "topics": ["t.bad"]},
            ],
        }
    ]
    settings = make_settings(
        database_url, tenants=tenants, delivery={"retry": {"schedule_seconds": [0.1]}}
    )
    server = await start_relay(settings)
    for n in range(6):
        topic = "t.bad" if n % 2 else "t.good"
        body = {"id": f"e{n}", "tenant_id": "acme", "topic": topic, "data": {"n": n}}
        async with http.post(
            server.make_url("/api/v1/publish"), json=body, headers=admin_headers()
        ) as resp:
            assert resp.status == 202
    # A duplicate is acknowledged but not published again.
    async with http.post(
        server.make_url("/api/v1/publish"),
        json={"id": "e0", "tenant_id": "acme", "data": {}},
        headers=admin_headers(),
    ) as resp:
        assert (await resp.json())["duplicate"] is True

    async with asyncio.timeout(15):
        while await db.fetchval(
            "SELECT count(*) FROM relay.deliveries WHERE status IN ('pending', 'delivering')"
        ):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)

    m = await scrape(http, server)
    events = await db.fetchval("SELECT count(*) FROM relay.events")
    assert m[("relay_events_published_total", (("api", "outpost"),))] == events == 6
    finals = dict(await db.fetch("SELECT status, count(*) FROM relay.deliveries GROUP BY status"))
    assert m[("relay_deliveries_total", (("outcome", "delivered"),))] == finals["delivered"]
    assert m[("relay_deliveries_total", (("outcome", "failed"),))] == finals["failed"]
    attempts = dict(
        await db.fetch(
            "SELECT CASE WHEN status = 'success' THEN 'success' "
            "ELSE 'http_' || (http_status / 100) || 'xx' END, count(*) "
            "FROM relay.attempts GROUP BY 1"
        )
    )
    assert attempts == {"success": 6, "http_5xx": 6}  # good: 3 + bad's retried ones: 3 x 2
    assert m[("relay_attempts_total", (("outcome", "success"),))] == attempts["success"]
    assert m[("relay_attempts_total", (("outcome", "http_5xx"),))] == attempts["http_5xx"]
    assert m[("relay_delivery_latency_seconds_count", ())] == finals["delivered"]
    assert m[("relay_delivery_latency_seconds_sum", ())] > 0
    assert m[("relay_outbox_backlog", (("status", "pending"),))] == 0
    await server.close()

    # With no dispatcher, what is published stays pending, and the gauges say so.
    api_only = await start_relay(settings, dispatcher=False)
    for n in range(3):
        body = {"id": f"p{n}", "tenant_id": "acme", "topic": "t.bad", "data": {}}
        async with http.post(
            api_only.make_url("/api/v1/publish"), json=body, headers=admin_headers()
        ) as resp:
            assert resp.status == 202
    await asyncio.sleep(0.05)
    m = await scrape(http, api_only)
    pending = await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'pending'")
    assert pending == 6  # each to good ('*') and bad
    assert m[("relay_outbox_backlog", (("status", "pending"),))] == pending
    assert m[("relay_outbox_due", ())] == pending
    oldest = await db.fetchval(
        "SELECT extract(epoch FROM now() - min(created_at)) FROM relay.deliveries "
        "WHERE status = 'pending'"
    )
    assert abs(m[("relay_outbox_oldest_pending_age_seconds", ())] - float(oldest)) < 1.0


async def test_tries_cut_short_are_counted_as_their_attempt_rows_say(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any
) -> None:
    """A lease another dispatcher let expire, and a try this one's shutdown cut short:
    each becomes a failed attempt row, and relay_attempts_total counts it alike."""
    receiver.reply = lambda n, path: Reply(delay=30)
    tenants = [{"id": "acme", "destinations": [{"id": "slow", "url": receiver.url()}]}]
    settings = make_settings(
        database_url,
        tenants=tenants,
        delivery={"lease_seconds": 0.4, "shutdown_grace_seconds": 0.2},
    )
    api = await start_relay(settings, dispatcher=False)
    for n in range(2):
        body = {"id": f"e{n}", "tenant_id": "acme", "data": {"n": n}}
        async with http.post(
            api.make_url("/api/v1/publish"), json=body, headers=admin_headers()
        ) as resp:
            assert resp.status == 202
    # e0 was claimed by a dispatcher that died: its lease ran out a minute ago.
    await db.execute(
        """UPDATE relay.deliveries d SET status = 'delivering', attempts = 1,
               claim_token = gen_random_uuid(), lease_expires_at = now() - interval '1 minute'
           FROM relay.events e WHERE e.seq = d.event_seq AND e.id = 'e0'"""
    )

    server = await start_relay(settings)
    await receiver.wait_for(2, timeout=15)  # e1, and e0 once released
    m = await scrape(http, server)
    assert m[("relay_attempts_total", (("outcome", "lease_expired"),))] == 1
    await server.close()  # both in flight: the grace period cuts them short

    codes = dict(
        await db.fetch("SELECT error_code, count(*) FROM relay.attempts GROUP BY error_code")
    )
    assert codes == {"lease_expired": 1, "interrupted": 2}
    # The server is closed: read its registry directly.
    registry = server.app[METRICS].registry
    for code, count in codes.items():
        assert registry.get_sample_value("relay_attempts_total", {"outcome": code}) == count
