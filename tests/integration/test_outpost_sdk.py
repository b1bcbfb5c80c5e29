"""The official outpost-sdk (1.x), unmodified, drives a live relay on a random port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from outpost_sdk import Outpost, errors, models
from standardwebhooks import Webhook

from tests.support.receiver import Reply
from tests.support.relay import ADMIN_KEY, make_settings


@pytest.fixture
async def relay(start_relay: Any, database_url: str) -> Any:
    return await start_relay(make_settings(database_url, topics=["order.created", "user.deleted"]))


@pytest.fixture
async def sdk(relay: Any) -> AsyncIterator[Outpost]:
    async with Outpost(api_key=ADMIN_KEY, server_url=str(relay.make_url("/api/v1"))) as client:
        yield client


async def wait_for_attempts(sdk: Outpost, count: int, **filters: Any) -> list[models.Attempt]:
    async with asyncio.timeout(10):
        while True:
            page = await sdk.attempts.list_async(request=filters)
            if len(page.models or []) >= count:
                return page.models or []
            await asyncio.sleep(0.05)


async def test_sdk_walkthrough(sdk: Outpost, receiver: Any) -> None:
    tenant = await sdk.tenants.upsert_async(tenant_id="acme", body={"metadata": {"plan": "pro"}})
    assert tenant.id == "acme" and tenant.metadata == {"plan": "pro"}
    assert tenant.destinations_count == 0

    created = await sdk.destinations.create_async(
        tenant_id="acme",
        body={
            "type": "webhook",
            "topics": ["order.created"],
            "config": {"url": receiver.url("/orders")},
        },
    )
    assert isinstance(created, models.DestinationWebhook)
    assert created.id.startswith("des_")
    secret = created.credentials.secret
    assert secret and secret.startswith("whsec_")
    listed = await sdk.destinations.list_async(tenant_id="acme")
    assert [d.id for d in listed] == [created.id]
    fetched = await sdk.tenants.get_async(tenant_id="acme")
    assert fetched.destinations_count == 1 and fetched.topics == ["order.created"]

    # Publish three events: the receiver gets each, signed with the generated secret.
    ids = []
    for n in range(3):
        published = await sdk.publish_async(
            request={
                "tenant_id": "acme",
                "topic": "order.created",
                "data": {"n": n, "b": "x", "a": [1, 2]},
                "metadata": {"source": "sdk"},
            }
        )
        assert published.duplicate is False and published.destination_ids == [created.id]
        ids.append(published.id)
    requests = await receiver.wait_for(3, path="/orders")
    for request in requests:
        Webhook(secret).verify(request.body, dict(request.headers))
    assert {r.json()["n"] for r in requests} == {0, 1, 2}
    assert list(requests[0].json()) == ["n", "b", "a"]

    # Events, newest first, two per page: next then prev lead back to the same pages.
    first = await sdk.events.list_async(request={"tenant_id": "acme", "limit": 2})
    assert first.pagination is not None and first.models is not None
    assert [e.id for e in first.models] == ids[::-1][:2]
    assert first.pagination.prev_cursor is None and first.pagination.next_cursor
    second = await sdk.events.list_async(
        request={"tenant_id": "acme", "limit": 2, "next_cursor": first.pagination.next_cursor}
    )
    assert second.models is not None and second.pagination is not None
    assert [e.id for e in second.models] == [ids[0]]
    assert second.pagination.next_cursor is None and second.pagination.prev_cursor
    back = await sdk.events.list_async(
        request={"tenant_id": "acme", "limit": 2, "prev_cursor": second.pagination.prev_cursor}
    )
    assert back.models is not None and [e.id for e in back.models] == ids[::-1][:2]
    event = await sdk.events.get_async(event_id=ids[1])
    assert event.data == {"n": 1, "b": "x", "a": [1, 2]}
    assert event.matched_destination_ids == [created.id]
    assert event.metadata == {"source": "sdk"}

    # Attempts, with pagination and includes, through both listings.
    attempts = await wait_for_attempts(sdk, 3, tenant_id="acme")
    assert {a.status for a in attempts} == {models.Status.SUCCESS}
    assert {a.code for a in attempts} == {"200"}
    page = await sdk.attempts.list_async(
        request={"tenant_id": "acme", "limit": 2, "include": ["event.data", "response_data"]}
    )
    assert page.models is not None and page.pagination is not None
    assert len(page.models) == 2 and page.pagination.next_cursor
    assert isinstance(page.models[0].event, models.EventFull | models.EventSummary)
    assert page.models[0].response_data is not None
    assert page.models[0].response_data["status_code"] == 200
    rest = await sdk.attempts.list_async(
        request={"tenant_id": "acme", "limit": 2, "next_cursor": page.pagination.next_cursor}
    )
    assert rest.models is not None and len(rest.models) == 1
    scoped = await sdk.destinations.list_attempts_async(
        request={"tenant_id": "acme", "destination_id": created.id, "event_id": ids[2]}
    )
    assert scoped.models is not None and [a.event_id for a in scoped.models] == [ids[2]]
    one = await sdk.attempts.get_async(attempt_id=scoped.models[0].id or "")
    assert one.event_id == ids[2] and one.attempt_number == 1 and one.manual is False

    # A manual retry is one more attempt, marked manual.
    await sdk.retry_async(request={"event_id": ids[2], "destination_id": created.id})
    retried = await wait_for_attempts(sdk, 2, tenant_id="acme", event_id=ids[2])
    assert sorted(a.manual for a in retried if a.manual is not None) == [False, True]
    assert len(await receiver.wait_for(4, path="/orders")) == 4

    # Disabled: publishing skips it and a retry is refused; enabled again, it receives.
    disabled = await sdk.destinations.disable_async(tenant_id="acme", destination_id=created.id)
    assert disabled.disabled_at is not None
    skipped = await sdk.publish_async(
        request={"tenant_id": "acme", "topic": "order.created", "data": {"n": 9}}
    )
    assert skipped.destination_ids == []
    with pytest.raises(errors.APIError) as refused:
        await sdk.retry_async(request={"event_id": ids[0], "destination_id": created.id})
    assert refused.value.status_code == 400 and "disabled" in refused.value.body
    enabled = await sdk.destinations.enable_async(tenant_id="acme", destination_id=created.id)
    assert enabled.disabled_at is None
    delivered = await sdk.publish_async(
        request={"tenant_id": "acme", "topic": "order.created", "data": {"n": 10}}
    )
    assert delivered.destination_ids == [created.id]
    await receiver.wait_for(5, path="/orders")

    # Delete: the destination and then the tenant are gone; history stays queryable.
    await sdk.destinations.delete_async(tenant_id="acme", destination_id=created.id)
    with pytest.raises(errors.NotFoundError):
        await sdk.destinations.get_async(tenant_id="acme", destination_id=created.id)
    await sdk.tenants.delete_async(tenant_id="acme")
    with pytest.raises(errors.NotFoundError):
        await sdk.tenants.get_async(tenant_id="acme")
    history = await sdk.events.list_async(request={"tenant_id": "acme"})
    assert history.models is not None and len(history.models) == 5


async def test_sdk_update_rotate_and_filter(sdk: Outpost, receiver: Any) -> None:
    await sdk.tenants.upsert_async(tenant_id="acme")
    created = await sdk.destinations.create_async(
        tenant_id="acme",
        body={
            "id": "big-orders",
            "type": "webhook",
            "topics": "*",
            "config": {"url": receiver.url("/big")},
            "filter": {"data": {"amount": {"$gte": 100}}},
            "metadata": {"team": "a", "tier": "1"},
        },
    )
    assert created.id == "big-orders"
    old_secret = created.credentials.secret
    updated = await sdk.destinations.update_async(
        tenant_id="acme",
        destination_id="big-orders",
        body={
            "type": "webhook",
            "metadata": {"tier": None, "env": "prod"},
            "config": {"custom_headers": '{"x-team":"a"}'},
            "credentials": {"rotate_secret": True},
        },
    )
    assert isinstance(updated, models.DestinationWebhook)
    assert updated.metadata == {"team": "a", "env": "prod"}
    assert updated.config.url == receiver.url("/big")
    assert updated.config.custom_headers == '{"x-team":"a"}'
    assert updated.credentials.previous_secret == old_secret
    assert updated.credentials.secret != old_secret
    invalid_at = updated.credentials.previous_secret_invalid_at
    assert invalid_at is not None
    assert invalid_at - datetime.now(UTC) > timedelta(hours=23)

    small, big = [
        await sdk.publish_async(
            request={"tenant_id": "acme", "topic": "order.created", "data": {"amount": amount}}
        )
        for amount in (5, 500)
    ]
    assert small.destination_ids == [] and big.destination_ids == ["big-orders"]
    [request] = await receiver.wait_for(1, path="/big")
    assert request.headers["x-team"] == "a"
    # Both secrets sign while the old one is still valid.
    Webhook(old_secret or "").verify(request.body, dict(request.headers))
    Webhook(updated.credentials.secret or "").verify(request.body, dict(request.headers))


async def test_sdk_typed_errors(sdk: Outpost, relay: Any) -> None:
    async with Outpost(api_key="wrong", server_url=str(relay.make_url("/api/v1"))) as intruder:
        with pytest.raises(errors.UnauthorizedError) as unauthorized:
            await intruder.tenants.get_async(tenant_id="acme")
        assert unauthorized.value.status_code == 401
        with pytest.raises(errors.UnauthorizedError):
            await intruder.publish_async(request={"tenant_id": "acme", "data": {}})

    with pytest.raises(errors.NotFoundError) as missing:
        await sdk.tenants.get_async(tenant_id="nobody")
    assert "nobody" in missing.value.message
    # Publishing for an unknown tenant is no error, as in Outpost (api.strict_publish
    # makes it a 404: tests/integration/test_publish_semantics.py).
    ghost = await sdk.publish_async(
        request={"tenant_id": "nobody", "topic": "user.deleted", "data": {}}
    )
    assert ghost.destination_ids == []

    await sdk.tenants.upsert_async(tenant_id="acme")
    with pytest.raises(errors.APIErrorResponse) as invalid:
        await sdk.destinations.create_async(
            tenant_id="acme",
            body={"type": "webhook", "topics": ["nope"], "config": {"url": "ftp://x"}},
        )
    assert invalid.value.status_code == 422
    problems = invalid.value.data.data
    assert isinstance(problems, list) and len(problems) == 2
    assert any("config.url" in p for p in problems) and any("topics[0]" in p for p in problems)
    with pytest.raises(errors.BadRequestError) as bad_topic:
        await sdk.publish_async(request={"tenant_id": "acme", "topic": "nope", "data": {}})
    assert bad_topic.value.status_code == 422 and "nope" in bad_topic.value.message


async def test_tenant_token_sees_only_its_tenant(sdk: Outpost, relay: Any) -> None:
    for tenant in ("acme", "globex"):
        await sdk.tenants.upsert_async(tenant_id=tenant)
        await sdk.publish_async(
            request={"tenant_id": tenant, "topic": "user.deleted", "data": {"t": tenant}}
        )
    token = await sdk.tenants.get_token_async(tenant_id="acme")
    assert token.tenant_id == "acme" and token.token
    url = str(relay.make_url("/api/v1"))
    async with Outpost(api_key=token.token, server_url=url) as scoped:
        mine = await scoped.tenants.get_async(tenant_id="acme")
        assert mine.id == "acme"
        with pytest.raises(errors.APIErrorResponse) as forbidden:
            await scoped.tenants.get_async(tenant_id="globex")
        assert forbidden.value.status_code == 403
        tenants = await scoped.tenants.list_async(request={})
        assert [t.id for t in tenants.models or []] == ["acme"]
        events = await scoped.events.list_async(request={"tenant_id": ["acme", "globex"]})
        assert {e.tenant_id for e in events.models or []} == {"acme"}
        # Publishing and issuing tokens need the admin key: a 403, as Outpost answers.
        with pytest.raises(errors.UnauthorizedError) as publishing:
            await scoped.publish_async(request={"tenant_id": "acme", "data": {}})
        assert publishing.value.status_code == 403
        with pytest.raises(errors.APIErrorResponse) as issuing:
            await scoped.tenants.get_token_async(tenant_id="acme")
        assert issuing.value.status_code == 403


async def test_failed_attempts_show_their_code(sdk: Outpost, receiver: Any) -> None:
    receiver.reply = lambda n, path: Reply(status=503, body="busy")
    await sdk.tenants.upsert_async(tenant_id="acme")
    await sdk.destinations.create_async(
        tenant_id="acme",
        body={"type": "webhook", "topics": "*", "config": {"url": receiver.url()}},
    )
    published = await sdk.publish_async(
        request={
            "tenant_id": "acme",
            "topic": "user.deleted",
            "data": {},
            "eligible_for_retry": False,
        }
    )
    [attempt] = await wait_for_attempts(sdk, 1, event_id=published.id, status="failed")
    assert attempt.code == "503" and attempt.status == models.Status.FAILED
    detail = await sdk.attempts.get_async(attempt_id=attempt.id or "", include="response_data")
    assert detail.response_data is not None and detail.response_data["body"] == "busy"


async def test_configuration_reads_the_settings_in_force(
    start_relay: Any, database_url: str
) -> None:
    settings = make_settings(
        database_url,
        topics=["order.created"],
        delivery={
            "webhook_mode": "outpost",
            "timeout_seconds": 7.5,
            "auto_disable_after_failures": 20,
            "webhook": {"outpost": {"header_prefix": "x-acme-", "signature_encoding": "base64"}},
        },
    )
    relay = await start_relay(settings)
    url = str(relay.make_url("/api/v1"))
    async with Outpost(api_key=ADMIN_KEY, server_url=url) as sdk:
        config = await sdk.configuration.get_managed_config_async()
        assert config.topics == "order.created"
        assert config.destinations_webhook_mode == "default"  # Outpost's name for its format
        assert config.destinations_webhook_header_prefix == "x-acme-"
        assert config.destinations_webhook_signature_encoding == "base64"
        assert config.delivery_timeout_seconds == "7.5"
        assert config.alert_auto_disable_destination == "true"
        assert config.alert_consecutive_failure_count == "20"
        assert config.alert_exhausted_retries_window_seconds == "0"
        # make_settings' schedule: two retries.
        assert config.retry_schedule == "0.2,0.4" and config.max_retry_limit == "2"

        # Read-only: the refusal says where the settings live.
        with pytest.raises(errors.APIError) as refused:
            await sdk.configuration.update_managed_config_async(request={"TOPICS": "x"})
        assert refused.value.status_code == 405
        assert "RELAY_" in refused.value.body
        assert (await sdk.configuration.get_managed_config_async()).topics == "order.created"

    async with Outpost(api_key="wrong", server_url=url) as intruder:
        with pytest.raises(errors.UnauthorizedError):
            await intruder.configuration.get_managed_config_async()


async def test_health_schemas_and_topics(sdk: Outpost) -> None:
    health = await sdk.health.check_async()
    assert health is not None
    types = await sdk.schemas.list_destination_types_async()
    # Outpost's nine, then relay's own two, which the SDK reads as any other.
    assert [t.type for t in types][:2] == ["webhook", "hookdeck"] and len(types) == 11
    assert [t.type for t in types][9:] == ["nats_jetstream", "redis_streams"]
    rabbitmq = await sdk.schemas.get_destination_type_async(type_="rabbitmq")
    assert [(f.key, f.required) for f in rabbitmq.credential_fields or []] == [
        ("username", True),
        ("password", True),
    ]
    webhook = await sdk.schemas.get_destination_type_async(type_="webhook")
    assert webhook.type == "webhook"
    assert any(field.key == "url" and field.required for field in webhook.config_fields or [])
    assert await sdk.topics.list_async() == ["order.created", "user.deleted"]
