"""gcp_pubsub destinations against Google's own Pub/Sub emulator (started here; skipped,
naming its Debian package, where it is not installed): the destination contract, then
the message's shape and the service account key's checks (the contract's connection
tests hold for the client's one gRPC channel per destination).

The emulator checks no credentials, so what Google does with a key relay sends (and a
refused one) is not tested here; what relay does before sending is."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import orjson
import pytest
from google.api_core import exceptions as api
from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

from tests.support.contract import Broker, DestinationContract, Received, relay_with, wait_until
from tests.support.pubsub import PubSubEmulator

# What Outpost's own suite sends as a key: JSON with a type, no more (with an endpoint,
# nothing reads it).
SERVICE_ACCOUNT = '{"type": "service_account", "project_id": "relay-test"}'


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    """One emulator for the module (a JVM takes seconds to start); each test has its own
    project in it."""
    PubSubEmulator.skip_unless_installed()
    with PubSubEmulator(tmp_path_factory.mktemp("pubsub") / "emulator.log") as running:
        yield running


class PubSubBroker(Broker):
    type = "gcp_pubsub"
    extra = "gcp"
    library = "google.pubsub_v1"
    refused_codes = frozenset({"topic_not_found"})
    sensitive = ("service_account_json", SERVICE_ACCOUNT)

    def __init__(self, emulator: PubSubEmulator) -> None:
        self.emulator = emulator
        self.project = f"relay-test-{uuid.uuid4().hex[:10]}"
        self.topic = "orders"
        self.missing = "orders-later"
        self.subscription = ""
        self._channels: list[grpc.aio.Channel] = []

    def _channel(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.emulator.endpoint)
        self._channels.append(channel)
        return channel

    async def __aenter__(self) -> PubSubBroker:
        self.publisher = PublisherAsyncClient(
            transport=PublisherGrpcAsyncIOTransport(channel=self._channel())
        )
        self.subscriber = SubscriberAsyncClient(
            transport=SubscriberGrpcAsyncIOTransport(channel=self._channel())
        )
        self.subscription = await self.subscribed(self.topic)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in self._channels:
            await channel.close()

    async def subscribed(self, topic: str) -> str:
        """Make the topic and a subscription to it; the subscription's path."""
        path = f"projects/{self.project}/topics/{topic}"
        await self.publisher.create_topic(name=path)
        subscription = f"projects/{self.project}/subscriptions/{topic}-all"
        await self.subscriber.create_subscription(name=subscription, topic=path)
        return subscription

    def destination(self) -> dict[str, Any]:
        return self.via(self.emulator.port)

    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.emulator.port

    def via(self, port: int) -> dict[str, Any]:
        return {
            "config": {
                "project_id": self.project,
                "topic": self.topic,
                "endpoint": f"127.0.0.1:{port}",
            },
            "credentials": {"service_account_json": SERVICE_ACCOUNT},
        }

    async def pull(self, timeout: float = 10.0) -> Any:
        """The next message on the subscription, acknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no message on {self.subscription} within {timeout} s")
            try:
                answer = await self.subscriber.pull(
                    subscription=self.subscription, max_messages=1, timeout=min(left, 2.0)
                )
            except api.DeadlineExceeded:
                continue
            if answer.received_messages:
                [received] = answer.received_messages
                await self.subscriber.acknowledge(
                    subscription=self.subscription, ack_ids=[received.ack_id]
                )
                return received.message

    async def receive(self, timeout: float = 10.0) -> Received:
        message = await self.pull(timeout)
        return Received(
            bytes(message.data),
            {k.lower(): v for k, v in message.attributes.items()},
            {"message_id": message.message_id, "ordering_key": message.ordering_key},
        )

    async def refusing(self) -> dict[str, Any]:
        values = self.destination()
        values["config"]["topic"] = self.missing
        return values

    async def stop_refusing(self) -> None:
        self.subscription = await self.subscribed(self.missing)

    def config_change(self) -> dict[str, str]:
        return {"topic": "another-topic"}


@pytest.fixture
async def broker(emulator: PubSubEmulator) -> AsyncIterator[PubSubBroker]:
    async with PubSubBroker(emulator) as b:
        yield b


class TestPubSub(DestinationContract):
    """The contract (tests/support/contract.py) against Google's Pub/Sub emulator."""


async def test_a_message_has_outposts_attributes_and_its_id_is_on_the_attempt(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: PubSubBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    created = await relay.create(broker.destination(), topics=["order.created"])
    # Outpost's target: <project>/<topic>, and the topic's page in Google's console.
    assert created["target"] == f"{broker.project}/orders"
    assert created["target_url"] == (
        f"https://console.cloud.google.com/cloudpubsub/topic/detail/orders?project={broker.project}"
    )
    event_id = await relay.publish(
        b'{"id": 7}', topic="order.created", metadata={"data": "kept", "ordering_key": "too"}
    )
    message = await broker.pull()
    assert bytes(message.data) == b'{"id": 7}'
    # Only Outpost's metadata, and event metadata with names the high-level client refuses.
    assert set(message.attributes) == {
        "event-id", "topic", "timestamp", "data", "ordering_key",
    }  # fmt: skip
    assert message.attributes["event-id"] == event_id
    assert message.ordering_key == ""

    async def answered() -> bool:
        rows = await relay.attempts(event_id)
        return bool(rows) and rows[0]["status"] == "success"

    await wait_until(answered)
    [attempt] = await relay.attempts(event_id)
    # Outpost's response: the message id Pub/Sub gave, the topic and the project.
    assert orjson.loads(attempt["response_body"]) == {
        "message_id": message.message_id,
        "topic": "orders",
        "project": broker.project,
    }


async def test_a_service_account_key_is_checked_as_outpost_checks_it(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: PubSubBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    assert (await relay.call("PUT", "/tenants/acme"))[0] in (200, 201)
    config = {"project_id": "p", "topic": "t"}
    field = "credentials.service_account_json"
    for key, problem in (
        ("{not json", "format"),
        ('["a list"]', "format"),
        ('{"project_id": "p"}', "missing_type"),
        # relay's own: only a service account's key (see relay/delivery/gcp_pubsub.py).
        ('{"type": "external_account", "credential_source": {"file": "/etc/passwd"}}',
         "service_account"),
    ):  # fmt: skip
        status, answer = await relay.call(
            "POST",
            "/tenants/acme/destinations",
            {
                "type": "gcp_pubsub",
                "topics": "*",
                "config": config,
                "credentials": {"service_account_json": key},
            },
        )
        assert status == 422, answer
        assert answer["data"] == [f"{field} failed {problem} validation"]
    # An emulator's endpoint: the key is not read, so not checked (as in Outpost).
    values = broker.destination()
    values["credentials"]["service_account_json"] = "{not json"
    await relay.create(values)


async def test_a_key_google_auth_cannot_read_is_a_failed_attempt(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: PubSubBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    key = {
        "type": "service_account",
        "project_id": "p",
        "client_email": "relay@p.iam.gserviceaccount.com",
        "private_key": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    }
    await relay.create(
        {
            "config": {"project_id": "p", "topic": "t"},
            "credentials": {"service_account_json": orjson.dumps(key).decode()},
        }
    )
    event_id = await relay.publish(b"{}", topic="t")

    async def failed() -> bool:
        return bool(await relay.attempts(event_id))

    await wait_until(failed)
    [first, *_] = await relay.attempts(event_id)
    assert first["status"] == "failed" and first["error_code"] == "auth_failed"
    assert first["error_detail"].startswith("credentials.service_account_json: ")
