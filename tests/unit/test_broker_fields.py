"""What the NATS and Redis types read from a destination's fields, without a server."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from relay.delivery.base import host_port
from relay.delivery.nats_jetstream import PROVIDER as NATS
from relay.delivery.nats_jetstream import message_id, subject_for, subject_problem
from relay.delivery.redis_streams import PROVIDER as REDIS


@pytest.mark.parametrize(
    ("server_url", "answer"),
    [
        ("nats.example", ("nats.example", 4222)),
        ("nats.example:4333", ("nats.example", 4333)),
        ("[::1]:4333", ("::1", 4333)),
        ("[::1]", ("::1", 4222)),
        (" 10.0.0.1:1 ", ("10.0.0.1", 1)),
    ],
)
def test_a_server_url_is_a_host_and_a_port(server_url: str, answer: tuple[str, int]) -> None:
    assert host_port(server_url, 4222) == answer


@pytest.mark.parametrize("server_url", ["host:port", "host:0", "host:70000", ":4222", "[::1"])
def test_a_server_url_without_a_port_number_is_refused(server_url: str) -> None:
    with pytest.raises(ValueError):
        host_port(server_url, 4222)


def test_a_subject_takes_the_topic_and_refuses_wildcards_spaces_and_empty_tokens() -> None:
    assert subject_for("events.{topic}", "order.created") == "events.order.created"
    assert subject_problem("events.order.created") is None
    assert subject_problem("events.realestate/contact#add") is None
    for bad in ("events.*", "events.>", "events.order created", "events..x", "events."):
        assert subject_problem(bad) is not None, bad


@dataclass
class _Claim:
    event_id: str
    destination_id: str
    attempt: int
    manual: bool


def test_a_message_id_is_the_event_and_destination_and_a_manual_retry_is_new() -> None:
    assert message_id(_Claim("evt", "des", 3, False)) == "evt:des"  # type: ignore[arg-type]
    assert message_id(_Claim("evt", "des", 4, True)) == "evt:des:4"  # type: ignore[arg-type]


def test_the_nats_fields_name_their_problems() -> None:
    problems = NATS.problems(
        {"server_url": "nats:x", "subject": "a.*"}, {"token": "t", "username": "u"}
    )
    assert problems == [
        "config.server_url must be host or host:port, e.g. nats.example:4222",
        "config.subject must be dot-separated tokens without spaces or wildcards (* and >), "
        "e.g. events.{topic}",
        "credentials: give a token or a username and password, not both",
        "credentials.username and credentials.password go together",
    ]
    assert NATS.problems({"server_url": "n:4222", "subject": "e.{topic}"}, {}) == []
    assert NATS.normalise({"tls": "on"}, {})[0] == {"tls": "true"}


def test_the_redis_fields_name_their_problems() -> None:
    config = {"server_url": "r:6379", "stream": "s", "database": "x", "maxlen": "0"}
    assert REDIS.problems(config, {}) == [
        "config.database failed pattern validation",
        "config.maxlen failed pattern validation",
    ]
    assert REDIS.problems({"server_url": "r", "stream": "events:{topic}"}, {}) == []


def test_a_rabbitmq_server_url_takes_no_query_user_or_fragment() -> None:
    """aiormq reads a URL's query as options (cafile, keyfile, no_verify_ssl): a tenant
    must not reach relay's files or turn certificate checks off through it."""
    from relay.delivery.rabbitmq import PROVIDER as RABBITMQ

    credentials = {"username": "u", "password": "p"}
    for bad in ("mq:5671?no_verify_ssl=1", "mq:5671/?cafile=/etc/shadow", "x:y@mq:5672", "mq#f"):
        assert RABBITMQ.problems({"server_url": bad}, credentials) == [
            "config.server_url must be host:port (a vhost may follow: host:5672/vhost), "
            "without user, query or fragment"
        ], bad
    assert RABBITMQ.problems({"server_url": "mq:5672/vhost"}, credentials) == []
