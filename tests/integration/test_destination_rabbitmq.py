"""rabbitmq destinations against the real RabbitMQ at 127.0.0.1:5672 (guest/guest): the
destination contract (connections included), then what is particular to the type
(routing by topic, a changed exchange, the config file, an operator sink) and to a
publisher that outlives its deliveries (let go when idle, replaced when its client
library cancels under it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import orjson
import pytest

from relay.config import load_settings
from relay.delivery import pool
from relay.delivery.rabbitmq import RabbitMQPublisher
from tests.support.contract import (
    Broker,
    Contract,
    DestinationContract,
    Received,
    relay_with,
    wait_until,
)
from tests.support.receiver import Reply
from tests.support.relay import ADMIN_KEY, make_settings
from tests.support.tcpproxy import TcpProxy

HOST, PORT = "127.0.0.1", 5672


class RabbitBroker(Broker):
    type = "rabbitmq"
    extra = "rabbitmq"
    library = "aio_pika"
    refused_codes = frozenset({"exchange_not_found"})
    sensitive = ("password", "guest")

    def __init__(self) -> None:
        self.exchange = f"relay-test-{uuid.uuid4().hex[:12]}"
        self.missing = f"relay-test-missing-{uuid.uuid4().hex[:12]}"
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.queue: aio_pika.abc.AbstractQueue | None = None

    async def __aenter__(self) -> RabbitBroker:
        try:
            self.connection = await aio_pika.connect_robust(
                f"amqp://guest:guest@{HOST}:{PORT}/", timeout=5
            )
        except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            pytest.skip(f"RabbitMQ is not running at {HOST}:{PORT} (guest/guest): {exc}")
        self.channel = await self.connection.channel()
        self.queue = await self._bound(self.exchange)
        return self

    async def _bound(self, exchange_name: str) -> aio_pika.abc.AbstractQueue:
        """A topic exchange and a queue of this test's that gets all it routes."""
        assert self.channel is not None
        exchange = await self.channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, auto_delete=True
        )
        queue = await self.channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="#")
        return queue

    async def __aexit__(self, *exc: object) -> None:
        if self.connection is not None:
            await self.connection.close()

    def destination(self) -> dict[str, Any]:
        return self.via(PORT)

    def address(self) -> tuple[str, int]:
        return HOST, PORT

    def via(self, port: int) -> dict[str, Any]:
        return {
            "config": {"server_url": f"{HOST}:{port}", "exchange": self.exchange},
            "credentials": {"username": "guest", "password": "guest"},
        }

    async def receive(self, timeout: float = 10.0) -> Received:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (message := await self.queue.get(no_ack=True, fail=False)) is None:
            if loop.time() > deadline:
                raise AssertionError(f"no message on {self.queue.name} within {timeout} s")
            await asyncio.sleep(0.05)
        return Received(
            message.body,
            {k.lower(): str(v) for k, v in (message.headers or {}).items()},
            {"routing_key": message.routing_key, "content_type": message.content_type},
        )

    async def refusing(self) -> dict[str, Any]:
        values = self.destination()
        values["config"]["exchange"] = self.missing
        return values

    async def stop_refusing(self) -> None:
        self.queue = await self._bound(self.missing)

    def config_change(self) -> dict[str, str]:
        return {"exchange": "another-exchange"}


@pytest.fixture
async def broker() -> AsyncIterator[RabbitBroker]:
    async with RabbitBroker() as b:
        yield b


class TestRabbitMQ(DestinationContract):
    """The contract (tests/support/contract.py) against RabbitMQ."""


