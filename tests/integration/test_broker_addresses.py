"""The SSRF guard holds for the broker types' hosts (and the AWS types' endpoints) as for
a webhook's url: a host it refuses (an IP literal, or a name whose every address is
refused) is a 422 naming the field when a destination is created or changed, a config
error naming the key when the file declares it, and at delivery (judged when relay
connects) a failed attempt, ``blocked_address``, not retried. A permitted one still
delivers, to the real broker (the AWS types': tests/integration/test_destination_aws_*)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
import redis.asyncio
import trustme
from google.pubsub_v1 import PublisherAsyncClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

from relay.config import ConfigError, load_settings
from relay.delivery.base import join_host_port
from tests.support.contract import wait_until
from tests.support.kafka import KafkaServer
from tests.support.pubsub import PubSubEmulator
from tests.support.relay import admin_headers, make_settings
from tests.support.servicebus import KEY_NAME, ServiceBusStandIn
from tests.support.tcpproxy import TcpProxy

API = "/api/v1"
DESTINATIONS = f"{API}/tenants/acme/destinations"
# One run's names on the shared brokers (NATS, Redis): no other test's stream or key.
RUN = uuid.uuid4().hex[:10]
KAFKA_USER, KAFKA_PASSWORD = "relay", "relay-kafka-password"
SERVICE_BUS_KEY = "c2VjcmV0LWtleS1vZi10aGUtbmFtZXNwYWNl"
SERVICE_ACCOUNT = '{"type": "service_account", "project_id": "relay-test"}'
# A retry would come within a second: a test that waits longer sees none came.
RETRY = {"schedule_seconds": [0.2, 0.2, 0.2], "jitter": 0}


def values(type: str, where: str) -> dict[str, Any]:
    """A destination of ``type`` whose broker is at ``where`` (host:port)."""
    if type == "rabbitmq":
        return {
            "config": {"server_url": where, "exchange": ""},
            "credentials": {"username": "guest", "password": "guest"},
        }
    if type == "kafka":
        return {
            "config": {"brokers": where, "topic": f"relay-ssrf-{RUN}", "sasl_mechanism": "plain"},
            "credentials": {"username": KAFKA_USER, "password": KAFKA_PASSWORD},
        }
    if type == "azure_servicebus":
        connection_string = (
            f"Endpoint=sb://{where};SharedAccessKeyName={KEY_NAME};"
            f"SharedAccessKey={SERVICE_BUS_KEY};UseDevelopmentEmulator=true"
        )
        return {
            "config": {"name": "events"},
            "credentials": {"connection_string": connection_string},
        }
    if type == "gcp_pubsub":
        return {
            "config": {"project_id": f"relay-ssrf-{RUN}", "topic": "orders", "endpoint": where},
            "credentials": {"service_account_json": SERVICE_ACCOUNT},
        }
    if type == "nats_jetstream":
        return {"config": {"server_url": where, "subject": f"relay-ssrf-{RUN}.{{topic}}"}}
    if type == "redis_streams":
        return {"config": {"server_url": where, "stream": f"relay-ssrf-{RUN}:{{topic}}"}}
    # An AWS type at an endpoint of its own (an emulator, a VPC endpoint).
    config = {
        "aws_sqs": {"queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/relay"},
        "aws_kinesis": {"stream_name": "relay", "region": "us-east-1"},
        "aws_s3": {"bucket": "relay", "region": "us-east-1"},
    }[type]
    return {
        "config": config | {"endpoint": f"http://{where}"},
        "credentials": {"key": "AKIAEXAMPLE", "secret": "example-secret"},
    }


# Each type's field naming its broker's host, and a port for it.
FIELDS = {
    "rabbitmq": ("config.server_url", 5672),
    "kafka": ("config.brokers", 9092),
    "azure_servicebus": ("credentials.connection_string", 5672),
    "gcp_pubsub": ("config.endpoint", 8085),
    "nats_jetstream": ("config.server_url", 4222),
    "redis_streams": ("config.server_url", 6379),
}
BROKERS = list(FIELDS)
FIELDS |= {aws: ("config.endpoint", 4566) for aws in ("aws_sqs", "aws_kinesis", "aws_s3")}
TYPES = list(FIELDS)


async def call(http: Any, server: Any, method: str, path: str, body: Any = None) -> Any:
    async with http.request(
        method, server.make_url(path), json=body, headers=admin_headers()
    ) as resp:
        return resp.status, await resp.json()


async def relay_with(start_relay: Any, http: Any, database_url: str, **delivery: Any) -> Any:
    """A relay (API and dispatcher) with these delivery settings (by default the tests'
    own: loopback open), and tenant acme."""
    settings = make_settings(database_url, delivery={"retry": RETRY} | delivery)
    server = await start_relay(settings)
    assert (await call(http, server, "PUT", f"{API}/tenants/acme"))[0] in (200, 201)
    return server


# --- created or changed -----------------------------------------------------------------


@pytest.mark.parametrize("type", TYPES)
async def test_the_api_refuses_a_broker_host_the_guard_refuses_naming_the_field(
    start_relay: Any, http: Any, database_url: str, type: str
) -> None:
    server = await relay_with(start_relay, http, database_url, allow_private_networks=[])
    field, port = FIELDS[type]
    refused = {
        "127.0.0.1": "127.0.0.1 is not a public address (loopback)",
        "169.254.169.254": "169.254.169.254 is not a public address (cloud metadata",
        "::1": "::1 is not a public address (loopback)",
        "::ffff:10.1.2.3": "10.1.2.3 is not a public address (private)",
        "localhost": "localhost resolves only to refused addresses (127.0.0.1: ",
    }
    for host, why in refused.items():
        body = {"type": type, "topics": "*", **values(type, join_host_port(host, port))}
        status, answer = await call(http, server, "POST", DESTINATIONS, body)
        assert status == 422, (host, answer)
        [problem] = answer["data"]
        assert problem.startswith(f"{field} is refused by the SSRF guard: {why}"), problem
        assert "delivery.allow_private_networks or RELAY_ALLOW_PRIVATE_NETWORKS" in problem
    assert (await call(http, server, "GET", DESTINATIONS)) == (200, [])
    # A public address, and a name that does not resolve (DNS may answer otherwise at
    # delivery, which judges it again), are taken.
    for host in ("93.184.215.14", "relay-test.invalid"):
        body = {"type": type, "topics": "*", **values(type, join_host_port(host, port))}
        status, created = await call(http, server, "POST", DESTINATIONS, body)
        assert status == 201, (host, created)
    # A change to a refused host is refused too; other changes are not held up.
    path = f"{DESTINATIONS}/{created['id']}"
    section, key = field.split(".")
    moved = values(type, join_host_port("10.0.0.7", port))[section][key]
    status, answer = await call(http, server, "PATCH", path, {section: {key: moved}})
    assert status == 422, answer
    assert answer["data"] == [
        f"{field} is refused by the SSRF guard: 10.0.0.7 is not a public address (private); "
        "open its range with delivery.allow_private_networks or RELAY_ALLOW_PRIVATE_NETWORKS "
        "to deliver there"
    ]
    status, answer = await call(http, server, "PATCH", path, {"metadata": {"team": "ops"}})
    assert status == 200, answer


async def test_every_broker_of_a_kafka_list_is_judged(
    start_relay: Any, http: Any, database_url: str
) -> None:
    server = await relay_with(start_relay, http, database_url, allow_private_networks=[])
    body = {"type": "kafka", "topics": "*", **values("kafka", "93.184.215.14:9092,10.9.8.7")}
    status, answer = await call(http, server, "POST", DESTINATIONS, body)
    assert status == 422, answer
    [problem] = answer["data"]
    assert problem.startswith("config.brokers is refused by the SSRF guard: 10.9.8.7 is not")


async def test_an_open_range_admits_a_broker_host(
    start_relay: Any, http: Any, database_url: str
) -> None:
    server = await relay_with(
        start_relay, http, database_url, allow_private_networks=["10.0.0.0/8"]
    )
    body = {"type": "rabbitmq", "topics": "*", **values("rabbitmq", "10.1.2.3:5672")}
    status, created = await call(http, server, "POST", DESTINATIONS, body)
    assert status == 201, created
    body = {"type": "rabbitmq", "topics": "*", **values("rabbitmq", "192.168.0.1:5672")}
    status, answer = await call(http, server, "POST", DESTINATIONS, body)
    assert status == 422 and "192.168.0.1 is not a public address" in answer["data"][0]


def toml_table(table: dict[str, str]) -> str:
    # A TOML inline table of strings (JSON's string escapes are TOML's).
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"


def config_file(tmp_path: Path, type: str, where: str) -> Path:
    destination = values(type, where)
    path = tmp_path / "relay.toml"
    path.write_text(
        '[[tenants]]\nid = "acme"\n\n[[tenants.destinations]]\nid = "broker"\n'
        f'type = "{type}"\n' + "".join(f"{k} = {toml_table(v)}\n" for k, v in destination.items())
    )
    return path


@pytest.mark.parametrize("type", TYPES)
def test_the_config_file_refuses_a_broker_ip_literal_naming_file_key_and_fix(
    tmp_path: Path, type: str
) -> None:
    field, port = FIELDS[type]
    path = config_file(tmp_path, type, join_host_port("169.254.169.254", port))
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    error = info.value
    assert error.source == str(path)
    assert error.key == f"tenants[0].destinations[0].{field}"
    assert error.problem.startswith("169.254.169.254 is not a public address"), error.problem
    assert "RELAY_ALLOW_PRIVATE_NETWORKS" in error.fix
    # Its range opened, it loads; a name is left to delivery, which judges what it
    # resolves to then.
    env = {"RELAY_ALLOW_PRIVATE_NETWORKS": "169.254.0.0/16"}
    assert load_settings(path, env=env).tenants[0].destinations[0].type == type
    load_settings(config_file(tmp_path, type, join_host_port("localhost", port)), env={})


# --- delivered ----------------------------------------------------------------------------


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


@contextlib.asynccontextmanager
async def real_broker(type: str, tmp_path: Path) -> AsyncIterator[int]:
    """The port of a real broker of ``type`` on 127.0.0.1 that takes ``values(type, ...)``
    (skips where it cannot run)."""
    if type in ("rabbitmq", "nats_jetstream", "redis_streams"):
        port = FIELDS[type][1]
        if not listening(port):
            pytest.skip(f"no {type} server on 127.0.0.1:{port}")
    if type == "rabbitmq":
        yield 5672
    elif type == "redis_streams":
        yield 6379
        client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
        await client.delete(f"relay-ssrf-{RUN}:t")
        await client.aclose()
    elif type == "nats_jetstream":
        client = await nats.connect("nats://127.0.0.1:4222")
        stream = f"RELAY_SSRF_{RUN}"
        await client.jetstream().add_stream(name=stream, subjects=[f"relay-ssrf-{RUN}.>"])
        try:
            yield 4222
        finally:
            await client.jetstream().delete_stream(stream)
            await client.close()
    elif type == "kafka":
        async with KafkaServer({KAFKA_USER: KAFKA_PASSWORD}) as server:
            await server.create_topic(KAFKA_USER, f"relay-ssrf-{RUN}", 1)
            yield server.proxy.port
    elif type == "azure_servicebus":
        with ServiceBusStandIn({"events"}, {KEY_NAME: SERVICE_BUS_KEY}) as bus:
            yield bus.port
    else:
        assert type == "gcp_pubsub"
        with PubSubEmulator(tmp_path / "emulator.log") as emulator:
            channel = grpc.aio.insecure_channel(emulator.endpoint)
            publisher = PublisherAsyncClient(
                transport=PublisherGrpcAsyncIOTransport(channel=channel)
            )
            await publisher.create_topic(name=f"projects/relay-ssrf-{RUN}/topics/orders")
            await channel.close()
            yield emulator.port


async def publish(http: Any, server: Any) -> str:
    body = {"tenant_id": "acme", "topic": "t", "data": {"n": 1}}
    async with http.post(
        server.make_url(f"{API}/publish"), json=body, headers=admin_headers()
    ) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["id"])


def status_of(db: Any, event_id: str) -> Callable[[], Any]:
    async def statuses() -> list[tuple[str, str]]:
        rows = await db.fetch(
            "SELECT d.destination_id, d.status FROM relay.deliveries d"
            " JOIN relay.events e ON e.seq = d.event_seq WHERE e.id = $1"
            " ORDER BY d.destination_id",
            event_id,
        )
        return [(r["destination_id"], r["status"]) for r in rows]

    return statuses


async def attempts(db: Any, event_id: str) -> list[Any]:
    return await db.fetch(
        "SELECT a.* FROM relay.attempts a JOIN relay.events e ON e.seq = a.event_seq"
        " WHERE e.id = $1 ORDER BY a.destination_id, a.number",
        event_id,
    )


@pytest.mark.parametrize("type", BROKERS)
async def test_a_broker_whose_address_became_refused_fails_once_with_blocked_address(
    start_relay: Any, http: Any, database_url: str, db: Any, tmp_path: Path, type: str
) -> None:
    async with real_broker(type, tmp_path) as port:
        # Stored while loopback is open (by address and by name), and delivered there.
        server = await relay_with(start_relay, http, database_url)
        for id, host in (("by-address", "127.0.0.1"), ("by-name", "localhost")):
            body = {"id": id, "type": type, "topics": "*", **values(type, f"{host}:{port}")}
            status, created = await call(http, server, "POST", DESTINATIONS, body)
            assert status == 201, created
        event_id = await publish(http, server)
        delivered = [("by-address", "delivered"), ("by-name", "delivered")]

        async def both_delivered() -> bool:
            return bool(await status_of(db, event_id)() == delivered)

        await wait_until(both_delivered, timeout=30)
        await server.close()
        # relay started again with every private range closed.
        server = await relay_with(start_relay, http, database_url, allow_private_networks=[])
        event_id = await publish(http, server)
        failed = [("by-address", "failed"), ("by-name", "failed")]

        async def both_failed() -> bool:
            return bool(await status_of(db, event_id)() == failed)

        await wait_until(both_failed, timeout=30)
        await asyncio.sleep(1.0)  # time for retries, were there any
        rows = await attempts(db, event_id)
        assert [(a["destination_id"], a["number"]) for a in rows] == [
            ("by-address", 1),
            ("by-name", 1),
        ]
        for attempt in rows:
            assert attempt["status"] == "failed" and attempt["error_code"] == "blocked_address"
            detail = attempt["error_detail"]
            assert "127.0.0.1 is not a public address (loopback)" in detail, detail
            assert "RELAY_ALLOW_PRIVATE_NETWORKS" in detail, detail


async def test_kafka_brokers_the_cluster_announces_are_judged_too(
    start_relay: Any, http: Any, database_url: str, db: Any
) -> None:
    """relay bootstraps from a permitted address (127.0.0.2, a proxy's) and the cluster
    announces one the guard refuses (its broker at 127.0.0.1): aiokafka would dial it."""
    async with (
        KafkaServer({KAFKA_USER: KAFKA_PASSWORD}) as kafka,
        TcpProxy("127.0.0.1", kafka.proxy.port, listen="127.0.0.2") as front,
    ):
        await kafka.create_topic(KAFKA_USER, f"relay-ssrf-{RUN}", 1)
        server = await relay_with(
            start_relay, http, database_url, allow_private_networks=["127.0.0.2/32"]
        )
        body = {
            "id": "k",
            "type": "kafka",
            "topics": "*",
            **values("kafka", f"127.0.0.2:{front.port}"),
        }
        status, created = await call(http, server, "POST", DESTINATIONS, body)
        assert status == 201, created
        event_id = await publish(http, server)

        async def failed() -> bool:
            return bool(await status_of(db, event_id)() == [("k", "failed")])

        await wait_until(failed, timeout=30)
        await asyncio.sleep(1.0)
        [attempt] = await attempts(db, event_id)
        assert attempt["error_code"] == "blocked_address"
        assert attempt["error_detail"].startswith(
            f"BlockedAddress: the cluster announces broker 127.0.0.1:{kafka.proxy.port}; "
            "127.0.0.1: 127.0.0.1 is not a public address (loopback); open its range"
        ), attempt["error_detail"]
        assert front.accepted >= 1  # it did bootstrap there


async def test_rabbitmq_over_tls_connects_to_the_judged_address_and_checks_the_name(
    start_relay: Any,
    http: Any,
    database_url: str,
    db: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection goes to the address the guard permitted, and TLS still checks the
    certificate against the host's name (a certificate for localhost only: dialled as
    127.0.0.1 without the name, it would fail verification)."""
    ca = trustme.CA()
    listener = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(listener)
    names: list[str | None] = []
    listener.sni_callback = lambda _sock, name, _context: names.append(name)
    handshakes = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Called once the TLS handshake is done; then no AMQP: relay's attempt fails.
        nonlocal handshakes
        handshakes += 1
        writer.close()

    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    tls_server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=listener)
    port = tls_server.sockets[0].getsockname()[1]
    try:
        server = await relay_with(start_relay, http, database_url)
        body = {
            "id": "r",
            "type": "rabbitmq",
            "topics": "*",
            **values("rabbitmq", f"localhost:{port}"),
        }
        body["config"]["tls"] = "true"
        status, created = await call(http, server, "POST", DESTINATIONS, body)
        assert status == 201, created
        event_id = await publish(http, server)

        async def tried() -> bool:
            return bool(await attempts(db, event_id))

        await wait_until(tried, timeout=30)
        [attempt, *_] = await attempts(db, event_id)
        assert attempt["error_code"] != "tls_error", dict(attempt)
        assert handshakes >= 1 and names[:1] == ["localhost"]
    finally:
        tls_server.close()
        await tls_server.wait_closed()
