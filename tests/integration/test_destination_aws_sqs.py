"""aws_sqs destinations against moto's server (SQS's wire protocol, in this process): the
destination contract (connections included), then what is particular to SQS (Outpost's
one ``metadata`` attribute, targets, validation, the SSRF guard on its endpoint, Outpost's
SDK)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.support.contract import Contract, DestinationContract, Received, relay_with, wait_until
from tests.support.moto import KEY, SECRET, Moto, MotoBroker
from tests.support.relay import ADMIN_KEY, make_settings


class SqsBroker(MotoBroker):
    type = "aws_sqs"
    refused_codes = frozenset({"queue_not_found"})

    def __init__(self, moto: Moto, sqs: Any) -> None:
        super().__init__(moto)
        self.sqs = sqs
        self.name = f"relay-test-{uuid.uuid4().hex[:12]}"
        self.missing = f"relay-test-missing-{uuid.uuid4().hex[:12]}"
        self.queue_url = ""

    async def start(self) -> SqsBroker:
        self.queue_url = (await self.sqs.create_queue(QueueName=self.name))["QueueUrl"]
        return self

    def at(self, endpoint: str) -> dict[str, Any]:
        return {
            "config": {"queue_url": self.moto.queue_url(self.name, endpoint)},
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


async def test_an_endpoint_the_ssrf_guard_refuses_is_refused_and_one_that_became_so_fails_at_once(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: SqsBroker
) -> None:
    # Stored while loopback is open: an IP literal, and a name.
    server = await start_relay(make_settings(database_url))
    relay = Contract(http, server, db, broker)
    await relay.create(broker.destination(), id="literal")
    await relay.create(broker.at(broker.moto.endpoint.replace("127.0.0.1", "localhost")), id="name")
    await server.close()
    # relay started again with every private range closed: creating one is a 422 naming
    # the queue URL (the host requests go to), and the stored ones fail when delivered:
    # the IP literal judged before the call, the name by what it resolves to.
    settings = make_settings(database_url, delivery={"allow_private_networks": []})
    relay = Contract(http, await start_relay(settings), db, broker)
    status, answer = await relay.call(
        "POST",
        "/tenants/acme/destinations",
        {"type": "aws_sqs", "topics": "*", **broker.destination()},
    )
    assert status == 422, answer
    [problem] = answer["data"]
    assert problem.startswith("config.queue_url is refused by the SSRF guard: 127.0.0.1 is not")
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


async def _delivered(relay: Contract, event_id: str) -> bool:
    return await relay.delivery_status(event_id) == "delivered"
