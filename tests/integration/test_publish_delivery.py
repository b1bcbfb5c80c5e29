"""publish -> outbox -> dispatcher -> webhook -> attempt, through the real HTTP API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.support.receiver import Reply
from tests.support.relay import make_settings
from tests.support.relay import post_publish as publish

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def tenant_with(receiver_url: str, **dest: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": "acme",
            "destinations": [
                {"id": "orders", "url": receiver_url, "topics": ["order.created"], "secret": SECRET}
                | dest
            ],
        }
    ]


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_publish_is_delivered_signed_and_recorded(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    # Key order differs from sorted order on purpose: the receiver must get it as sent.
    data = {"zeta": 1, "alpha": {"y": [1, 2], "x": None}, "mid": "é"}
    status, body = await publish(
        http, server, {"tenant_id": "acme", "topic": "order.created", "data": data}
    )
    assert status == 202
    assert body["duplicate"] is False
    assert body["destination_ids"] == ["orders"]

    [request] = await receiver.wait_for(1)
    # Byte for byte what the producer sent (aiohttp's json.dumps spelling: spaces, \u00e9).
    assert request.body == json.dumps(data).encode()
    assert list(request.json()) == ["zeta", "alpha", "mid"]
    # The official Standard Webhooks verifier accepts the signature.
    Webhook(SECRET).verify(request.body, dict(request.headers))
    assert request.headers["webhook-id"] == body["id"]

    async def recorded() -> bool:
        return await db.fetchval("SELECT status FROM relay.deliveries") == "delivered"

    await wait_until(recorded)
    event = await db.fetchrow("SELECT * FROM relay.events")
    assert event["id"] == body["id"] and event["topic"] == "order.created"
    attempt = await db.fetchrow("SELECT * FROM relay.attempts")
    assert attempt["status"] == "success"
    assert attempt["http_status"] == 200
    assert attempt["number"] == 1
    assert attempt["response_body"] == "ok"
    assert attempt["duration_ms"] >= 0


async def test_a_receivers_cookie_is_not_sent_back(
    start_relay: Any, http: Any, receiver: Any, database_url: str
) -> None:
    """A relay is no browser: a Set-Cookie from one receiver must not ride along on later
    deliveries (which may be another tenant's, on the same host)."""
    receiver.reply = lambda n, path: Reply(headers={"Set-Cookie": "session=secret; Path=/"})
    # A host name: aiohttp's default jar ignores cookies from bare IP addresses anyway.
    url = receiver.url().replace("127.0.0.1", "localhost")
    server = await start_relay(make_settings(database_url, tenants=tenant_with(url)))
    for delivered in (1, 2):
        status, _body = await publish(
            http, server, {"tenant_id": "acme", "topic": "order.created", "data": {}}
        )
        assert status == 202
        # Counted before publishing: the delivery can arrive before the 202 is read.
        await receiver.wait_for(delivered)
    assert [r.headers.get("Cookie") for r in receiver.requests] == [None, None]


async def test_no_matching_destination_stores_event_without_outbox_rows(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    status, body = await publish(
        http, server, {"tenant_id": "acme", "topic": "user.deleted", "data": {"a": 1}}
    )
    assert status == 202
    assert body["destination_ids"] == []
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 1
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries") == 0
    await asyncio.sleep(0.3)
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"topic": "order.created", "data": {}}, "tenant_id is required"),
        ({"tenant_id": "acme", "topic": "order.created"}, "data is required"),
        (
            {"tenant_id": "acme", "topic": "order.created", "data": [1]},
            "data must be a JSON object",
        ),
        ({"tenant_id": "acme", "topic": 7, "data": {}}, "topic must be a string"),
        (
            {
                "tenant_id": "acme",
                "topic": "order.created",
                "data": {},
                "eligible_for_retry": "yes",
            },
            "eligible_for_retry must be true or false",
        ),
        (
            {"tenant_id": "acme", "topic": "order.created", "data": {}, "metadata": {"k": 1}},
            "metadata.k must be a string",
        ),
        # Values the model accepts but PostgreSQL would refuse: caught first, by name.
        ({"tenant_id": "acme", "topic": "t" * 9000, "data": {}}, "topic: string should have"),
        ({"tenant_id": "acme", "topic": "a\x00b", "data": {}}, "topic must not contain NUL"),
        (
            {"tenant_id": "acme", "data": {}, "metadata": {"k": "v\x00"}},
            "metadata keys and values must not contain NUL",
        ),
        (
            {"tenant_id": "acme", "data": {}, "time": "0001-01-01T00:00:00+01:00"},
            "time must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
        ),
        ({"tenant_id": "acme", "data": {}, "id": "a\nb"}, "id must not contain control"),
        ({"tenant_id": "acme", "data": {}, "topic": "t\x1f"}, "topic must not contain control"),
        ({"tenant_id": "acme", "data": {"k": "\x00"}}, "data must not contain NUL"),
        ({"tenant_id": "acme", "data": {"\x00": 1}}, "data must not contain NUL"),
    ],
)
async def test_bad_publish_body_is_422_naming_the_field_and_writes_nothing(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str, body: Any, problem: str
) -> None:
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    status, answer = await publish(http, server, body)
    assert status == 422
    assert answer["status"] == 422
    assert any(problem in line for line in answer["data"]), answer["data"]
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries") == 0


