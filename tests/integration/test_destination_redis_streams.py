"""redis_streams destinations against a real Redis (Debian's redis-server, started here
with an ACL user and password so credentials are checked): the destination contract,
then what is particular to the type (streams from topics, trimming, ACL refusals)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio

from tests.support.contract import (
    Broker,
    Contract,
    DestinationContract,
    Received,
    relay_with,
    wait_until,
)
from tests.support.relay import free_port
from tests.support.servers import HOST, binary, listening

USER, PASSWORD = "relay-test", "redis-secret-0123"
# The admin's password (the default user's), for the test's own client.
ADMIN_PASSWORD = "redis-admin-0123"


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Redis of this module's: nothing kept on disk, a password for the default user and
    an ACL user (USER) that may use the keys relaytest:* only."""
    path = binary("redis-server", "redis-server")
    port = free_port()
    home = tmp_path_factory.mktemp("redis")
    argv = [path, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(home), "--requirepass", ADMIN_PASSWORD]
    argv += ["--user", USER, "on", f">{PASSWORD}", "~relaytest:*", "+@all"]
    with listening(argv, port, home / "server.log"):
        yield port


class RedisBroker(Broker):
    type = "redis_streams"
    extra = "redis"
    library = "redis"
    refused_codes = frozenset({"wrong_type"})
    sensitive = ("password", PASSWORD)
    # redis-py's connection pool: a connection per command in flight.
    pooled = True

    def __init__(self, port: int) -> None:
        self.port = port
        tag = uuid.uuid4().hex[:12]
        self.stream, self.missing = f"relaytest:{tag}", f"relaytest:{tag}:refusing"
        self.reading = self.stream
        self.last = "0"
        self.client = redis.asyncio.Redis(host=HOST, port=port, password=ADMIN_PASSWORD)

    async def __aenter__(self) -> RedisBroker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    def destination(self) -> dict[str, Any]:
        return self.via(self.port)

    def address(self) -> tuple[str, int]:
        return HOST, self.port

    def via(self, port: int) -> dict[str, Any]:
        return {
            "config": {"server_url": f"{HOST}:{port}", "stream": self.stream},
            "credentials": {"username": USER, "password": PASSWORD},
        }

    async def receive(self, timeout: float = 10.0) -> Received:
        answer: Any = await self.client.xread(
            {self.reading: self.last}, count=1, block=int(timeout * 1000)
        )
        if not answer:
            raise AssertionError(f"no entry in {self.reading} within {timeout} s")
        [[_, [(entry_id, fields)]]] = answer
        self.last = entry_id
        fields = {k.decode(): v for k, v in fields.items()}
        body = fields.pop("data")
        metadata = {k.lower(): v.decode() for k, v in fields.items()}
        return Received(body, metadata, {"id": entry_id.decode()})

    async def refusing(self) -> dict[str, Any]:
        # The key holds a string: XADD answers WRONGTYPE.
        await self.client.set(self.missing, "not a stream")
        values = self.destination()
        values["config"]["stream"] = self.missing
        return values

    async def stop_refusing(self) -> None:
        await self.client.delete(self.missing)
        self.reading, self.last = self.missing, "0"

    def config_change(self) -> dict[str, str]:
        return {"maxlen": "1000"}


@pytest.fixture
async def broker(redis_port: int) -> AsyncIterator[RedisBroker]:
    async with RedisBroker(redis_port) as b:
        yield b


class TestRedisStreams(DestinationContract):
    """The contract (tests/support/contract.py) against Redis."""


@pytest.fixture
async def relay(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: RedisBroker
) -> Contract:
    return await relay_with(start_relay, database_url, http, db, broker)


async def _first_attempt(relay: Contract, event_id: str) -> Any:
    async def attempted() -> bool:
        return bool(await relay.attempts(event_id))

    await wait_until(attempted)
    return (await relay.attempts(event_id))[0]


async def test_the_stream_is_made_from_the_topic_and_the_entry_id_recorded(
    relay: Contract, broker: RedisBroker
) -> None:
    values = broker.destination()
    values["config"]["stream"] = broker.stream + ":{topic}"
    created = await relay.create(values, id="rs")
    assert created["target"] == f"{HOST}:{broker.port} / {broker.stream}:{{topic}}"
    assert created["config"]["tls"] == "false"
    # Keys are binary-safe: any topic makes one.
    event_id = await relay.publish(b'{"n": 1}', topic="order created")
    broker.reading = f"{broker.stream}:order created"
    message = await broker.receive()
    assert message.body == b'{"n": 1}' and message.metadata["event-id"] == event_id

    async def delivered() -> bool:
        return await relay.delivery_status(event_id) == "delivered"

    await wait_until(delivered)
    [attempt] = await relay.attempts(event_id)
    answer = orjson.loads(attempt["response_body"])
    assert answer == {"stream": f"{broker.stream}:order created", "id": message.extra["id"]}


async def test_maxlen_trims_the_stream(relay: Contract, broker: RedisBroker) -> None:
    values = broker.destination()
    values["config"]["maxlen"] = "10"
    await relay.create(values)
    ids = [await relay.publish(b'{"n": %d}' % n, topic="t") for n in range(300)]

    async def all_delivered() -> bool:
        count = await relay.db.fetchval(
            "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'"
        )
        return bool(count == len(ids))

    await wait_until(all_delivered, timeout=60)
    # Trimmed by whole nodes (MAXLEN ~): far fewer than were added, at least the ten.
    length = await broker.client.xlen(broker.stream)
    assert 10 <= length < 300


async def test_a_key_the_user_may_not_write_is_access_denied(
    relay: Contract, broker: RedisBroker
) -> None:
    values = broker.destination()
    values["config"]["stream"] = "not-relaytest:" + uuid.uuid4().hex
    await relay.create(values)
    first = await _first_attempt(relay, await relay.publish(b"{}", topic="t"))
    assert first["status"] == "failed" and first["error_code"] == "access_denied", dict(first)
    assert "NOPERM" in first["error_detail"] or "permission" in first["error_detail"].lower()


async def test_a_wrong_password_is_auth_failed(relay: Contract, broker: RedisBroker) -> None:
    values = broker.destination()
    values["credentials"]["password"] = "not-the-password"
    await relay.create(values)
    first = await _first_attempt(relay, await relay.publish(b"{}", topic="t"))
    assert first["status"] == "failed" and first["error_code"] == "auth_failed", dict(first)
