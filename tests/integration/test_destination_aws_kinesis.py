"""aws_kinesis destinations against moto's server (Kinesis's wire protocol, in this
process): the destination contract, then what is particular to Kinesis (Outpost's
{"data", "metadata"} record, partition keys from a JMESPath template, the record without
metadata, validation), and a stream that throttles: taken as a 429 by delivery control."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from relay.db import outbox
from tests.support.contract import SCHEDULE, DestinationContract, Received, relay_with, wait_until
from tests.support.moto import KEY, REGION, SECRET, Moto, MotoBroker

PREFIX = b'{"data":'


def unwrap(record: bytes) -> tuple[bytes, dict[str, str]]:
    """The data's bytes and the metadata of an Outpost record."""
    assert record.startswith(PREFIX), record
    cut = record.rindex(b',"metadata":')
    metadata = json.loads(record)["metadata"]
    return record[len(PREFIX) : cut], metadata


class KinesisBroker(MotoBroker):
    type = "aws_kinesis"
    refused_codes = frozenset({"stream_not_found"})

    def __init__(self, moto: Moto, kinesis: Any) -> None:
        super().__init__(moto)
        self.kinesis = kinesis
        self.stream = f"relay-test-{uuid.uuid4().hex[:12]}"
        self.missing = f"relay-test-missing-{uuid.uuid4().hex[:12]}"
        self.reading = self.stream
        self._iterator: str | None = None
        self._records: list[dict[str, Any]] = []

    async def start(self) -> KinesisBroker:
        await self.kinesis.create_stream(StreamName=self.stream, ShardCount=1)
        return self

    def at(self, endpoint: str) -> dict[str, Any]:
        return {
            "config": {
                "stream_name": self.stream,
                "region": REGION,
                "endpoint": endpoint,
            },
            "credentials": {"key": KEY, "secret": SECRET},
        }

    async def record(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next record on the stream read (its one shard), as Kinesis returns it."""
        if self._iterator is None:
            shards = await self.kinesis.list_shards(StreamName=self.reading)
            self._iterator = (
                await self.kinesis.get_shard_iterator(
                    StreamName=self.reading,
                    ShardId=shards["Shards"][0]["ShardId"],
                    ShardIteratorType="TRIM_HORIZON",
                )
            )["ShardIterator"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._records:
            got = await self.kinesis.get_records(ShardIterator=self._iterator)
            self._iterator = got["NextShardIterator"]
            self._records.extend(got["Records"])
            if not self._records:
                if loop.time() > deadline:
                    raise AssertionError(f"no record on {self.reading} within {timeout} s")
                await asyncio.sleep(0.1)
        return self._records.pop(0)

    async def receive(self, timeout: float = 10.0) -> Received:
        record = await self.record(timeout)
        data, metadata = unwrap(record["Data"])
        return Received(
            data, metadata, {"partition_key": record["PartitionKey"], "record": record["Data"]}
        )

    async def refusing(self) -> dict[str, Any]:
        values = self.destination()
        values["config"]["stream_name"] = self.missing
        return values

    async def stop_refusing(self) -> None:
        await self.kinesis.create_stream(StreamName=self.missing, ShardCount=1)
        self.reading, self._iterator = self.missing, None

    def config_change(self) -> dict[str, str]:
        return {"partition_key_template": "data.customer"}


@pytest.fixture
async def moto() -> AsyncIterator[Moto]:
    async with Moto() as server:
        yield server


@pytest.fixture
async def broker(moto: Moto) -> AsyncIterator[KinesisBroker]:
    async with moto.client("kinesis") as kinesis:
        yield await KinesisBroker(moto, kinesis).start()


class TestAwsKinesis(DestinationContract):
    """The contract (tests/support/contract.py) against moto's Kinesis."""


async def test_the_record_is_outposts_envelope_keyed_by_the_event_id(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KinesisBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    created = await relay.create(broker.destination())
    assert created["target"] == f"{broker.stream} in {REGION}" and "target_url" not in created
    event_id = await relay.publish(b'{"a": [1, 2]}', topic="t", metadata={"x": "<y>"})
    message = await broker.receive()
    stamp = message.metadata["timestamp"]
    # {"data": <the producer's bytes>, "metadata": <Go's JSON of the map>}.
    assert message.extra["record"] == (
        b'{"data":{"a": [1, 2]},"metadata":{"event-id":"' + event_id.encode() + b'",'
        b'"timestamp":"' + stamp.encode() + b'","topic":"t","x":"\\u003cy\\u003e"}}'
    )
    assert message.extra["partition_key"] == event_id

    async def delivered() -> bool:
        return await relay.delivery_status(event_id) == "delivered"

    await wait_until(delivered)
    body = json.loads(await db.fetchval("SELECT response_body FROM relay.attempts"))
    assert body["partition_key"] == event_id
    assert body["shard_id"].startswith("shardId-") and body["sequence_number"]


async def test_a_partition_key_template_picks_the_key_as_outpost_prints_it(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KinesisBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    values = broker.destination()
    values["config"]["partition_key_template"] = "data.customer"
    await relay.create(values, id="by-customer")
    cases = [
        (b'{"customer": "cus_1"}', "cus_1"),
        # Go reads JSON numbers as float64 and prints them with %g.
        (b'{"customer": 1234567}', "1.234567e+06"),
        (b'{"customer": 42}', "42"),
        (b'{"customer": true}', "true"),
        (b'{"customer": [1, "a"]}', "[1 a]"),
    ]
    for data, key in cases:
        await relay.publish(data, topic="t")
        assert (await broker.receive()).extra["partition_key"] == key, data
    # No value, or an empty one: the event id.
    for data in (b'{"other": 1}', b'{"customer": ""}'):
        event_id = await relay.publish(data, topic="t")
        assert (await broker.receive()).extra["partition_key"] == event_id
    # The metadata is there to pick from too, and a template that fails gives the event id.
    await relay.call(
        "PATCH",
        "/tenants/acme/destinations/by-customer",
        {"config": {"partition_key_template": 'metadata."event-id"'}},
    )
    event_id = await relay.publish(b"{}", topic="t")
    assert (await broker.receive()).extra["partition_key"] == event_id
    await relay.call(
        "PATCH",
        "/tenants/acme/destinations/by-customer",
        {"config": {"partition_key_template": "abs(data.customer)"}},
    )
    event_id = await relay.publish(b'{"customer": "not a number"}', topic="t")
    assert (await broker.receive()).extra["partition_key"] == event_id


async def test_without_metadata_in_the_payload_the_record_is_the_data(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KinesisBroker
) -> None:
    data_only = {"aws_kinesis": {"metadata_in_payload": False}}
    relay = await relay_with(start_relay, database_url, http, db, broker, delivery=data_only)
    values = broker.destination()
    # Over the data alone, as Outpost evaluates it then.
    values["config"]["partition_key_template"] = "customer"
    await relay.create(values)
    await relay.publish(b'{ "customer" : "cus_9" }', topic="t")
    record = await broker.record()
    assert record["Data"] == b'{ "customer" : "cus_9" }'
    assert record["PartitionKey"] == "cus_9"


async def test_bad_config_is_refused_naming_the_field(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KinesisBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    assert (await relay.call("PUT", "/tenants/acme"))[0] in (200, 201)
    credentials = {"key": KEY, "secret": SECRET}
    cases = [
        ({"stream_name": "a b", "region": REGION},
         ["config.stream_name failed pattern validation"]),
        ({"stream_name": "s", "region": "Europe"}, ["config.region failed pattern validation"]),
        ({"stream_name": "s", "region": REGION, "endpoint": "localhost:4567"},
         ["config.endpoint failed pattern validation"]),
        ({"region": REGION}, ["config.stream_name is required"]),
    ]  # fmt: skip
    for config, expected in cases:
        status, answer = await relay.call(
            "POST",
            "/tenants/acme/destinations",
            {"type": "aws_kinesis", "topics": "*", "config": config, "credentials": credentials},
        )
        assert (status, answer["data"]) == (422, expected), answer


class Throttling:
    """A Kinesis endpoint (its JSON protocol, as botocore parses it) that refuses the
    first ``refusals`` records with ProvisionedThroughputExceededException and takes the
    rest: moto never throttles."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls: list[float] = []
        self.endpoint = ""
        self._runner: web.AppRunner | None = None

    async def _put_record(self, request: web.Request) -> web.Response:
        assert request.headers["X-Amz-Target"] == "Kinesis_20131202.PutRecord"
        self.calls.append(asyncio.get_running_loop().time())
        if len(self.calls) <= self.refusals:
            return web.json_response(
                {
                    "__type": "ProvisionedThroughputExceededException",
                    "message": "Rate exceeded for shard shardId-000000000000",
                },
                status=400,
                content_type="application/x-amz-json-1.1",
            )
        return web.json_response(
            {"ShardId": "shardId-000000000000", "SequenceNumber": str(len(self.calls))},
            content_type="application/x-amz-json-1.1",
        )

    async def __aenter__(self) -> Throttling:
        app = web.Application()
        app.router.add_post("/", self._put_record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.endpoint = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_a_throttled_record_pauses_and_slows_the_destination_as_a_429(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KinesisBroker
) -> None:
    async with Throttling(refusals=1) as stream:
        relay = await relay_with(start_relay, database_url, http, db, broker)
        values = broker.destination()
        values["config"]["endpoint"] = stream.endpoint
        await relay.create(values)
        event_id = await relay.publish(b'{"n": 1}', topic="t")

        async def delivered() -> bool:
            return await relay.delivery_status(event_id) == "delivered"

        await wait_until(delivered)
        first, second = await relay.attempts(event_id)
        assert (first["status"], first["error_code"]) == ("failed", "throttled")
        assert first["error_detail"].startswith(
            "ProvisionedThroughputExceededException: Rate exceeded for shard"
        )
        assert second["status"] == "success"
        # Paused as after a 429 without Retry-After (the schedule's first retry is sooner).
        assert SCHEDULE[0] < outbox.PAUSE_SECONDS
        assert stream.calls[1] - stream.calls[0] >= outbox.PAUSE_SECONDS - 0.05
        row = await db.fetchrow("SELECT throttle, throttle_reason FROM relay.destinations")
        assert row["throttle"] < 1
        assert row["throttle_reason"] == "the receiver refused: too many requests (throttled)"
