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
        assert len((await resp.json())["ids"]) == 50


async def test_any_rfc3339_offset_is_taken_and_reads_back_as_the_same_instant(
    start_relay: Any, http: Any, database_url: str
) -> None:
    """RFC 3339 allows offsets up to 23:59; PostgreSQL refuses 16 hours or more. relay
    stores the instant (in UTC), so every offset works."""
    server = await start_relay(tenant_settings(database_url), dispatcher=False)
    body = {"tenant_id": "acme", "data": {}, "id": "e1", "time": "2026-01-01T00:00:00-23:59"}
    status, answer = await post_publish(http, server, body)
    assert status == 202, answer
    async with http.get(server.make_url("/api/v1/events/e1"), headers=admin_headers()) as r:
        assert (await r.json())["time"] == "2026-01-01T23:59:00Z"


async def test_ids_with_braces_and_slashes_can_be_read_back(
    start_relay: Any, http: Any, database_url: str
) -> None:
    """aiohttp's plain {name} route placeholder refuses braces: an event published with
    id "{" was found by the listing but GET /events/%7B answered 404."""
    server = await start_relay(tenant_settings(database_url), dispatcher=False)
    for event_id, path in (("{x}", "%7Bx%7D"), ("a/b", "a%2Fb"), ("50%", "50%25")):
        status, answer = await post_publish(
            http, server, {"tenant_id": "acme", "data": {}, "id": event_id}
        )
        assert status == 202, answer
        url = server.make_url("/api/v1/events/").with_path(f"/api/v1/events/{path}", encoded=True)
        async with http.get(url, headers=admin_headers()) as r:
            assert r.status == 200, (event_id, await r.text())
            assert (await r.json())["id"] == event_id


async def test_pod_api_keeps_numbers_as_sent_and_refuses_nul_naming_the_item(
    start_relay: Any, http: Any, receiver: Any, db: asyncpg.Connection, database_url: str
) -> None:
    """The pod API stored a serialization of the parsed data: -9223372036854775809 came
    back as -9.223372036854776e18. Now each item's data is stored as sent."""
    server = await start_relay(pod_settings(database_url, receiver), dispatcher=False)
    item = b'{"recipient":"%s","topic":"realestate/contact#add","data":' % USER.encode()
    data = b'{"big": -9223372036854775809, "pi": 3.14159265358979323846, "e": 1E400}'
    body = b"[" + item + b'{"n": 1}},\n  ' + item + data + b"}]"
    async with http.post(server.make_url("/publish/"), data=body, headers=headers()) as resp:
        assert resp.status == 400  # 1E400 is not a number orjson (or JSON's double) reads
    data = data.replace(b', "e": 1E400', b"")
    body = b"[" + item + b'{"n": 1}},\n  ' + item + data + b"}]"
    async with http.post(server.make_url("/publish/"), data=body, headers=headers()) as resp:
        assert resp.status == 201, await resp.text()
        second = (await resp.json())["ids"][1]
    async with http.get(second, headers={"x-api-key": KEY}) as resp:
        assert b'"data":' + data in await resp.read()
    stored = await db.fetchval(
        "SELECT data::text FROM relay.events WHERE body::text LIKE $1", f"%{second}%"
    )
    assert stored == data.decode()

    nul = item + b'{"k": "a\\u0000b"}}'
    async with http.post(
        server.make_url("/publish/"), data=b"[" + item + b"{}}," + nul + b"]", headers=headers()
    ) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "error": "data must not contain NUL (\\u0000) in a string or key: "
            "PostgreSQL cannot store it",
            "index": 1,
        }


async def test_a_host_header_that_is_not_a_host_is_a_400_not_a_500(
    start_relay: Any, receiver: Any, db: asyncpg.Connection, database_url: str
) -> None:
    """The pod API builds event ids from the Host header (without server.public_url); a
    byte that is not UTF-8 there answered 500, and a path or query went into the ids."""
    import asyncio

    server = await start_relay(pod_settings(database_url, receiver), dispatcher=False)
    body = orjson.dumps({"recipient": USER, "topic": "realestate/contact#add", "data": {}})
    for host in (b"\xff", b"evil.example/x?", b"a b"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /publish/ HTTP/1.1\r\nHost: "
            + host
            + b"\r\nx-api-key: "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body) + body
        )
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400"), (host, answer[:200])
        assert b"the Host header is not a host name" in answer
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0


async def test_ids_and_topics_with_control_characters_are_refused_on_every_path(
    start_relay: Any,
    http: Any,
    receiver: Any,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    """An id or topic is sent as an HTTP header (webhook-id, x-outpost-topic); with a
    control character it was stored and then failed every attempt as invalid_request."""
    server = await start_relay(pod_settings(database_url, receiver), dispatcher=False)
    item = {"recipient": USER, "topic": "realestate/contact\x01#add", "data": {}}
    async with http.post(
        server.make_url("/publish/"), data=orjson.dumps(item), headers=headers()
    ) as resp:
        assert resp.status == 400
        assert "topic must have the form" in (await resp.json())["error"]
    engine = create_engine(database_url, pool_size=1)
    try:
        for event in (
            Event("user", "t", b"{}", id="a\x1fb"),
            Event("user", "t\x7f", b"{}", id="ok"),
        ):
            async with engine.begin() as conn:
                with pytest.raises(ValidationFailed, match="must not contain control"):
                    await publish(conn, event)
    finally:
        await engine.dispose()
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0
