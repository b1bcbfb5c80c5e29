"""The kafka type's pure parts: Outpost's partition choice (kafka-go's Hash balancer),
its partition key (JMESPath, values written as Go writes them), error codes, and the
config as Outpost's Preprocess stores it."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest
from aiokafka import errors as kafka_errors

from relay.delivery import registry
from relay.delivery.kafka import (
    KafkaSettings,
    Unreachable,
    classify,
    detail,
    fnv1a_32,
    partition_for,
    partitioner,
)
from relay.delivery.keytemplates import go_float, go_value, partition_key


def test_fnv1a_is_the_published_32_bit_hash() -> None:
    # The FNV reference vectors (the empty string is the offset basis).
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


@pytest.mark.parametrize(
    ("key", "count", "partition"),
    [
        # kafka-go's balancer_test.go (TestHashBalancer), which checks it against sarama.
        (b"blah", 2, 0),
        (b"blah", 3, 1),
        (b"boop", 3, 2),
        # "hash code with MSB set": the hash as a signed 32-bit number, made positive.
        (b"20", 16, 1),
    ],
)
def test_the_partition_is_kafka_gos_hash_balancers(key: bytes, count: int, partition: int) -> None:
    assert partition_for(key, count) == partition
    # aiokafka hands the partitions over in any order; they are taken sorted.
    partitions = list(reversed(range(count)))
    assert partitioner(key, partitions, partitions) == partition


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (42.0, "42"),
        (1.5, "1.5"),
        (-3.0, "-3"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1e21, "1e+21"),
        (2.0**53, "9.007199254740992e+15"),
        (0.0, "0"),
    ],
)
def test_numbers_are_written_as_gos_percent_g(value: float, written: str) -> None:
    assert go_float(value) == written


def test_other_values_are_written_as_gos_percent_v() -> None:
    assert go_value(True) == "true" and go_value(None) == "<nil>"
    assert go_value(["a", 1, None, False]) == "[a 1 <nil> false]"
    assert go_value({"b": 2.5, "a": [1]}) == "map[a:[1] b:2.5]"  # keys sorted, as fmt


def test_the_partition_key_falls_back_to_the_event_id() -> None:
    metadata = {"event-id": "evt_1", "topic": "t", "region": "eu"}
    data = {"customer": {"id": 7}, "name": "", "tags": ["x"]}

    def evaluate(
        template: str, metadata: dict[str, str], data: dict[str, object], fallback: str
    ) -> str:
        return partition_key(template, {"metadata": metadata, "data": data}, fallback)

    assert evaluate("", metadata, data, "evt_1") == "evt_1"
    assert evaluate("data.customer.id", metadata, data, "evt_1") == "7"
    assert evaluate('metadata."event-id"', metadata, data, "x") == "evt_1"
    assert evaluate("metadata.region", metadata, data, "x") == "eu"
    assert evaluate("data.tags", metadata, data, "x") == "[x]"
    assert evaluate("data.missing", metadata, data, "evt_1") == "evt_1"
    assert evaluate("data.name", metadata, data, "evt_1") == "evt_1"  # empty
    assert evaluate("data.[", metadata, data, "evt_1") == "evt_1"  # does not parse
    assert evaluate("abs(data.name)", metadata, data, "evt_1") == "evt_1"  # fails


def test_errors_get_stable_codes() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    cases: list[tuple[BaseException, str]] = [
        (kafka_errors.SaslAuthenticationFailed("invalid credentials"), "auth_failed"),
        (kafka_errors.UnsupportedSaslMechanismError("no PLAIN"), "auth_failed"),
        (kafka_errors.UnknownTopicOrPartitionError(), "topic_not_found"),
        (kafka_errors.MessageSizeTooLargeError("too big"), "message_too_large"),
        (kafka_errors.TopicAuthorizationFailedError("t"), "access_denied"),
        (kafka_errors.InvalidTopicError(), "invalid_topic"),
        (kafka_errors.KafkaTimeoutError(), "timeout"),
        (kafka_errors.RequestTimedOutError(), "timeout"),
        (kafka_errors.NodeNotReadyError("node 1"), "connection_error"),
        (kafka_errors.KafkaConnectionError("Unable to bootstrap"), "connection_error"),
        (kafka_errors.CorruptRecordException(), "kafka_error"),
        (refused, "connection_refused"),
        (TimeoutError(), "timeout"),
        # Bootstrap failures, by the cause found.
        (Unreachable("b:9092", kafka_errors.SaslAuthenticationFailed("x")), "auth_failed"),
        (Unreachable("b:9092", refused), "connection_refused"),
        (Unreachable("b:9092", socket.gaierror(-2, "Name or service not known")), "dns_error"),
        (Unreachable("b:9092", ssl.SSLCertVerificationError("verify failed")), "tls_error"),
        (Unreachable("b:9092", None), "connection_error"),
    ]
    assert [classify(exc) for exc, _ in cases] == [code for _, code in cases]


def test_an_error_is_one_line_naming_its_class_once() -> None:
    assert detail(kafka_errors.NodeNotReadyError("node 1")) == "NodeNotReadyError: node 1"
    refused = ConnectionRefusedError(111, "Connect call failed")
    assert detail(Unreachable("b:9092", refused)) == (
        "ConnectionRefusedError: [Errno 111] Connect call failed (brokers b:9092)"
    )
    assert detail(Unreachable("b:9092", None)) == "no broker answered (brokers b:9092)"


def test_the_config_is_stored_and_read_as_outpost_does() -> None:
    provider = registry.provider("kafka")
    config, _ = provider.normalise({"brokers": " a:9092 , b:9092 ", "tls": "on"}, {})
    assert config == {"brokers": "a:9092,b:9092", "tls": "true"}
    assert provider.normalise({"tls": ""}, {})[0]["tls"] == "false"
    assert provider.normalise({}, {})[0] == {"tls": "false"}
    assert provider.normalise({"tls": "false"}, {})[0]["tls"] == "false"
    assert provider.target({"brokers": "a:9092,b:9092", "topic": "t"}, {}, ["*"]).target == (
        "a:9092 / t"
    )
    assert provider.target({"topic": "t"}, {}, ["*"]).target == "t"
    settings = KafkaSettings.read(
        {"brokers": "a:9092, ,b:9092", "topic": "t", "sasl_mechanism": "scram-sha-512"},
        {"username": "u", "password": "p"},
    )
    assert settings.brokers == "a:9092,b:9092" and settings.mechanism == "SCRAM-SHA-512"
    assert not settings.tls
    options = settings.connection(4000)
    assert options["security_protocol"] == "SASL_PLAINTEXT" and options["ssl_context"] is None
    with pytest.raises(ValueError, match="sasl_mechanism"):
        KafkaSettings.read({"sasl_mechanism": "gssapi"}, {})
