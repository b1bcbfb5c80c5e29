"""HTTP, Python and SQL publishes route identically: one routing implementation
(relay/routing.py via relay.publish.route_event) behind all three.

Three tenants get the same destinations (topics, wildcards, filters, one disabled); the
same events are published to each through a different path, and the outbox rows must
match each other and the expected table."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from relay.db.engine import connect_raw, create_engine
from relay.publish import Event, publish
from tests.support.relay import admin_headers, make_settings

DESTINATIONS: list[dict[str, Any]] = [
    {"id": "all", "topics": "*"},
    {"id": "orders", "topics": ["order.*"]},
    {"id": "order-created", "topics": ["order.created"]},
    {"id": "realestate", "topics": ["realestate/*"]},
    {"id": "contact", "topics": ["realestate/contact"]},
    {"id": "big-orders", "topics": ["order.*"], "filter": {"data": {"amount": {"$gte": 100}}}},
    {"id": "eu", "topics": "*", "filter": {"metadata": {"region": "eu"}}},
    {"id": "off", "topics": "*", "disabled": True},
]

# (id, topic, data, metadata, destination_id) -> destinations expected.
EVENTS: list[tuple[str, str, dict[str, Any], dict[str, str], str | None, set[str]]] = [
    ("e1", "order.created", {"amount": 150}, {}, None,
     {"all", "orders", "order-created", "big-orders"}),
    ("e2", "order.paid", {"amount": 5}, {"region": "eu"}, None, {"all", "orders", "eu"}),
    ("e3", "realestate/contact#add", {}, {}, None, {"all", "realestate", "contact"}),
    ("e4", "realestate/listing#remove", {}, {"region": "eu"}, None, {"all", "realestate", "eu"}),
    ("e5", "user.created", {"amount": 500}, {"region": "us"}, None, {"all"}),
    ("e6", "order", {"amount": 100}, {}, None, {"all"}),
    ("e7", "order.created", {"amount": 1}, {}, "order-created", {"order-created"}),
    ("e8", "order.created", {"amount": 100}, {}, "big-orders", {"big-orders"}),
    ("e9", "order.created", {"amount": 99}, {}, "big-orders", set()),
]  # fmt: skip

PATHS = ("via-http", "via-python", "via-sql")


async def test_http_python_and_sql_publishes_route_identically(
    start_relay: Any, database_url: str, http: Any, receiver: Any, db: Any
) -> None:
    server = await start_relay(make_settings(database_url))
    for tenant in PATHS:
        async with http.put(
            server.make_url(f"/api/v1/tenants/{tenant}"), headers=admin_headers()
        ) as resp:
            assert resp.status in (200, 201), await resp.text()
        for d in DESTINATIONS:
            body = {
                "id": d["id"],
                "type": "webhook",
                "topics": d["topics"],
                "config": {"url": receiver.url()},
            } | ({"filter": d["filter"]} if "filter" in d else {})
            url = server.make_url(f"/api/v1/tenants/{tenant}/destinations")
            async with http.post(url, json=body, headers=admin_headers()) as resp:
                assert resp.status == 201, await resp.text()
            if d.get("disabled"):
                async with http.put(f"{url}/{d['id']}/disable", headers=admin_headers()) as resp:
                    assert resp.status == 200, await resp.text()

    answered: dict[str, dict[str, list[str]]] = {tenant: {} for tenant in PATHS}
    for event_id, topic, data, metadata, destination_id, _ in EVENTS:
        body = {"id": event_id, "tenant_id": "via-http", "topic": topic, "data": data}
        body |= {"metadata": metadata} if metadata else {}
        body |= {"destination_id": destination_id} if destination_id else {}
        async with http.post(
            server.make_url("/api/v1/publish"), json=body, headers=admin_headers()
        ) as resp:
            assert resp.status == 202, await resp.text()
            answered["via-http"][event_id] = (await resp.json())["destination_ids"]

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for event_id, topic, data, metadata, destination_id, _ in EVENTS:
                event = Event(
                    tenant_id="via-python",
                    topic=topic,
                    data=orjson.dumps(data),
                    id=event_id,
                    metadata=metadata,
                    destination_id=destination_id,
                )
                answered["via-python"][event_id] = (await publish(conn, event)).destination_ids
    finally:
        await engine.dispose()

    conn = await connect_raw(database_url)
    try:
        async with conn.transaction():
            for event_id, topic, data, metadata, destination_id, _ in EVENTS:
                row = await conn.fetchrow(
                    "SELECT * FROM relay.publish('via-sql', $1, $2::json, id => $3,"
                    " metadata => $4::jsonb, destination_id => $5)",
                    topic,
                    orjson.dumps(data).decode(),
                    event_id,
                    orjson.dumps(metadata).decode(),
                    destination_id,
                )
                assert dict(row) == {"id": event_id, "duplicate": False}
    finally:
        await conn.close()

    async with asyncio.timeout(10):
        while await db.fetchval("SELECT count(*) FROM relay.events WHERE routed_at IS NULL"):
            await asyncio.sleep(0.05)

    rows = await db.fetch(
        "SELECT e.tenant_id, e.id, d.destination_id FROM relay.events e"
        " LEFT JOIN relay.deliveries d ON d.event_seq = e.seq"
    )
    routed: dict[str, dict[str, set[str]]] = {tenant: {} for tenant in PATHS}
    for r in rows:
        chosen = routed[r["tenant_id"]].setdefault(r["id"], set())
        if r["destination_id"] is not None:
            chosen.add(r["destination_id"])

    expected = {event_id: want for event_id, *_, want in EVENTS}
    for tenant in PATHS:
        assert routed[tenant] == expected, tenant
    # The synchronous paths answer the same destinations, in the same order.
    assert answered["via-http"] == answered["via-python"]
    assert {k: set(v) for k, v in answered["via-http"].items()} == expected
