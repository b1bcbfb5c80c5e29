"""aws_s3 destinations against moto's server (S3's REST protocol, in this process): the
destination contract, then what is particular to S3 (Outpost's object: key from the
event's time and id or a JMESPath template, user metadata, content type, storage class,
SHA-256 checksum; a template that gives no key; validation)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.contract import DestinationContract, Received, relay_with, wait_until
from tests.support.moto import KEY, REGION, SECRET, Moto, MotoBroker


class S3Broker(MotoBroker):
    type = "aws_s3"
    refused_codes = frozenset({"bucket_not_found"})

    def __init__(self, moto: Moto, s3: Any) -> None:
        super().__init__(moto)
        self.s3 = s3
        self.bucket = f"relay-test-{uuid.uuid4().hex[:12]}"
        self.missing = f"relay-test-missing-{uuid.uuid4().hex[:12]}"
        self.reading = self.bucket
        self.seen: set[str] = set()

    async def start(self) -> S3Broker:
        await self.s3.create_bucket(Bucket=self.bucket)
        return self

    def at(self, endpoint: str) -> dict[str, Any]:
        return {
            "config": {"bucket": self.bucket, "region": REGION, "endpoint": endpoint},
            "credentials": {"key": KEY, "secret": SECRET},
        }

    async def receive(self, timeout: float = 10.0) -> Received:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            listed = await self.s3.list_objects_v2(Bucket=self.reading)
            new = sorted(
                (o["LastModified"], o["Key"])
                for o in listed.get("Contents", [])
                if o["Key"] not in self.seen
            )
            if new:
                break
            if loop.time() > deadline:
                raise AssertionError(f"no object in {self.reading} within {timeout} s")
            await asyncio.sleep(0.1)
        key = new[0][1]
        self.seen.add(key)
        got = await self.s3.get_object(Bucket=self.reading, Key=key, ChecksumMode="ENABLED")
        body = await got["Body"].read()
        return Received(
            body,
            got["Metadata"],
            {
                "key": key,
                "content_type": got["ContentType"],
                "storage_class": got.get("StorageClass", "STANDARD"),
                "checksum": got.get("ChecksumSHA256"),
            },
        )

    async def refusing(self) -> dict[str, Any]:
        values = self.destination()
        values["config"]["bucket"] = self.missing
        return values

    async def stop_refusing(self) -> None:
        await self.s3.create_bucket(Bucket=self.missing)
        self.reading = self.missing

    def config_change(self) -> dict[str, str]:
        return {"storage_class": "STANDARD_IA"}


@pytest.fixture
async def moto() -> AsyncIterator[Moto]:
    async with Moto() as server:
        yield server


@pytest.fixture
async def broker(moto: Moto) -> AsyncIterator[S3Broker]:
    async with moto.client("s3") as s3:
        yield await S3Broker(moto, s3).start()


class TestAwsS3(DestinationContract):
    """The contract (tests/support/contract.py) against moto's S3."""


async def test_the_object_is_outposts_named_by_the_events_time_and_id(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: S3Broker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    created = await relay.create(broker.destination())
    assert created["target"] == f"{broker.bucket} in {REGION}"
    assert created["target_url"] == (
        f"https://s3.console.aws.amazon.com/s3/buckets/{broker.bucket}?region={REGION}"
    )
    data = b'{"order": 7, "note": "<b>"}'
    event_id = await relay.publish(
        data, topic="order.paid", time="2026-03-04T05:06:07.120300+02:00", metadata={"m": "1"}
    )
    message = await broker.receive()
    # Go's RFC3339Nano of the event's time in UTC (trailing zeros dropped), then the id.
    assert message.extra["key"] == f"2026-03-04T03:06:07.1203Z_{event_id}.json"
    assert message.body == data
    assert message.extra["content_type"] == "application/json"
    assert message.extra["storage_class"] == "STANDARD"
    # The checksum S3 checks the body against (moto stores it without checking it).
    assert message.extra["checksum"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert message.metadata == {
        "event-id": event_id,
        "topic": "order.paid",
        "timestamp": message.metadata["timestamp"],
        "m": "1",
    }

    async def delivered() -> bool:
        return await relay.delivery_status(event_id) == "delivered"

    await wait_until(delivered)
    body = json.loads(await db.fetchval("SELECT response_body FROM relay.attempts"))
    assert body == {"bucket": broker.bucket, "key": message.extra["key"]}


async def test_a_key_template_and_storage_class_as_outpost_reads_them(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: S3Broker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    values = broker.destination()
    values["config"] |= {
        "key_template": "join('/', [data.region, time.year, time.month, time.day, "
        "join('', [metadata.\"event-id\", '.json'])])",
        # Any case, as Outpost compares it; sent as S3 spells it.
        "storage_class": "standard_ia",
    }
    created = await relay.create(values, id="archive")
    assert created["config"]["storage_class"] == "standard_ia"
    event_id = await relay.publish(b'{"region": "eu"}', topic="t", time="2025-01-02T03:04:05Z")
    message = await broker.receive()
    assert message.extra["key"] == f"eu/2025/01/02/{event_id}.json"
    assert message.extra["storage_class"] == "STANDARD_IA"

    # A number is printed as Go prints it; time.unix is the event's epoch seconds.
    await relay.call(
        "PATCH",
        "/tenants/acme/destinations/archive",
        {"config": {"key_template": "join('-', [time.unix, to_string(data.n)])"}},
    )
    await relay.publish(b'{"n": 1.5}', topic="t", time="2025-01-02T03:04:05Z")
    assert (await broker.receive()).extra["key"] == "1735787045-1.5"


async def test_a_template_that_gives_no_key_fails_at_once_without_retries(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: S3Broker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    values = broker.destination()
    values["config"]["key_template"] = "data.name"
    await relay.create(values)
    event_id = await relay.publish(b'{"other": 1}', topic="t")

    async def failed() -> bool:
        return await relay.delivery_status(event_id) == "failed"

    await wait_until(failed)
    [attempt] = await relay.attempts(event_id)
    assert attempt["error_code"] == "format_error"
    assert attempt["error_detail"] == (
        "could not format event for delivery: 'data.name' gave null for this event"
    )
    # The next event that has a name is delivered.
    await relay.publish(b'{"name": "ok.json"}', topic="t")
    assert (await broker.receive()).extra["key"] == "ok.json"


async def test_bad_config_is_refused_naming_the_field(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: S3Broker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    assert (await relay.call("PUT", "/tenants/acme"))[0] in (200, 201)
    credentials = {"key": KEY, "secret": SECRET}
    base = {"bucket": broker.bucket, "region": REGION}
    cases = [
        (base | {"storage_class": "COLD"}, credentials,
         ["config.storage_class failed enum validation"]),
        (base | {"key_template": "join('', [data.a"}, credentials,
         ["config.key_template failed pattern validation"]),
        (base | {"region": "us_east_1"}, credentials, ["config.region failed pattern validation"]),
        (base, {"secret": SECRET}, ["credentials.key is required"]),
    ]  # fmt: skip
    for config, given, expected in cases:
        status, answer = await relay.call(
            "POST",
            "/tenants/acme/destinations",
            {"type": "aws_s3", "topics": "*", "config": config, "credentials": given},
        )
        assert (status, answer["data"]) == (422, expected), answer
