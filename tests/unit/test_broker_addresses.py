"""The hosts each broker type's values name (Provider.addresses), read as its client
library reads them, and the guard's judgements of a host (relay/ssrf.py), without a
server."""

from __future__ import annotations

from typing import Any

import pytest

from relay import ssrf
from relay.delivery import registry
from relay.delivery.base import Endpoint, Provider, join_host_port


def bus(endpoint: str, emulator: bool = False) -> dict[str, str]:
    """Credentials of a Service Bus destination with this endpoint."""
    more = ";UseDevelopmentEmulator=true" if emulator else ""
    text = f"{endpoint};SharedAccessKeyName=k;SharedAccessKey=a2V5{more}"
    return {"connection_string": text}


@pytest.mark.parametrize(
    ("type", "config", "credentials", "expected"),
    [
        ("rabbitmq", {"server_url": "rabbit.example"}, {}, [("rabbit.example", 5672)]),
        (
            "rabbitmq",
            {"server_url": "10.0.0.1:5673/vhost", "tls": "true"},
            {},
            [("10.0.0.1", 5673)],
        ),
        (
            "rabbitmq",
            {"server_url": "rabbit.example", "tls": "true"},
            {},
            [("rabbit.example", 5671)],
        ),
        ("rabbitmq", {"server_url": "[::1]:x"}, {}, []),
        (
            "kafka",
            {"brokers": "a:9093, b ,[::1]:9094"},
            {},
            [("a", 9093), ("b", 9092), ("::1", 9094)],
        ),
        ("kafka", {"brokers": "a:port"}, {}, []),
        # Over TLS the library connects to 5671 whatever port the endpoint names.
        ("azure_servicebus", {}, bus("Endpoint=sb://ns.example/"), [("ns.example", 5671)]),
        ("azure_servicebus", {}, bus("Endpoint=sb://ns.example:9"), [("ns.example", 5671)]),
        ("azure_servicebus", {}, bus("endpoint=sb://10.1.1.1:5000", True), [("10.1.1.1", 5000)]),
        ("azure_servicebus", {}, bus("Endpoint=sb://localhost", True), [("localhost", 5672)]),
        ("azure_servicebus", {}, {"connection_string": "not one"}, []),
        ("gcp_pubsub", {"endpoint": "localhost:8085"}, {}, [("localhost", 8085)]),
        ("gcp_pubsub", {}, {}, []),  # Google's own host: relay's choice
        ("nats_jetstream", {"server_url": "[::1]"}, {}, [("::1", 4222)]),
        ("redis_streams", {"server_url": "redis.example:6380"}, {}, [("redis.example", 6380)]),
        # Without an endpoint, SQS requests go to the queue URL's host.
        ("aws_sqs", {"queue_url": "http://127.0.0.1/q"}, {}, [("127.0.0.1", 80)]),
        (
            "aws_sqs",
            {
                "queue_url": "https://sqs.us-east-1.amazonaws.com/1/q",
                "endpoint": "http://[::1]:4566",
            },
            {},
            [("::1", 4566)],
        ),
        ("aws_kinesis", {"endpoint": "https://kinesis.example"}, {}, [("kinesis.example", 443)]),
        ("aws_kinesis", {"endpoint": "http://10.0.0.1:x"}, {}, []),
        ("aws_s3", {"endpoint": "http://10.0.0.1:9000/"}, {}, [("10.0.0.1", 9000)]),
        ("aws_s3", {}, {}, []),  # AWS's own host for the region
    ],
)
def test_each_type_names_the_hosts_its_client_connects_to(
    type: str, config: dict[str, str], credentials: dict[str, str], expected: list[Any]
) -> None:
    provider = registry.provider(type)
    found = provider.addresses(config, credentials)
    assert [(e.host, e.port) for e in found] == expected
    assert {e.field for e in found} <= {
        "config.server_url",
        "config.brokers",
        "config.endpoint",
        "config.queue_url",
        "credentials.connection_string",
    }


def test_a_type_without_a_host_of_its_own_names_none() -> None:
    assert Provider(registry.schema("webhook")).addresses({"url": "http://10.0.0.1/"}, {}) == []
    assert Endpoint("config.x", "h", 1).field == "config.x"


@pytest.mark.parametrize("endpoint", ["unix:/var/run/pubsub.sock", "dns:///h:1", "h:0", "h:x"])
def test_a_gcp_endpoint_is_a_host_and_port_never_another_grpc_target(endpoint: str) -> None:
    problems = registry.provider("gcp_pubsub").problems(
        {"project_id": "p", "topic": "t", "endpoint": endpoint}, {"service_account_json": "{}"}
    )
    assert problems == ["config.endpoint must be host or host:port, e.g. localhost:8085"]


def test_host_and_port_join_as_a_client_takes_them() -> None:
    assert join_host_port("10.0.0.1", 4222) == "10.0.0.1:4222"
    assert join_host_port("::1", 4222) == "[::1]:4222"


async def test_a_host_is_refused_when_a_literal_or_every_address_is() -> None:
    loopback = ssrf.parse_networks(["127.0.0.0/8"])
    assert (
        await ssrf.why_refused_host("127.0.0.1") == "127.0.0.1 is not a public address (loopback)"
    )
    assert await ssrf.why_refused_host("127.1") is not None  # inet_aton's short form
    assert await ssrf.why_refused_host("127.0.0.1", loopback) is None
    why = await ssrf.why_refused_host("localhost")
    assert why is not None and why.startswith("localhost resolves only to refused addresses")
    assert (
        await ssrf.why_refused_host("localhost", loopback + ssrf.parse_networks(["::1/128"]))
        is None
    )
    assert await ssrf.why_refused_host("relay-test.invalid") is None  # judged at delivery
    assert (
        ssrf.refused("config.brokers", "why")
        == f"config.brokers is refused by the SSRF guard: why; {ssrf.HINT}"
    )


async def test_a_name_a_client_dials_itself_must_have_only_permitted_addresses() -> None:
    loopback = ssrf.parse_networks(["127.0.0.0/8", "::1/128"])
    assert await ssrf.guarded_name("localhost", 9092, loopback) == "localhost"
    with pytest.raises(ssrf.BlockedAddress, match=r"^localhost: .* is not a public address"):
        await ssrf.guarded_name("localhost", 9092)
    with pytest.raises(ssrf.BlockedAddress, match="cloud metadata"):
        await ssrf.guarded_name("169.254.169.254", 80, loopback)
