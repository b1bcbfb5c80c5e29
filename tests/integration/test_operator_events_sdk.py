"""outpost-sdk 1.7's 14 operator_events operations, unmodified, against a live relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from outpost_sdk import Outpost, errors, models

from relay import opevents
from tests.support.receiver import Receiver, Reply
from tests.support.relay import ADMIN_KEY, make_settings

SINK_TOPICS = [opevents.DESTINATION_DISABLED, opevents.ATTEMPT_FAILED]


@pytest.fixture
async def relay(start_relay: Any, database_url: str) -> Any:
    settings = make_settings(
        database_url,
        operator_events={"refresh_seconds": 0.1},
        delivery={"retry": {"schedule_seconds": [0.1], "jitter": 0}},
    )
    return await start_relay(settings)


@pytest.fixture
async def sdk(relay: Any) -> AsyncIterator[Outpost]:
    async with Outpost(api_key=ADMIN_KEY, server_url=str(relay.make_url("/api/v1"))) as client:
        yield client


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.05)


async def test_every_operator_events_operation(sdk: Outpost, receiver: Receiver) -> None:
    ops = sdk.operator_events
    types = await ops.list_destination_types_async()
    assert [t.type for t in types] == ["webhook"]
    assert await ops.list_destinations_async() == []

    sink = await ops.create_destination_async(
        request={"type": "webhook", "topics": SINK_TOPICS, "config": {"url": receiver.url("/ops")}}
    )
    assert isinstance(sink, models.DestinationWebhook)
    assert sink.topics == SINK_TOPICS and sink.credentials.secret
    assert (await ops.get_destination_async(destination_id=sink.id)).id == sink.id
    assert [d.id for d in await ops.list_destinations_async()] == [sink.id]

    updated = await ops.update_destination_async(
        destination_id=sink.id, body={"topics": [*SINK_TOPICS, opevents.SUBSCRIPTION_UPDATED]}
    )
    assert updated.topics == [*SINK_TOPICS, opevents.SUBSCRIPTION_UPDATED]
    assert (await ops.disable_destination_async(destination_id=sink.id)).disabled_at is not None
    assert (await ops.enable_destination_async(destination_id=sink.id)).disabled_at is None
    await asyncio.sleep(0.3)  # the dispatcher and the API read the sinks' topics again

    # A tenant's destination answers 410: relay disables it, and the sink hears of it.
    receiver.reply = lambda n, path: Reply(status=410) if path == "/gone" else Reply()
    await sdk.tenants.upsert_async(tenant_id="acme")
    gone = await sdk.destinations.create_async(
        tenant_id="acme",
        body={"type": "webhook", "topics": ["*"], "config": {"url": receiver.url("/gone")}},
    )
    await sdk.publish_async(request={"tenant_id": "acme", "topic": "order.created", "data": {}})
    arrived = await receiver.wait_for(3, path="/ops")
    topics = sorted(r.json()["topic"] for r in arrived)
    assert topics == sorted(
        [opevents.SUBSCRIPTION_UPDATED, opevents.ATTEMPT_FAILED, opevents.DESTINATION_DISABLED]
    )
    by_topic = {r.json()["topic"]: r.json() for r in arrived}
    assert by_topic[opevents.SUBSCRIPTION_UPDATED]["data"] == {
        "tenant_id": "acme",
        "topics": ["*"],
        "previous_topics": [],
        "destinations_count": 1,
        "previous_destinations_count": 0,
    }
    assert by_topic[opevents.DESTINATION_DISABLED]["data"]["destination"]["id"] == gone.id

    async def three_delivered() -> Any:
        page = await ops.list_attempts_async(request={"status": "success"})
        return page if len(page.models or []) == 3 else None

    attempts = await eventually(three_delivered)
    listed = await ops.list_events_async()
    assert {e.topic for e in listed.models or []} == set(topics)
    disabled = next(e for e in listed.models or [] if e.topic == opevents.DESTINATION_DISABLED)
    assert disabled.data is not None and disabled.data["topic"] == disabled.topic
    assert disabled.data["id"] == disabled.id
    assert (await ops.get_event_async(event_id=disabled.id)).id == disabled.id
    per_event = await ops.list_event_attempts_async(event_id=disabled.id)
    assert [a.event_id for a in per_event.models or []] == [disabled.id]
    first = (attempts.models or [])[0]
    assert (await ops.get_attempt_async(attempt_id=first.id)).id == first.id
    filtered = await ops.list_attempts_async(
        request={"event_id": disabled.id, "destination_id": sink.id}
    )
    assert [a.event_id for a in filtered.models or []] == [disabled.id]

    retried = await ops.retry_async(request={"event_id": disabled.id, "destination_id": sink.id})
    assert retried.success is True
    await receiver.wait_for(4, path="/ops")
    assert receiver.on_path("/ops")[-1].json()["id"] == disabled.id

    deleted = await ops.delete_destination_async(destination_id=sink.id)
    assert deleted.success is True
    with pytest.raises(errors.NotFoundError):
        await ops.get_destination_async(destination_id=sink.id)


async def test_bad_input_is_a_422_naming_the_field(sdk: Outpost, receiver: Receiver) -> None:
    ops = sdk.operator_events
    with pytest.raises(errors.APIErrorResponse) as caught:
        await ops.create_destination_async(
            request={
                "type": "webhook",
                "topics": ["alert.destination.disabled", "order.created"],
                "config": {"url": receiver.url("/ops")},
            }
        )
    assert caught.value.status_code == 422
    assert "topics[1]" in caught.value.body and "order.created" in caught.value.body
    with pytest.raises(errors.APIErrorResponse) as caught:
        await ops.create_destination_async(
            request={"type": "webhook", "topics": ["*"], "config": {"url": "ftp://x"}}
        )
    assert "config.url" in caught.value.body
    with pytest.raises(errors.NotFoundError):
        await ops.get_destination_async(destination_id="des_nope")
    with pytest.raises(errors.NotFoundError):
        await ops.retry_async(request={"event_id": "opev_nope", "destination_id": "des_nope"})


async def test_tenant_tokens_and_producers_cannot_reach_operator_events(
    sdk: Outpost, relay: Any
) -> None:
    await sdk.tenants.upsert_async(tenant_id="acme")
    token = (await sdk.tenants.get_token_async(tenant_id="acme")).token
    assert token
    async with Outpost(api_key=token, server_url=str(relay.make_url("/api/v1"))) as tenant:
        with pytest.raises(errors.APIError) as caught:
            await tenant.operator_events.list_destinations_async()
        assert caught.value.status_code == 403
    with pytest.raises(errors.BadRequestError) as refused:
        await sdk.publish_async(
            request={
                "tenant_id": opevents.OPERATOR_TENANT,
                "topic": opevents.DESTINATION_DISABLED,
                "data": {},
            }
        )
    assert "tenant_id" in str(refused.value) and "operator events" in str(refused.value)
    # relay's own tenant is out of the tenant routes' reach, even spelled with %2F.
    await sdk.operator_events.create_destination_async(
        request={"type": "webhook", "topics": ["*"], "config": {"url": "https://x.example/"}}
    )
    async with aiohttp.ClientSession() as http:
        for path in ("/api/v1/tenants/relay%2Foperator", "/api/v1/tenants/relay/operator"):
            async with http.get(
                relay.make_url(path).with_path(path, encoded=True),
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            ) as resp:
                assert resp.status == 404, (path, await resp.text())
