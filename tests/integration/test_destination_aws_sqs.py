"""aws_sqs destinations against moto's server (SQS's wire protocol, in this process): the
destination contract, then what is particular to SQS (Outpost's one ``metadata``
attribute, targets, validation) and to an HTTP client pooled per destination (its
connections reused and closed, a hung endpoint failing only its own deliveries, `relay
serve` delivering to it)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.contract import (
    SCHEDULE,
    Broker,
    Contract,
    DestinationContract,
    Received,
    wait_until,
)
from tests.support.moto import KEY, SECRET, KeepAlive, Moto
from tests.support.relay import ADMIN_KEY, RelayProcess, admin_headers, free_port, make_settings
from tests.support.tcpproxy import TcpProxy


class SqsBroker(Broker):
    type = "aws_sqs"
    extra = "aws"
    # A submodule relay imports (``None`` for the package alone would not stop the import
    # of a submodule already loaded).
    library = "aiobotocore.session"
    shared_modules = ("relay.delivery.aws",)
    refused_codes = frozenset({"queue_not_found"})
    sensitive = ("secret", SECRET)

    def __init__(self, moto: Moto, sqs: Any) -> None:
        self.moto, self.sqs = moto, sqs
        self.name = f"relay-test-{uuid.uuid4().hex[:12]}"
        self.missing = f"relay-test-missing-{uuid.uuid4().hex[:12]}"
        # Where relay sends (another endpoint when a test puts a proxy in between).
        self.endpoint = moto.endpoint
        self.queue_url = ""

    async def start(self) -> SqsBroker:
        self.queue_url = (await self.sqs.create_queue(QueueName=self.name))["QueueUrl"]
        return self

    def destination(self) -> dict[str, Any]:
        return {
            "config": {"queue_url": self.moto.queue_url(self.name, self.endpoint)},
            "credentials": {"key": KEY, "secret": SECRET},
        }

    async def receive(self, timeout: float = 10.0) -> Received:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got = await self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MessageAttributeNames=["All"],
                MaxNumberOfMessages=1,
                WaitTimeSeconds=1,
            )
            if got.get("Messages"):
                break
            if loop.time() > deadline:
                raise AssertionError(f"no message on {self.queue_url} within {timeout} s")
        [message] = got["Messages"]
        await self.sqs.delete_message(
            QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
        )
        attributes = message.get("MessageAttributes", {})
        metadata = attributes["metadata"]
        return Received(
            message["Body"].encode(),
            json.loads(metadata["StringValue"]),
            {"attributes": attributes, "metadata": metadata["StringValue"]},
        )

    async def refusing(self) -> dict[str, Any]:
        return {
            "config": {"queue_url": self.moto.queue_url(self.missing)},
            "credentials": {"key": KEY, "secret": SECRET},
        }

    async def stop_refusing(self) -> None:
        self.queue_url = (await self.sqs.create_queue(QueueName=self.missing))["QueueUrl"]

    def down(self) -> dict[str, Any]:
        return {
            "config": {
                "queue_url": self.moto.queue_url(self.name, f"http://127.0.0.1:{free_port()}")
            },
            "credentials": {"key": KEY, "secret": SECRET},
        }

    def config_change(self) -> dict[str, str]:
        return {"queue_url": self.moto.queue_url("another-queue")}


@pytest.fixture
async def moto() -> AsyncIterator[Moto]:
    async with Moto() as server:
        yield server


@pytest.fixture
async def broker(moto: Moto) -> AsyncIterator[SqsBroker]:
    async with moto.client("sqs") as sqs:
        yield await SqsBroker(moto, sqs).start()


class TestAwsSqs(DestinationContract):
    """The contract (tests/support/contract.py) against moto's SQS."""


async def relay_with(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: Broker, **delivery: Any
) -> Contract:
    settings = make_settings(
        database_url, delivery={"retry": {"schedule_seconds": SCHEDULE, "jitter": 0}} | delivery
    )
    return Contract(http, await start_relay(settings), db, broker)


