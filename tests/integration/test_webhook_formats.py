"""Receivers verify relay's deliveries the way Outpost's users verify Outpost's: in the
outpost format with the verifier of Outpost's guide (``v0=`` hex HMAC of the raw body,
keyed by the secret string), in the standard format with the ``standardwebhooks``
package. Destinations come from the official outpost-sdk and the API; the topic and the
metadata reach the receiver in both formats."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from outpost_sdk import Outpost, models
from standardwebhooks import Webhook

from relay.config import load_settings
from tests.support.receiver import Receiver
from tests.support.relay import ADMIN_KEY, admin_headers, make_settings

OUTPOST_SECRET = re.compile(r"whsec_[0-9a-f]{64}")
STANDARD_SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")


def verify_signature(raw_body: bytes, signature_header: str | None, secret: str) -> bool:
    """Verbatim the Python verifier of Outpost's guide
    (docs/content/guides/verify-webhook-signatures.mdoc)."""
    if not signature_header or not signature_header.startswith("v0="):
        return False
    expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return any(
        hmac.compare_digest(candidate, expected) for candidate in signature_header[3:].split(",")
    )


@pytest.fixture
async def outpost_mode_relay(start_relay: Any, database_url: str, tmp_path: Path) -> Any:
    """A relay configured by the environment alone, with RELAY_WEBHOOK_MODE=outpost."""
    empty = tmp_path / "relay.toml"
    empty.write_text("")
    env = {
        "RELAY_WEBHOOK_MODE": "outpost",
        "RELAY_DATABASE_URL": database_url,
        "RELAY_ADMIN_API_KEY": ADMIN_KEY,
        "RELAY_PORT": "0",
        "RELAY_POLL_INTERVAL_SECONDS": "0.2",
        "RELAY_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8",
    }
    return await start_relay(load_settings(empty, env=env))


@pytest.fixture
async def sdk(outpost_mode_relay: Any) -> AsyncIterator[Outpost]:
    url = str(outpost_mode_relay.make_url("/api/v1"))
    async with Outpost(api_key=ADMIN_KEY, server_url=url) as client:
        yield client


async def test_outpost_mode_verifies_as_outposts_guide_says(
    sdk: Outpost, receiver: Receiver
) -> None:
    await sdk.tenants.upsert_async(tenant_id="acme")
    created = await sdk.destinations.create_async(
        tenant_id="acme",
        body={
            "type": "webhook",
            "topics": ["user.created"],
            "config": {"url": receiver.url("/hook")},
            "delivery_metadata": {"app-id": "relay-test"},
        },
    )
    assert isinstance(created, models.DestinationWebhook)
    secret = created.credentials.secret
    assert OUTPOST_SECRET.fullmatch(secret)  # as Outpost's default mode generates them
    assert created.config.model_dump(exclude_none=True) == {"url": receiver.url("/hook")}

    before = datetime.now(UTC).replace(microsecond=0)
    published = await sdk.publish_async(
        request={
            "tenant_id": "acme",
            "id": "evt-outpost-1",
            "topic": "user.created",
            "data": {"user_id": "usr_123", "email": "user@example.com"},
            "metadata": {"source": "signup-service"},
        }
    )
    assert published.destination_ids == [created.id]
    [request] = await receiver.wait_for(1)
    headers = request.headers
    assert verify_signature(request.body, headers.get("x-outpost-signature"), secret)
    assert request.json() == {"user_id": "usr_123", "email": "user@example.com"}
    assert headers["x-outpost-event-id"] == "evt-outpost-1"
    assert headers["x-outpost-topic"] == "user.created"
    sent = datetime.strptime(headers["x-outpost-timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert before <= sent.replace(tzinfo=UTC) <= datetime.now(UTC)
    assert headers["x-outpost-source"] == "signup-service"
    assert headers["x-outpost-app-id"] == "relay-test"
    assert not any(name.lower().startswith("webhook-") for name in headers)

    # Rotation through the SDK: both secrets verify until the previous one expires.
    rotated = await sdk.destinations.update_async(
        tenant_id="acme",
        destination_id=created.id,
        body={"type": "webhook", "credentials": {"rotate_secret": True}},
    )
    assert isinstance(rotated, models.DestinationWebhook)
    new_secret = rotated.credentials.secret
    assert OUTPOST_SECRET.fullmatch(new_secret) and new_secret != secret
    await sdk.publish_async(
        request={"tenant_id": "acme", "topic": "user.created", "data": {"n": 2}}
    )
    second = (await receiver.wait_for(2))[1]
    signature = second.headers["x-outpost-signature"]
    assert len(signature.split(",")) == 2
    assert verify_signature(second.body, signature, new_secret)
    assert verify_signature(second.body, signature, secret)


async def test_standard_mode_verifies_with_standardwebhooks(
    start_relay: Any, database_url: str, http: Any, receiver: Receiver
) -> None:
    relay = await start_relay(make_settings(database_url))
    url = str(relay.make_url("/api/v1"))
    async with Outpost(api_key=ADMIN_KEY, server_url=url) as sdk:
        await sdk.tenants.upsert_async(tenant_id="acme")
        created = await sdk.destinations.create_async(
            tenant_id="acme",
            body={
                "type": "webhook",
                "topics": "*",
                "config": {"url": receiver.url("/hook")},
                "delivery_metadata": {"app-id": "relay-test"},
            },
        )
        assert isinstance(created, models.DestinationWebhook)
        secret = created.credentials.secret
        assert STANDARD_SECRET.fullmatch(secret)  # whsec_ + base64 of 32 bytes
        await sdk.publish_async(
            request={
                "tenant_id": "acme",
                "id": "evt-standard-1",
                "topic": "user.created",
                "data": {"user_id": "usr_123"},
                "metadata": {"source": "signup-service"},
            }
        )
    [request] = await receiver.wait_for(1)
    headers = request.headers
    Webhook(secret).verify(request.body, dict(headers))
    assert headers["webhook-id"] == "evt-standard-1"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-topic"] == "user.created"
    assert headers["webhook-source"] == "signup-service"
    assert headers["webhook-app-id"] == "relay-test"
    # Outpost's standard mode repeats the event's metadata without the prefix.
    assert headers["source"] == "signup-service"
    assert "app-id" not in headers
    assert not any(name.lower().startswith("x-outpost-") for name in headers)


async def test_a_destination_chooses_its_format_through_the_api(
    start_relay: Any, database_url: str, http: Any, receiver: Receiver
) -> None:
    relay = await start_relay(make_settings(database_url))
    base = relay.make_url("/api/v1/tenants/acme")
    async with http.put(base, headers=admin_headers()) as resp:
        assert resp.status in (200, 201)

    async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with http.request(
            method, f"{base}{path}", json=body, headers=admin_headers()
        ) as resp:
            return resp.status, await resp.json()

    status, created = await call(
        "POST",
        "/destinations",
        {
            "id": "d1",
            "type": "webhook",
            "topics": "*",
            "config": {"url": receiver.url("/hook"), "webhook_mode": "outpost"},
        },
    )
    assert status == 201, created
    assert created["config"]["webhook_mode"] == "outpost"
    assert OUTPOST_SECRET.fullmatch(created["credentials"]["secret"])
    status, fetched = await call("GET", "/destinations/d1")
    assert fetched["config"] == {"url": receiver.url("/hook"), "webhook_mode": "outpost"}

    async def deliver(n: int) -> Any:
        async with http.post(
            relay.make_url("/api/v1/publish"),
            json={"tenant_id": "acme", "topic": "t", "data": {"n": n}, "metadata": {"k": "v"}},
            headers=admin_headers(),
        ) as resp:
            assert resp.status == 202
        return (await receiver.wait_for(n + 1))[n]

    secret = created["credentials"]["secret"]
    first = await deliver(0)
    assert verify_signature(first.body, first.headers["x-outpost-signature"], secret)
    assert first.headers["x-outpost-k"] == "v"

    # null (or "") gives it back to the global mode, here standard; GET no longer shows it.
    status, patched = await call("PATCH", "/destinations/d1", {"config": {"webhook_mode": None}})
    assert status == 200 and "webhook_mode" not in patched["config"]
    second = await deliver(1)
    Webhook(secret).verify(second.body, dict(second.headers))
    assert second.headers["webhook-k"] == "v"

    status, problem = await call(
        "PATCH", "/destinations/d1", {"config": {"webhook_mode": "default"}}
    )
    assert status == 422 and "config.webhook_mode" in str(problem)
