"""Every query of docs/sql.md runs against a database filled by real publishes and
deliveries, and answers what the docs say it answers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from relay import opevents
from relay.db import operator_events, outbox
from relay.db.engine import create_engine
from tests.support.receiver import Reply
from tests.support.relay import admin_headers, make_settings
from tests.support.sqldocs import bind, documented_queries


def test_docs_have_at_least_ten_named_queries() -> None:
    assert len(documented_queries()) >= 10


@pytest.fixture
async def history(start_relay: Any, http: Any, receiver: Any, database_url: str) -> dict[str, Any]:
    """acme has 'ok' (answers 200), 'broken' (always 500) and 'off' (disabled in the
    file). Published: evt-1 (order.created: ok + broken), evt-2 (user.created: ok),
    evt-3 (nobody.cares: no destination), and, with no dispatcher running, evt-4
    (order.created), of which one delivery is then claimed by a dispatcher that dies."""
    receiver.reply = lambda n, path: (
        Reply(status=500, body="nope") if path == "/broken" else Reply()
    )
    tenants = [
        {
            "id": "acme",
            "destinations": [
                {
                    "id": "ok",
                    "url": receiver.url("/ok"),
                    "topics": ["order.created", "user.created"],
                },
                {"id": "broken", "url": receiver.url("/broken"), "topics": ["order.created"]},
                {"id": "off", "url": receiver.url("/off"), "enabled": False},
            ],
        }
    ]
    settings = make_settings(database_url, tenants=tenants)
    server = await start_relay(settings)

    async def publish(event_id: str, topic: str, srv: Any) -> None:
        body = {"id": event_id, "tenant_id": "acme", "topic": topic, "data": {"n": event_id}}
        async with http.post(
            srv.make_url("/api/v1/publish"), json=body, headers=admin_headers()
        ) as resp:
            assert resp.status == 202

    await publish("evt-1", "order.created", server)
    await publish("evt-2", "user.created", server)
    await publish("evt-3", "nobody.cares", server)
    # ok gets evt-1 and evt-2; broken gets evt-1 three times (two retries).
    await receiver.wait_for(2, path="/ok")
    await receiver.wait_for(3, path="/broken")
    await asyncio.sleep(0.5)  # outcomes are recorded right after
    await server.close()

    api_only = await start_relay(settings, dispatcher=False)
    await publish("evt-4", "order.created", api_only)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            claimed = await outbox.claim_due(conn, limit=1, lease_seconds=0.01, token=uuid.uuid4())
        assert len(claimed) == 1
    finally:
        await engine.dispose()
    await asyncio.sleep(0.05)  # its lease runs out: a dispatcher that died
    return {"stuck_destination": claimed[0].destination_id}


async def run(db: Any, name: str, **values: str) -> list[dict[str, Any]]:
    rows = await db.fetch(bind(documented_queries()[name], **values))
    return [dict(r) for r in rows]


async def test_every_documented_query_answers_correctly(history: dict[str, Any], db: Any) -> None:
    checked: set[str] = set()

    async def q(name: str, **values: str) -> list[dict[str, Any]]:
        checked.add(name)
        return await run(db, name, **values)

    story = await q("event_story", tenant_id="acme", event_id="evt-1")
    # ok's and broken's first tries run concurrently: compare as a set, then check that
    # broken's tries come in order.
    assert sorted(
        (r["destination_id"], r["attempt_number"], r["status"], r["http_status"]) for r in story
    ) == [
        ("broken", 1, "failed", 500),
        ("broken", 2, "failed", 500),
        ("broken", 3, "failed", 500),
        ("ok", 1, "success", 200),
    ]
    assert [r["attempt_number"] for r in story if r["destination_id"] == "broken"] == [1, 2, 3]
    assert not any(r["manual"] for r in story)

    # As a tracing dispatcher writes them (test_tracing.py traces for real): evt-1's tries
    # share its publish span's trace.
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    await db.execute(
        "UPDATE relay.attempts a SET trace_id = $1 FROM relay.events e "
        "WHERE e.seq = a.event_seq AND e.id = 'evt-1'",
        trace,
    )
    traced = await q("trace_attempts", trace_id=trace)
    assert sorted((r["destination_id"], r["attempt_number"]) for r in traced) == [
        ("broken", 1),
        ("broken", 2),
        ("broken", 3),
        ("ok", 1),
    ]
    assert {r["event_id"] for r in traced} == {"evt-1"}

    state = await q("event_state", tenant_id="acme", event_id="evt-1")
    assert [(r["destination_id"], r["status"], r["attempts"]) for r in state] == [
        ("broken", "failed", 3),
        ("ok", "delivered", 1),
    ]

    failing = await q("failing_destinations")
    assert [r["destination_id"] for r in failing] == ["broken"]
    assert failing[0]["success_rate_1h"] == 0

    disabled = await q("disabled_destinations")
    assert [(r["destination_id"], r["disabled_reason"]) for r in disabled] == [
        ("off", "disabled in config file")
    ]

    backlog = {r["status"]: r for r in await q("backlog")}
    assert backlog["pending"]["deliveries"] == 1
    assert backlog["delivering"]["deliveries"] == 1
    assert backlog["delivering"]["expired_leases"] == 1

    stuck = await q("stuck_deliveries")
    assert [(r["event_id"], r["destination_id"]) for r in stuck] == [
        ("evt-4", history["stuck_destination"])
    ]

    oldest = await q("oldest_pending")
    assert [r["event_id"] for r in oldest] == ["evt-4"]
    assert oldest[0]["destination_id"] != history["stuck_destination"]

    reasons = await q("failure_reasons")
    assert [(r["reason"], r["attempts"], r["destinations"]) for r in reasons] == [
        ("http_500", 3, 1)
    ]

    slowest = await q("slowest_destinations")
    assert {r["destination_id"]: r["attempts"] for r in slowest} == {"ok": 2, "broken": 3}

    # Summed per destination: the attempts may straddle the turn of an hour.
    hourly: dict[str, list[int]] = {}
    for r in await q("hourly_attempts", tenant_id="acme"):
        totals = hourly.setdefault(r["destination_id"], [0, 0])
        totals[0] += r["attempts"]
        totals[1] += r["failed"]
    assert hourly == {"ok": [2, 0], "broken": [3, 3]}

    attempts = await q("destination_attempts", tenant_id="acme", destination_id="broken")
    assert [r["attempt_number"] for r in attempts] == [3, 2, 1]

    unrouted = await q("unrouted_events", tenant_id="acme")
    assert [r["id"] for r in unrouted] == ["evt-3"]

    failed = await q("failed_deliveries")
    assert [(r["event_id"], r["destination_id"], r["last_error"]) for r in failed] == [
        ("evt-1", "broken", "http_500")
    ]

    volume = {r["topic"]: r["events"] for r in await q("topic_volume")}
    assert volume == {"order.created": 2, "user.created": 1, "nobody.cares": 1}

    # An operator event about broken, written as the recorder writes one; no sink wants
    # it, so it has no delivery.
    disabled_event = opevents.envelope(
        opevents.DESTINATION_DISABLED,
        "acme",
        {"tenant_id": "acme", "reason": "gone"},
        now=datetime.now(UTC),
        destination=("acme", "broken"),
    )
    await db.execute(
        "INSERT INTO relay.tenants (id) VALUES ($1) ON CONFLICT DO NOTHING",
        opevents.OPERATOR_TENANT,
    )
    assert await operator_events.write(db, [disabled_event]) == 1
    told = await q("operator_events")
    assert [(r["topic"], r["tenant_id"], r["destination_id"], r["sink"]) for r in told] == [
        (opevents.DESTINATION_DISABLED, "acme", "broken", None)
    ]

    assert await q("controlled_destinations") == []
    await db.execute(
        "UPDATE relay.destinations SET throttle = 0.5, throttled_until = now() + interval"
        " '1 minute', throttle_reason = 'the receiver answered 429' WHERE id = 'broken'"
    )
    await db.execute("UPDATE relay.tenants SET max_in_flight = 3 WHERE id = 'acme'")
    controlled = await q("controlled_destinations")
    assert [(r["destination_id"], r["max_in_flight"], r["throttle"]) for r in controlled] == [
        ("broken", 3, 0.5),
        ("off", 3, 1.0),
        ("ok", 3, 1.0),
    ]
    assert controlled[0]["throttle_reason"] == "the receiver answered 429"

    assert await q("blocked_keys") == []
    # evt-4's delivery to ok, as a key's head that failed for good would be left.
    await db.execute(
        "UPDATE relay.deliveries_active SET status = 'pending', ordering_key = 'k',"
        " next_attempt_at = 'infinity', last_error = 'http_500', claim_token = NULL,"
        " lease_expires_at = NULL WHERE destination_id = 'ok'"
    )
    blocked = await q("blocked_keys")
    assert [(r["destination_id"], r["ordering_key"], r["event_id"]) for r in blocked] == [
        ("ok", "k", "evt-4")
    ]

    assert checked == set(documented_queries()), "a documented query has no check here"
