"""POST /api/v1/publish where Outpost answers 202 and relay used to refuse (issue 20).

By default relay answers as Outpost: a publish to an unknown tenant, or with a
``destination_id`` that is unknown, disabled, or whose topics or filter do not match,
is ``202 {"id", "duplicate": false, "destination_ids": []}``. An unknown tenant's event
is not stored; a known tenant's is, routed nowhere. ``api.strict_publish = true`` keeps
relay's stricter answers (404, 422), and writes nothing for them. Each case runs over
plain HTTP and, where the SDK calls it, through the official ``outpost_sdk``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from outpost_sdk import Outpost, errors

from relay.appkeys import METRICS
from tests.support.relay import ADMIN_KEY, admin_headers, make_settings
from tests.support.relay import post_publish as publish

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def tenants(url: str) -> list[dict[str, Any]]:
    """acme: "orders" (order.created only) and "off" (disabled); "big" (a filter) is
    added through the API by the fixture."""
    hook = {"url": url, "secret": SECRET}
    return [
        {
            "id": "acme",
            "destinations": [
                hook | {"id": "orders", "topics": ["order.created"]},
                hook | {"id": "off", "topics": "*", "enabled": False},
            ],
        }
    ]


@pytest.fixture(params=[False, True], ids=["default", "strict"])
def strict(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def relay(start_relay: Any, database_url: str, receiver: Any, http: Any, strict: bool) -> Any:
    settings = make_settings(
        database_url, tenants=tenants(receiver.url()), api={"strict_publish": strict}
    )
    server = await start_relay(settings)
    # A destination with a filter, through the API (the config file has no filters).
    body = {
        "id": "big",
        "type": "webhook",
        "topics": "*",
        "config": {"url": receiver.url("/big")},
        "filter": {"data": {"amount": {"$gte": 100}}},
    }
    url = server.make_url("/api/v1/tenants/acme/destinations")
    async with http.post(url, json=body, headers=admin_headers()) as resp:
        assert resp.status == 201, await resp.text()
    return server


@pytest.fixture
async def sdk(relay: Any) -> AsyncIterator[Outpost]:
    async with Outpost(api_key=ADMIN_KEY, server_url=str(relay.make_url("/api/v1"))) as client:
        yield client


async def stored(db: Any, event_id: str) -> list[tuple[str, list[str]]]:
    """(tenant, destinations it was routed to) for each stored event with this id."""
    rows = await db.fetch(
        "SELECT e.tenant_id, ARRAY(SELECT d.destination_id FROM relay.deliveries d"
        " WHERE d.event_seq = e.seq) AS routed FROM relay.events e WHERE e.id = $1",
        event_id,
    )
    return [(r["tenant_id"], list(r["routed"])) for r in rows]


async def test_unknown_tenant(relay: Any, http: Any, db: Any, strict: bool) -> None:
    body = {"id": "evt-ghost", "tenant_id": "nobody", "topic": "order.created", "data": {}}
    for _ in range(2):
        status, answer = await publish(http, relay, body)
        if strict:
            assert status == 404 and "nobody" in answer["message"]
        else:
            # Exactly Outpost's body; a repeat is not a duplicate: nothing was kept.
            assert (status, answer) == (
                202,
                {"id": "evt-ghost", "duplicate": False, "destination_ids": []},
            )
    # Stored nowhere: not in history, not as an idempotency key.
    assert await stored(db, "evt-ghost") == []
    assert await db.fetchval("SELECT count(*) FROM relay.event_keys") == 0
    async with http.get(
        relay.make_url("/api/v1/events/evt-ghost"), headers=admin_headers()
    ) as resp:
        assert resp.status == 404
    counted = relay.app[METRICS].registry.get_sample_value("relay_events_unknown_tenant_total")
    assert counted == (0 if strict else 2)


async def test_unknown_tenant_without_an_id_gets_a_new_id(
    relay: Any, http: Any, db: Any, strict: bool
) -> None:
    status, answer = await publish(http, relay, {"tenant_id": "nobody", "data": {"n": 1}})
    if strict:
        assert status == 404
    else:
        assert status == 202 and answer["id"].startswith("evt_")
        assert answer["duplicate"] is False and answer["destination_ids"] == []
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 0


@pytest.mark.parametrize(
    ("destination_id", "topic", "data", "refusal"),
    [
        ("nope", "order.created", {"amount": 500}, (404, "'nope' not found")),
        ("off", "order.created", {"amount": 500}, (422, "disabled")),
        ("orders", "user.deleted", {"amount": 500}, (422, "not subscribed")),
        # A filter that does not pass is no error in either mode: it depends on the data.
        ("big", "order.created", {"amount": 5}, None),
    ],
    ids=["unknown", "disabled", "topic-mismatch", "filter-mismatch"],
)
async def test_destination_id_that_gets_nothing(
    relay: Any,
    http: Any,
    db: Any,
    receiver: Any,
    strict: bool,
    destination_id: str,
    topic: str,
    data: dict[str, Any],
    refusal: tuple[int, str] | None,
) -> None:
    body = {
        "id": "evt-1",
        "tenant_id": "acme",
        "destination_id": destination_id,
        "topic": topic,
        "data": data,
    }
    status, answer = await publish(http, relay, body)
    if strict and refusal is not None:
        assert status == refusal[0] and refusal[1] in answer["message"], answer
        assert await stored(db, "evt-1") == []
        return
    assert (status, answer) == (202, {"id": "evt-1", "duplicate": False, "destination_ids": []})
    # A known tenant's event is kept, routed nowhere: history shows it and why.
    assert await stored(db, "evt-1") == [("acme", [])]
    async with http.get(relay.make_url("/api/v1/events/evt-1"), headers=admin_headers()) as resp:
        event = await resp.json()
    assert event["destination_id"] == destination_id and event["matched_destination_ids"] == []
    # It is a publish like any other: its id is now taken.
    status, again = await publish(http, relay, body)
    assert (status, again["duplicate"], again["destination_ids"]) == (202, True, [])
    await asyncio.sleep(0.3)
    assert receiver.requests == []


async def test_destination_id_that_matches_is_delivered(
    relay: Any, http: Any, receiver: Any, strict: bool
) -> None:
    body = {"tenant_id": "acme", "destination_id": "big", "topic": "x", "data": {"amount": 100}}
    status, answer = await publish(http, relay, body)
    assert (status, answer["destination_ids"]) == (202, ["big"])
    [request] = await receiver.wait_for(1, path="/big")
    assert request.json() == {"amount": 100}


async def test_the_sdk_sees_outposts_answers(sdk: Outpost, db: Any, strict: bool) -> None:
    request = {"tenant_id": "nobody", "topic": "order.created", "data": {"n": 1}}
    if strict:
        with pytest.raises(errors.NotFoundError):
            await sdk.publish_async(request=request)
        with pytest.raises(errors.NotFoundError):
            await sdk.publish_async(request={**request, "tenant_id": "acme", "destination_id": "x"})
        return
    ghost = await sdk.publish_async(request=request)
    assert ghost.destination_ids == [] and ghost.duplicate is False and ghost.id
    for destination_id in ("nope", "off", "orders"):
        answer = await sdk.publish_async(
            request={
                "tenant_id": "acme",
                "destination_id": destination_id,
                "topic": "user.deleted",
                "data": {},
            }
        )
        assert answer.destination_ids == [] and answer.duplicate is False
    assert await db.fetchval("SELECT count(*) FROM relay.events WHERE tenant_id = 'nobody'") == 0


async def test_with_a_topic_catalogue_star_is_published_everywhere(
    start_relay: Any, database_url: str, receiver: Any, http: Any
) -> None:
    """As Outpost: with TOPICS configured, `*` may be published (to every destination),
    "" and unknown topics may not."""
    settings = make_settings(
        database_url, tenants=tenants(receiver.url()), topics=["order.created"]
    )
    server = await start_relay(settings, dispatcher=False)
    status, answer = await publish(http, server, {"tenant_id": "acme", "topic": "*", "data": {}})
    assert (status, answer["destination_ids"]) == (202, ["orders"])
    for topic in ("", "user.deleted"):
        status, answer = await publish(
            http, server, {"tenant_id": "acme", "topic": topic, "data": {}}
        )
        assert status == 422 and "configured topics" in answer["message"], (topic, answer)