async def test_a_message_is_routed_by_its_topic_as_json(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: RabbitBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    created = await relay.create(broker.destination(), topics=["order.created", "order.paid"])
    # Outpost's target: the exchange, then the topics; no target_url.
    assert created["target"] == f"{broker.exchange} -> order.created, order.paid"
    assert "target_url" not in created
    assert created["config"]["tls"] == "false"  # as Outpost's Preprocess stores it
    await relay.publish(b'{"id": 7}', topic="order.paid")
    message = await broker.receive()
    assert message.extra == {"routing_key": "order.paid", "content_type": "application/json"}


async def test_a_changed_config_is_delivered_through_a_new_connection(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: RabbitBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    await relay.create(broker.destination(), id="q")
    await relay.publish(b'{"before": 1}', topic="t")
    assert (await broker.receive()).body == b'{"before": 1}'
    other = await broker._bound(broker.missing)
    status, _ = await relay.call(
        "PATCH", "/tenants/acme/destinations/q", {"config": {"exchange": broker.missing}}
    )
    assert status == 200
    broker.queue = other
    await relay.publish(b'{"after": 1}', topic="t")
    assert (await broker.receive()).body == b'{"after": 1}'


async def test_a_destination_in_the_config_file_with_its_password_from_the_environment(
    tmp_path: Path, start_relay: Any, database_url: str, http: Any, db: Any, broker: RabbitBroker
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(f"""
[server]
admin_api_key = "{ADMIN_KEY}"
port = 0
[database]
url = "{database_url}"
[delivery]
allow_private_networks = ["127.0.0.0/8"]

[[tenants]]
id = "acme"
[[tenants.destinations]]
id = "queue"
type = "rabbitmq"
topics = ["order.created"]
config = {{ server_url = "{HOST}:{PORT}", exchange = "{broker.exchange}", tls = false }}
credentials = {{ username = "guest" }}
credentials_env = {{ password = "TEST_RABBITMQ_PASSWORD" }}
""")
    settings = load_settings(config, env={"TEST_RABBITMQ_PASSWORD": "guest"})
    server = await start_relay(settings)
    relay = Contract(http, server, db, broker)
    event_id = await relay.publish(b'{"from": "file"}', topic="order.created")
    assert (await broker.receive()).body == b'{"from": "file"}'
    status, found = await relay.call("GET", "/tenants/acme/destinations/queue")
    assert status == 200 and found["credentials"] == {"username": "guest", "password": "*****"}
    assert found["config"]["tls"] == "false"
    await wait_until(lambda: _delivered(relay, event_id))
    # A wrong key names itself, and a missing variable stops the start.
    config.write_text(config.read_text().replace("server_url", "server"))
    with pytest.raises(Exception, match=r"destinations\[0\]\.config\.server_url: is required"):
        load_settings(config, env={"TEST_RABBITMQ_PASSWORD": "guest"})
    with pytest.raises(Exception, match="TEST_RABBITMQ_PASSWORD is not set"):
        load_settings(config, env={})


async def _delivered(relay: Contract, event_id: str) -> bool:
    return await relay.delivery_status(event_id) == "delivered"


async def test_an_operator_sink_of_the_config_file_may_be_a_rabbitmq_exchange(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: RabbitBroker, receiver: Any
) -> None:
    receiver.reply = lambda n, path: Reply(status=500)
    sink = {"id": "ops", "type": "rabbitmq", "topics": ["attempt.failed"]}
    settings = make_settings(
        database_url,
        operator_events={"refresh_seconds": 0.2, "sinks": [sink | broker.destination()]},
        tenants=[{"id": "acme", "destinations": [{"id": "hook", "url": receiver.url()}]}],
    )
    relay = Contract(http, await start_relay(settings), db, broker)
    event_id = await relay.publish(b'{"n": 1}', topic="order.created")
    message = await broker.receive(timeout=20)
    assert message.metadata["topic"] == "attempt.failed"
    body = orjson.loads(message.body)
    assert body["data"]["event"]["id"] == event_id
    assert body["data"]["attempt"]["status"] == "failed"


async def test_a_publisher_unused_for_a_while_lets_its_connection_go(
    start_relay: Any,
    database_url: str,
    http: Any,
    db: Any,
    broker: RabbitBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool, "IDLE_SECONDS", 0.5)
    monkeypatch.setattr(pool, "SWEEP_SECONDS", 0.1)
    async with TcpProxy(HOST, PORT) as proxy:
        relay = await relay_with(start_relay, database_url, http, db, broker)
        # "idle" connects through the proxy; "busy" straight to the broker.
        await relay.create(broker.destination(), id="busy")
        await relay.create(broker.via(proxy.port), id="idle")
        await relay.publish(b'{"to": "both"}', topic="t")
        await broker.receive()
        await broker.receive()
        assert proxy.open == 1
        await asyncio.sleep(1.0)
        # The next delivery (to the other destination) finds it idle and closes it.
        await relay.publish(b'{"to": "busy"}', topic="t", destination_id="busy")
        assert (await broker.receive()).body == b'{"to": "busy"}'

        async def closed() -> bool:
            return proxy.open == 0

        await wait_until(closed, timeout=10)
        # Used again, it connects again.
        await relay.publish(b'{"to": "idle"}', topic="t", destination_id="idle")
        assert (await broker.receive()).body == b'{"to": "idle"}'
        assert proxy.accepted == 2


async def test_a_cancellation_inside_the_client_library_is_a_failed_attempt_retried(
    start_relay: Any,
    database_url: str,
    http: Any,
    db: Any,
    broker: RabbitBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A library that cancels one of its own tasks under a send (as grpc and aiormq do when
    they tear a connection down) raises CancelledError though nobody cancelled the
    delivery: that is a failed attempt, retried, not a delivery left for its lease."""
    deliver = RabbitMQPublisher.deliver
    calls = 0

    async def cancelled_once(self: RabbitMQPublisher, claimed: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError("channel closed under the publish")
        return await deliver(self, claimed)

    monkeypatch.setattr(RabbitMQPublisher, "deliver", cancelled_once)
    relay = await relay_with(start_relay, database_url, http, db, broker)
    await relay.create(broker.destination())
    event_id = await relay.publish(b'{"n": 1}', topic="t")
    assert (await broker.receive(timeout=10)).body == b'{"n": 1}'
    await wait_until(lambda: _delivered(relay, event_id))
    first, second = await relay.attempts(event_id)
    assert first["status"] == "failed" and first["error_code"] == "internal_error"
    assert "cancelled" in first["error_detail"]
    # Retried on the schedule's first delay, not after a lease ran out.
    assert second["status"] == "success"
    assert second["started_at"] - first["started_at"] < timedelta(seconds=5)
