"""Operator events against a live relay: what the sinks receive when destinations fail,
recover, exhaust their retries and get disabled, and that the events commit with the
state change that causes them.

Each test runs relay in-process (API + dispatcher) on its own database, with real
receivers for the tenant's destinations and for the operator sinks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from relay import opevents
from relay.config import load_settings
from relay.db import operator_events, outbox
from relay.db.engine import asyncpg_url
from tests.support.receiver import Receiver, Reply
from tests.support.relay import admin_headers, make_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SINK_SECRET = "sink-secret"


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


def settings_for(
    database_url: str,
    receiver: Receiver,
    *,
    topics: Any = "*",
    auto_disable: int = 0,
    **sections: Any,
) -> Any:
    return make_settings(
        database_url,
        tenants=[
            {
                "id": "acme",
                "destinations": [
                    {"id": "flaky", "url": receiver.url("/flaky"), "secret": SECRET},
                    {"id": "ok", "url": receiver.url("/ok"), "secret": SECRET},
                ],
            }
        ],
        operator_events={
            "refresh_seconds": 0.1,
            "sinks": [
                {
                    "id": "ops",
                    "url": receiver.url("/ops"),
                    "topics": topics,
                    "secret": SINK_SECRET,
                    "webhook_mode": "outpost",
                }
            ],
        },
        delivery={
            "auto_disable_after_failures": auto_disable,
            "per_destination_concurrency": 1,
            "retry": {"schedule_seconds": [0.1, 0.1], "jitter": 0},
        },
        **sections,
    )


async def publish(http: Any, server: Any, **fields: Any) -> None:
    body = {"tenant_id": "acme", "topic": "order.created", "data": {"n": 1}} | fields
    async with http.post(
        server.make_url("/api/v1/publish"), json=body, headers=admin_headers()
    ) as resp:
        assert resp.status == 202, await resp.text()


async def operator_event_count(db: Any) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM relay.events WHERE tenant_id = $1", opevents.OPERATOR_TENANT
    )
    return count


def sink_events(receiver: Receiver) -> list[dict[str, Any]]:
    return [r.json() for r in receiver.on_path("/ops")]


def by_topic(events: list[dict[str, Any]], topic: str) -> list[dict[str, Any]]:
    return [e for e in events if e["topic"] == topic]


async def test_a_destination_failing_to_its_disable_tells_the_sink(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=500) if path == "/flaky" else Reply()
    settings = settings_for(
        database_url,
        receiver,
        topics=[opevents.CONSECUTIVE_FAILURE, opevents.DESTINATION_DISABLED],
        auto_disable=4,
    )
    server = await start_relay(settings)
    for n in range(3):
        await publish(http, server, data={"n": n}, destination_id="flaky")

    # 4 consecutive failures: alerts at 2 (50%), 3 (70%: ceil(2.8)), 4 (90% and 100%)...
    # 90% of 4 is ceil(3.6) = 4, the same count as 100%: Outpost alerts the highest level.
    await receiver.wait_for(3, path="/ops")
    await asyncio.sleep(0.5)
    events = sink_events(receiver)
    alerts = by_topic(events, opevents.CONSECUTIVE_FAILURE)
    assert [a["data"]["consecutive_failures"] for a in alerts] == [
        {"current": 2, "max": 4, "threshold": 50},
        {"current": 3, "max": 4, "threshold": 70},
        {"current": 4, "max": 4, "threshold": 100},
    ]
    (disabled,) = by_topic(events, opevents.DESTINATION_DISABLED)
    assert len(events) == 4
    row = await db.fetchrow("SELECT * FROM relay.destinations WHERE id = 'flaky'")
    assert row["disabled_at"] is not None
    data = disabled["data"]
    assert disabled["tenant_id"] == "acme" and data["tenant_id"] == "acme"
    assert data["reason"] == "consecutive_failure"
    assert data["destination"]["id"] == "flaky"
    assert data["destination"]["disabled_at"] is not None
    assert data["destination"]["config"] == {"url": receiver.url("/flaky")}
    assert data["attempt"]["status"] == "failed" and data["attempt"]["code"] == "500"
    assert data["attempt"]["attempt_number"] >= 1
    assert data["event"]["tenant_id"] == "acme" and data["event"]["topic"] == "order.created"
    assert isinstance(data["event"]["data"], dict)
    # The sink is in outpost mode: x-outpost-signature, v0= HMAC of the body.
    for request in receiver.on_path("/ops"):
        expected = hmac.new(SINK_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-outpost-signature"] == f"v0={expected}"
        assert request.headers["x-outpost-topic"] == request.json()["topic"]
    # The operator events are events of relay/operator, delivered to the sink.
    stored = await db.fetch(
        "SELECT e.topic, d.status FROM relay.events e JOIN relay.deliveries d"
        " ON d.event_seq = e.seq WHERE e.tenant_id = $1 ORDER BY e.seq",
        opevents.OPERATOR_TENANT,
    )
    assert len(stored) == 4 and {r["status"] for r in stored} == {"delivered"}


async def test_attempt_events_and_exhausted_retries(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=503) if path == "/flaky" else Reply()
    server = await start_relay(settings_for(database_url, receiver))
    await publish(http, server, id="evt-1", metadata={"k": "v"})

    # flaky: 3 failed attempts (retries exhausted); ok: one success.
    await receiver.wait_for(3 + 1 + 1, path="/ops")
    await asyncio.sleep(0.5)
    events = sink_events(receiver)
    (success,) = by_topic(events, opevents.ATTEMPT_SUCCESS)
    failed = by_topic(events, opevents.ATTEMPT_FAILED)
    (exhausted,) = by_topic(events, opevents.EXHAUSTED_RETRIES)
    assert [f["data"]["attempt"]["attempt_number"] for f in failed] == [1, 2, 3]
    assert exhausted["data"]["attempt"]["attempt_number"] == 3
    # Consecutive-failure alerts count to 100 (no auto-disable): none at 3.
    assert len(events) == 5
    assert success["data"]["destination"]["id"] == "ok"
    assert success["data"]["attempt"]["status"] == "success"
    assert success["data"]["attempt"]["code"] == "200"
    assert success["data"]["event"]["id"] == "evt-1"
    assert success["data"]["event"]["metadata"] == {"k": "v"}
    assert success["data"]["event"]["data"] == {"n": 1}
    # The attempt id is the attempt row's, as GET /attempts/{id} answers it.
    attempt_id = int(success["data"]["attempt"]["id"])
    row = await db.fetchrow("SELECT destination_id FROM relay.attempts WHERE id = $1", attempt_id)
    assert row["destination_id"] == "ok"
    assert {e["id"] for e in events} == {
        r["id"]
        for r in await db.fetch(
            "SELECT id FROM relay.events WHERE tenant_id = $1", opevents.OPERATOR_TENANT
        )
    }
    # Deliveries to the sink cause no operator events of their own.
    stored = await db.fetchval(
        "SELECT count(*) FROM relay.events WHERE tenant_id = $1", opevents.OPERATOR_TENANT
    )
    assert stored == 5


async def test_no_sink_wanting_a_topic_writes_nothing(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    settings = settings_for(database_url, receiver, topics=[opevents.DESTINATION_DISABLED])
    server = await start_relay(settings)
    await publish(http, server)
    await receiver.wait_for(2)
    await asyncio.sleep(0.5)
    assert receiver.on_path("/ops") == []
    count = await db.fetchval(
        "SELECT count(*) FROM relay.events WHERE tenant_id = $1", opevents.OPERATOR_TENANT
    )
    assert count == 0


async def test_a_410_disables_with_reason_gone(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=410) if path == "/flaky" else Reply()
    settings = settings_for(database_url, receiver, topics=[opevents.DESTINATION_DISABLED])
    server = await start_relay(settings)
    await publish(http, server, destination_id="flaky")
    (request,) = await receiver.wait_for(1, path="/ops")
    event = request.json()
    assert event["topic"] == opevents.DESTINATION_DISABLED
    assert event["data"]["reason"] == "gone"


# --- atomicity -----------------------------------------------------------------------


async def _claimed_failure(conn: asyncpg.Connection) -> outbox.Recorded:
    (claimed,) = await outbox.claim_due(conn, limit=1, lease_seconds=60, token=uuid.uuid4())
    now = datetime.now(UTC)
    return outbox.Recorded(
        claimed=claimed,
        attempt_status="failed",
        http_status=500,
        error_code=None,
        error_detail=None,
        response_body="no",
        duration_ms=1,
        started_at=now,
        next_status="pending",
        delay_seconds=60,
    )


async def test_the_disable_and_its_event_commit_together(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    """A recording transaction that fails after the events are written leaves neither
    the disabled destination nor the event; the same batch written again has both."""
    settings = settings_for(
        database_url, receiver, topics=[opevents.DESTINATION_DISABLED], auto_disable=1
    )
    server = await start_relay(settings, dispatcher=False)
    await publish(http, server, destination_id="flaky")
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        recorded = await _claimed_failure(conn)
        recorder = operator_events.Recorder(opevents.policy(settings), refresh_seconds=0)

        class Boom(Exception):
            pass

        async def then_fail(*args: Any) -> None:
            await recorder(*args)
            assert recorder.written == 1
            raise Boom

        with pytest.raises(Boom):
            async with conn.transaction():
                await outbox.record_outcomes(
                    conn, [recorded], auto_disable_after=1, after=then_fail
                )
        flaky = await db.fetchrow("SELECT disabled_at FROM relay.destinations WHERE id = 'flaky'")
        assert flaky["disabled_at"] is None
        assert await operator_event_count(db) == 0

        async with conn.transaction():
            disabled = await outbox.record_outcomes(
                conn, [recorded], auto_disable_after=1, after=recorder
            )
        assert [d.destination_id for d in disabled] == ["flaky"]
    finally:
        await conn.close()
    flaky = await db.fetchrow("SELECT disabled_at FROM relay.destinations WHERE id = 'flaky'")
    event = await db.fetchrow(
        "SELECT topic, data::text AS data FROM relay.events WHERE tenant_id = $1",
        opevents.OPERATOR_TENANT,
    )
    assert flaky["disabled_at"] is not None
    assert event["topic"] == opevents.DESTINATION_DISABLED
    data = orjson.loads(event["data"])["data"]
    assert data["destination"]["disabled_at"] is not None
    assert datetime.fromisoformat(data["disabled_at"]) == flaky["disabled_at"]
    queued = await db.fetchval(
        "SELECT count(*) FROM relay.deliveries WHERE tenant_id = $1 AND destination_id = 'ops'",
        opevents.OPERATOR_TENANT,
    )
    assert queued == 1


# --- config --------------------------------------------------------------------------


def test_a_sink_with_an_unknown_topic_stops_the_start(tmp_path: Any) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(
        '[[operator_events.sinks]]\nid = "ops"\nurl = "https://ops.example.com/"\n'
        'topics = ["alert.destination.disabled", "alert.destination.dissabled"]\n'
    )
    from relay.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    message = str(caught.value)
    assert str(path) in message
    assert "operator_events.sinks[0].topics" in message
    assert "alert.destination.dissabled" in message


async def test_a_batch_no_sink_wants_costs_no_statement(
    database_url: str, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sinks' topics are read once per refresh, not per batch; with no sink wanting
    the batch's events, nothing is written (delivery must not pay for the feature)."""
    statements: list[str] = []
    real_fetch = operator_events._fetch

    async def counting(conn: Any, statement: Any, params: Any) -> Any:
        statements.append("subscribed" if statement is operator_events.SUBSCRIBED else "write")
        return await real_fetch(conn, statement, params)

    monkeypatch.setattr(operator_events, "_fetch", counting)
    policy = opevents.Policy(max_failures=2, max_attempts=3)
    recorder = operator_events.Recorder(policy, refresh_seconds=3600)
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        await db.execute(
            "INSERT INTO relay.tenants (id) VALUES ('acme'), ($1)", opevents.OPERATOR_TENANT
        )
        await db.execute(
            "INSERT INTO relay.destinations (tenant_id, id, topics, url, secret)"
            " VALUES ('acme', 'd', '{*}', 'https://x.example/', 's')"
        )
        await db.execute(
            "INSERT INTO relay.events (tenant_id, id, topic, data) VALUES ('acme', 'e', 't', '{}');"
            "INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id)"
            " SELECT seq, 'acme', 'd' FROM relay.events"
        )
        failure = await _claimed_failure(conn)
        for _ in range(3):
            await recorder(conn, [failure], {}, [])
        assert statements == ["subscribed"]

        # A sink that wants other topics: still nothing written.
        await db.execute(
            "INSERT INTO relay.destinations (tenant_id, id, topics, url, secret)"
            " VALUES ($1, 'ops', '{attempt.success}', 'https://ops.example/', 's')",
            opevents.OPERATOR_TENANT,
        )
        recorder.subscriptions.refresh_seconds = 0
        await recorder(conn, [failure], {}, [])
        assert statements == ["subscribed", "subscribed"]
        await db.execute("UPDATE relay.destinations SET topics = '{attempt.failed}'")
        await recorder(conn, [failure], {}, [])
        assert statements == ["subscribed", "subscribed", "subscribed", "write"]
        assert recorder.written == 1
    finally:
        await conn.close()
