"""Inputs that used to be accepted and then broke what came after (issue 18): they are
refused at publish with a 4xx naming the field, and everything accepted can be read back
through the history API."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import orjson
import pytest

from relay.db.engine import create_engine
from relay.errors import ValidationFailed
from relay.publish import Event, publish
from tests.integration.test_pod_publish import KEY, USER, headers, pod_settings
from tests.support.relay import admin_headers, make_settings, post_publish

OUT_OF_RANGE_TIMES = ["0001-01-01T00:00:00+15:59", "9999-12-31T23:59:59-15:00"]


def nested(levels: int) -> dict[str, Any]:
    """An object ``levels`` deep, counting itself."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def tenant_settings(database_url: str) -> Any:
    return make_settings(
        database_url,
        tenants=[{"id": "acme", "destinations": [{"id": "d", "url": "http://127.0.0.1:9/"}]}],
    )


@pytest.mark.parametrize("time", OUT_OF_RANGE_TIMES)
async def test_a_time_outside_years_1_to_9999_is_refused_naming_time(
    start_relay: Any, http: Any, db: asyncpg.Connection, database_url: str, time: str
) -> None:
    """Defect 2: these got a 202, and the stored instant (1 BC, year 10000) could never be
    read back: its claim batch stalled forever and GET /events answered 500."""
    server = await start_relay(tenant_settings(database_url), dispatcher=False)
    body = {"tenant_id": "acme", "topic": "t", "data": {}, "id": "e1", "time": time}
    status, answer = await post_publish(http, server, body)
    assert status == 422, answer
    assert answer["data"] == [
        "time must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z (in UTC)"
    ]
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0
    # The edges themselves are fine, and read back.
    for n, edge in enumerate(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"]):
        body = {"tenant_id": "acme", "topic": "t", "data": {}, "id": f"edge{n}", "time": edge}
        status, answer = await post_publish(http, server, body)
        assert status == 202, answer
        async with http.get(
            server.make_url(f"/api/v1/events/edge{n}"), headers=admin_headers()
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["time"] == edge
    async with http.get(
        server.make_url("/api/v1/events?tenant_id=acme"), headers=admin_headers()
    ) as resp:
        assert resp.status == 200
        assert len((await resp.json())["models"]) == 2


async def test_the_python_api_and_the_database_refuse_an_unreadable_time(
    db: asyncpg.Connection, database_url: str, template_url: str
) -> None:
    from datetime import datetime, timedelta, timezone

    await db.execute("INSERT INTO relay.tenants (id) VALUES ('acme')")
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            late = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-15)))
            with pytest.raises(ValidationFailed, match="time must be between"):
                await publish(conn, Event("acme", "t", b"{}", id="e1", time=late))
    finally:
        await engine.dispose()
    # Any other writer (psql, an older relay) meets the constraint.
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO relay.events (tenant_id, id, data, time) "
            "VALUES ('acme', 'e2', '{}', '0001-01-01 00:00:00+15:59')"
        )


async def test_data_deeper_than_the_limit_is_refused_and_the_limit_reads_back(
    start_relay: Any, http: Any, db: asyncpg.Connection, database_url: str
) -> None:
    """Defect 4: data 255 to ~999 levels deep got a 202, then GET /events/<id> and every
    listing page holding it answered 500."""
    server = await start_relay(tenant_settings(database_url), dispatcher=False)
    for levels in (255, 300, 900):
        body = {"tenant_id": "acme", "topic": "t", "id": f"deep{levels}", "data": nested(levels)}
        # orjson refuses to write this deep; the body is built by hand.
        raw = orjson.dumps({k: v for k, v in body.items() if k != "data"})[:-1]
        raw += b',"data":' + b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1) + b"}"
        status, answer = await post_publish(http, server, None, data=raw)
        assert status == 422, answer
        assert answer["data"] == ["data nests deeper than 254 levels, relay's limit"]
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0

    deepest = nested(254)
    body = {"tenant_id": "acme", "topic": "t", "id": "deep254", "data": deepest}
    status, answer = await post_publish(http, server, body)
    assert status == 202, answer
    async with http.get(server.make_url("/api/v1/events/deep254"), headers=admin_headers()) as r:
        assert r.status == 200
        assert orjson.loads(await r.read())["data"] == deepest
    async with http.get(
        server.make_url("/api/v1/events?tenant_id=acme"), headers=admin_headers()
    ) as r:
        assert r.status == 200
        assert orjson.loads(await r.read())["models"][0]["data"] == deepest


async def test_events_deeper_than_the_limit_from_sql_still_read_back(
    start_relay: Any, http: Any, db: asyncpg.Connection, database_url: str
) -> None:
    """The relay.publish() SQL function takes any JSON PostgreSQL takes; the history API
    answers with the stored text, so even 900 levels read back."""
    server = await start_relay(tenant_settings(database_url), dispatcher=False)
    deep = b'{"a":' * 899 + b"{}" + b"}" * 899
    await db.execute("SELECT relay.publish('acme', 't', $1::json, id => 'sql900')", deep.decode())
    async with http.get(server.make_url("/api/v1/events/sql900"), headers=admin_headers()) as r:
        assert r.status == 200
        assert b'"data":' + deep in await r.read()


async def test_pod_api_refuses_deep_data_naming_the_item(
    start_relay: Any, http: Any, receiver: Any, db: asyncpg.Connection, database_url: str
) -> None:
    """Defect 4, pod API: this answered 500, and one such item failed a whole array."""
    server = await start_relay(pod_settings(database_url, receiver), dispatcher=False)
    item = b'{"recipient":"%s","topic":"realestate/contact#add","data":' % USER.encode()
    ok = item + b'{"n":1}}'
    deep = item + b'{"a":' * 254 + b"{}" + b"}" * 254 + b"}"
    async with http.post(
        server.make_url("/publish/"), data=b"[" + ok + b"," + deep + b"]", headers=headers()
    ) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "error": "data nests deeper than 254 levels, relay's limit",
            "index": 1,
        }
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0

    deepest = nested(254)
    async with http.post(
        server.make_url("/publish/"),
        # The standard library writes deeper JSON than orjson does.
        data=json.dumps({"recipient": USER, "topic": "realestate/contact#add", "data": deepest}),
        headers=headers(),
    ) as resp:
        assert resp.status == 201, await resp.text()
        url = (await resp.json())["id"]
    async with http.get(url, headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200
        assert orjson.loads(await resp.read())["data"] == deepest


async def test_pod_arrays_are_bounded_by_max_publish_items(
    start_relay: Any, http: Any, receiver: Any, db: asyncpg.Connection, database_url: str
) -> None:
    """Defect 3: a 14,000-item array took the API from 89 MB to 230 MB and stalled other
    publishes. Past server.max_publish_items the request is refused before any item is
    looked at."""
    settings = pod_settings(database_url, receiver, server={"max_publish_items": 50})
    server = await start_relay(settings, dispatcher=False)
    item = {"recipient": USER, "topic": "realestate/contact#add", "data": {"n": 1}}
    async with http.post(
        server.make_url("/publish/"), data=orjson.dumps([item] * 51), headers=headers()
    ) as resp:
        assert resp.status == 413
        assert await resp.json() == {
            "error": "the array holds 51 events; at most 50 per request "
            "(server.max_publish_items): split it"
        }
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0
    async with http.post(
        server.make_url("/publish/"), data=orjson.dumps([item] * 50), headers=headers()
    ) as resp:
        assert resp.status == 201
        assert len(await resp.json()) == 50