async def test_deeply_nested_data_is_4xx_and_writes_nothing(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    """orjson parses 1024 levels and writes 254. Past 1024 the body is not JSON to relay
    (400); past 254 `data` is refused naming it (422), since history could not answer
    with it. Never a 500, nothing written. tests/integration/test_poison_inputs.py has
    the limit itself."""
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    for depth, expected in ((300, 422), (1000, 422), (1100, 400)):
        body = b'{"tenant_id":"acme","data":{"a":' + b"[" * depth + b"]" * depth + b"}}"
        status, answer = await publish(http, server, None, data=body)
        assert status == expected, answer
        assert answer["status"] == expected
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0
    # Within the limit: stored as sent.
    data = b'{"a":' + b"[" * 250 + b"]" * 250 + b"}"
    status, answer = await publish(
        http, server, None, data=b'{"tenant_id":"acme","id":"deep","data":' + data + b"}"
    )
    assert status == 202, answer
    assert (
        await db.fetchval("SELECT data::text FROM relay.events WHERE id = 'deep'") == data.decode()
    )


async def test_an_authorization_header_that_is_not_utf8_is_401(
    start_relay: Any, receiver: Any, database_url: str
) -> None:
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    body = b'{"tenant_id":"acme","data":{}}'
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


async def test_non_json_body_is_400(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    status, answer = await publish(http, server, None, data=b"{not json")
    assert status == 400
    assert "not valid JSON" in answer["message"]
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
async def test_unknown_tenant_writes_nothing(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str, strict: bool
) -> None:
    """As Outpost: a 202 routed nowhere; with api.strict_publish, a 404. Either way
    nothing is stored (tests/integration/test_publish_semantics.py has the rest)."""
    settings = make_settings(
        database_url, tenants=tenant_with(receiver.url()), api={"strict_publish": strict}
    )
    server = await start_relay(settings)
    status, answer = await publish(http, server, {"tenant_id": "nobody", "data": {}})
    if strict:
        assert status == 404
        assert "nobody" in answer["message"]
    else:
        assert status == 202 and answer["destination_ids"] == []
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0


async def test_wrong_or_missing_key_is_401(
    start_relay: Any, http: Any, receiver: Any, database_url: str
) -> None:
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    url = server.make_url("/api/v1/publish")
    body = {"tenant_id": "acme", "data": {}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        async with http.post(url, json=body, headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["status"] == 401


async def test_same_id_twice_is_a_duplicate_and_queues_nothing_more(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    body = {"id": "evt-1", "tenant_id": "acme", "topic": "order.created", "data": {"n": 1}}
    status, first = await publish(http, server, body)
    assert (status, first["duplicate"], first["id"]) == (202, False, "evt-1")
    status, second = await publish(http, server, body | {"data": {"n": 2}})
    assert (status, second["duplicate"]) == (202, True)
    assert second["destination_ids"] == ["orders"]
    await receiver.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries") == 1


async def test_failed_delivery_is_retried_and_every_try_is_a_row(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=500, body="boom") if n == 0 else Reply()
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    await publish(http, server, {"tenant_id": "acme", "topic": "order.created", "data": {}})
    first, second = await receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]

    async def delivered() -> bool:
        return await db.fetchval("SELECT status FROM relay.deliveries") == "delivered"

    await wait_until(delivered)
    rows = await db.fetch(
        "SELECT number, status, http_status, response_body FROM relay.attempts ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [(1, "failed", 500, "boom"), (2, "success", 200, "ok")]


async def test_delivery_that_never_succeeds_ends_failed(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=503)
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    await publish(http, server, {"tenant_id": "acme", "topic": "order.created", "data": {}})

    async def failed() -> bool:
        return await db.fetchval("SELECT status FROM relay.deliveries") == "failed"

    await wait_until(failed)
    # The test schedule allows two retries: three tries in all.
    assert await db.fetchval("SELECT count(*) FROM relay.attempts") == 3
    assert len(receiver.requests) == 3


async def test_not_eligible_for_retry_means_one_try(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=500)
    server = await start_relay(make_settings(database_url, tenants=tenant_with(receiver.url())))
    body = {"tenant_id": "acme", "topic": "order.created", "data": {}, "eligible_for_retry": False}
    await publish(http, server, body)

    async def failed() -> bool:
        return await db.fetchval("SELECT status FROM relay.deliveries") == "failed"

    await wait_until(failed)
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 1


async def test_healthz_reports_database_and_dispatcher(
    start_relay: Any, http: Any, database_url: str
) -> None:
    server = await start_relay(make_settings(database_url))
    for path in ("/healthz", "/api/v1/healthz"):
        async with http.get(server.make_url(path)) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["status"] == "healthy"
        assert body["workers"]["database"]["status"] == "healthy"
        assert body["workers"]["dispatcher"]["status"] == "healthy"