async def test_the_metadata_is_one_attribute_of_json_as_go_writes_it(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: SqsBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    created = await relay.create(broker.destination(), delivery_metadata={"b": "<&>"})
    # A queue off amazonaws.com: the target is its URL, with no console link.
    assert created["target"] == broker.destination()["config"]["queue_url"]
    assert "target_url" not in created
    event_id = await relay.publish(b'{"id": 7}', topic="order.paid", metadata={"a": "\u00e9"})
    message = await broker.receive()
    assert message.body == b'{"id": 7}'
    # One attribute, a String, nothing else.
    assert list(message.extra["attributes"]) == ["metadata"]
    assert message.extra["attributes"]["metadata"]["DataType"] == "String"
    # Go's json.Marshal: keys sorted, compact, <, > and & escaped, UTF-8 kept.
    stamp = message.metadata["timestamp"]
    assert message.extra["metadata"] == (
        '{"a":"\u00e9","b":"\\u003c\\u0026\\u003e",'
        f'"event-id":"{event_id}","timestamp":"{stamp}","topic":"order.paid"}}'
    )
    # The attempt keeps SQS's message id.
    await wait_until(lambda: _delivered(relay, event_id))
    body = await db.fetchval("SELECT response_body FROM relay.attempts")
    assert set(orjson.loads(body)) == {"message_id"}


async def test_an_aws_queue_url_shows_its_console_and_names_its_region(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: SqsBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    url = "https://sqs.eu-west-2.amazonaws.com/123456789012/orders"
    created = await relay.create(
        {"config": {"queue_url": url}, "credentials": {"key": KEY, "secret": SECRET}},
        topics=["never.published"],
    )
    assert created["target"] == url
    assert created["target_url"] == (
        "https://eu-west-2.console.aws.amazon.com/sqs/v3/home?region=eu-west-2#/queues/"
        "https%3A%2F%2Fsqs.eu-west-2.amazonaws.com%2F123456789012%2Forders"
    )


async def test_bad_config_and_credentials_are_refused_naming_the_field(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: SqsBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    assert (await relay.call("PUT", "/tenants/acme"))[0] in (200, 201)
    cases = [
        ({"queue_url": "ftp://queue"}, {"key": KEY, "secret": SECRET},
         ["config.queue_url failed pattern validation"]),
        ({"queue_url": broker.queue_url, "endpoint": "localhost:4566"},
         {"key": KEY, "secret": SECRET}, ["config.endpoint failed pattern validation"]),
        ({"queue_url": broker.queue_url}, {"key": KEY},
         ["credentials.secret is required"]),
    ]  # fmt: skip
    for config, credentials, expected in cases:
        status, answer = await relay.call(
            "POST",
            "/tenants/acme/destinations",
            {"type": "aws_sqs", "topics": "*", "config": config, "credentials": credentials},
        )
        assert (status, answer["data"]) == (422, expected), answer
    # A session token (Outpost reads it, though its form does not list it) is a secret.
    token = "FwoGZXIvYXdzEBYaDEXAMPLETOKEN"
    values = broker.destination()
    values["credentials"]["session"] = token
    created = await relay.create(values)
    assert created["credentials"]["session"] == token[:4] + "*" * (len(token) - 4)
    # A merge-patch that breaks it is refused the same way.
    status, answer = await relay.call(
        "PATCH", f"/tenants/acme/destinations/{created['id']}", {"config": {"queue_url": ""}}
    )
    assert (status, answer["data"]) == (422, ["config.queue_url is required"])


async def test_one_connection_per_destination_reused_and_closed_when_relay_stops(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: SqsBroker
) -> None:
    # moto closes each connection after one answer; AWS keeps them open, as this front.
    async with KeepAlive(broker.moto.endpoint) as front, TcpProxy(*_address(front)) as proxy:
        broker.endpoint = f"http://127.0.0.1:{proxy.port}"
        # One delivery at a time: each finds the one connection free.
        relay = await relay_with(
            start_relay, database_url, http, db, broker, per_destination_concurrency=1
        )
        await relay.create(broker.destination())
        for n in range(20):
            await relay.publish(b'{"n": %d}' % n, topic="t")
        bodies = {(await broker.receive()).body for _ in range(20)}
        assert len(bodies) == 20
        assert proxy.accepted == 1  # twenty deliveries, one connection

        proxy.cut()  # the endpoint closed it (a load balancer's idle timeout, say)
        event_id = await relay.publish(b'{"after": 1}', topic="t")
        assert (await broker.receive(timeout=20)).body == b'{"after": 1}'
        await wait_until(lambda: _delivered(relay, event_id), timeout=20)
        assert proxy.accepted == 2
        assert proxy.open == 1

        await relay.server.close()

        async def closed() -> bool:
            return proxy.open == 0

        await wait_until(closed, timeout=10)


async def test_a_hung_endpoint_fails_its_own_deliveries_only(
    start_relay: Any,
    database_url: str,
    http: Any,
    db: Any,
    broker: SqsBroker,
    receiver: Any,
) -> None:
    async with TcpProxy(*_address(broker.moto)) as proxy:
        broker.endpoint = f"http://127.0.0.1:{proxy.port}"
        relay = await relay_with(start_relay, database_url, http, db, broker, timeout_seconds=1.0)
        await relay.create(broker.destination(), id="queue")
        await relay.create({"config": {"url": receiver.url("/hook")}}, type="webhook", id="hook")
        proxy.hang()
        stuck = [await relay.publish(b'{"n": %d}' % n, topic="t") for n in range(5)]
        # The webhook beside it is delivered meanwhile, each at once.
        await receiver.wait_for(5, path="/hook", timeout=15)

        async def timed_out() -> bool:
            rows = await relay.attempts(stuck[0], "queue")
            return bool(rows) and rows[0]["error_code"] == "timeout"

        await wait_until(timed_out, timeout=15)
        [first, *_] = await relay.attempts(stuck[0], "queue")
        assert first["status"] == "failed" and first["http_status"] is None
        proxy.resume()
        bodies = {(await broker.receive(timeout=30)).body for _ in range(5)}
        assert bodies == {b'{"n": %d}' % n for n in range(5)}

        async def all_delivered() -> bool:
            return all([await relay.delivery_status(i, "queue") == "delivered" for i in stuck])

        await wait_until(all_delivered, timeout=30)


async def test_an_endpoint_the_ssrf_guard_refuses_fails_at_once(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: SqsBroker
) -> None:
    settings = make_settings(database_url, delivery={"allow_private_networks": []})
    relay = Contract(http, await start_relay(settings), db, broker)
    # An IP literal, judged before the call; a name, judged by what it resolves to.
    await relay.create(broker.destination(), id="literal")
    broker.endpoint = broker.moto.endpoint.replace("127.0.0.1", "localhost")
    await relay.create(broker.destination(), id="name")
    event_id = await relay.publish(b"{}", topic="t")

    async def failed() -> bool:
        statuses = [await relay.delivery_status(event_id, d) for d in ("literal", "name")]
        return statuses == ["failed", "failed"]

    await wait_until(failed)
    [literal] = await relay.attempts(event_id, "literal")
    assert literal["error_code"] == "blocked_address"
    assert "127.0.0.1 is not a public address (loopback)" in literal["error_detail"]
    [name] = await relay.attempts(event_id, "name")
    assert name["error_code"] == "blocked_address"
    assert "is not a public address (loopback)" in name["error_detail"], name["error_detail"]


async def test_outposts_sdk_creates_one_and_reads_it_back(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: SqsBroker
) -> None:
    """outpost-sdk's typed aws_sqs destination (with the endpoint and session token its
    models carry), as a user of Outpost's SDK creates one."""
    from outpost_sdk import Outpost, models

    relay = await relay_with(start_relay, database_url, http, db, broker)
    token = "FwoGZXIvYXdzEBYaDEXAMPLETOKEN"
    queue_url = broker.destination()["config"]["queue_url"]
    url = str(relay.server.make_url("/api/v1"))
    async with Outpost(api_key=ADMIN_KEY, server_url=url) as sdk:
        await sdk.tenants.upsert_async(tenant_id="acme")
        created = await sdk.destinations.create_async(
            tenant_id="acme",
            body={
                "type": "aws_sqs",
                "topics": ["order.created"],
                "config": {"queue_url": queue_url, "endpoint": broker.moto.endpoint},
                "credentials": {"key": KEY, "secret": SECRET, "session": token},
            },
        )
        assert isinstance(created, models.DestinationAWSSQS)
        assert created.config.queue_url == queue_url
        assert created.config.endpoint == broker.moto.endpoint
        assert created.credentials.secret == SECRET[:4] + "*" * (len(SECRET) - 4)
        assert created.credentials.session == token[:4] + "*" * (len(token) - 4)
        assert created.target == queue_url
        await sdk.publish_async(
            request={"tenant_id": "acme", "topic": "order.created", "data": {"n": 1}}
        )
        message = await broker.receive()
        assert orjson.loads(message.body) == {"n": 1}
        fetched = await sdk.destinations.get_async(tenant_id="acme", destination_id=created.id)
        assert isinstance(fetched, models.DestinationAWSSQS)


def _address(server: Moto | KeepAlive) -> tuple[str, int]:
    host, port = server.endpoint.removeprefix("http://").split(":")
    return host, int(port)


async def _delivered(relay: Contract, event_id: str) -> bool:
    return await relay.delivery_status(event_id) == "delivered"


@pytest.mark.slow
async def test_relay_serve_as_users_start_it_delivers_to_sqs(
    tmp_path: Path, http: Any, db: Any, database_url: str, broker: SqsBroker
) -> None:
    """`relay serve` (uvloop and all defaults), an aws_sqs destination in its file with
    its secret from the environment."""
    port = free_port()
    config = tmp_path / "relay.toml"
    queue_url = broker.destination()["config"]["queue_url"]
    config.write_text(f"""
[server]
port = {port}
admin_api_key = "{ADMIN_KEY}"
health_port = 0

[delivery]
allow_private_networks = ["127.0.0.0/8"]

[[tenants]]
id = "acme"

[[tenants.destinations]]
id = "queue"
type = "aws_sqs"
config = {{ queue_url = "{queue_url}" }}
credentials = {{ key = "{KEY}" }}
credentials_env = {{ secret = "TEST_AWS_SECRET" }}
""")
    env = {"RELAY_DATABASE_URL": database_url, "TEST_AWS_SECRET": SECRET}
    serve = RelayProcess("serve", config, tmp_path / "serve.log", env)
    try:
        await serve.ready(f"http://127.0.0.1:{port}/healthz")
        async with http.post(
            f"http://127.0.0.1:{port}/api/v1/publish",
            json={"tenant_id": "acme", "topic": "order.created", "data": {"n": 1}},
            headers=admin_headers(),
        ) as resp:
            assert resp.status == 202, await resp.text()
        message = await broker.receive(timeout=20)
    finally:
        code = serve.stop()
    assert code == 0, serve.log
    assert orjson.loads(message.body) == {"n": 1}
    assert message.metadata["topic"] == "order.created"
    assert await db.fetchval("SELECT status FROM relay.attempts") == "success"
