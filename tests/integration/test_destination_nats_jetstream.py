"""nats_jetstream destinations against a real NATS server with JetStream (Debian's
nats-server, started here with a user and password so credentials are checked): the
destination contract, then what is particular to the type (subjects from topics,
Nats-Msg-Id and JetStream's duplicate window, the stream a message must land in)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import nats.aio.client
import nats.js
import orjson
import pytest

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

USER, PASSWORD = "relay-test", "nats-secret-0123"
DENIED = "relaytestdenied"


@pytest.fixture(scope="module")
def nats_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A NATS server of this module's, JetStream on, a user and password required."""
    path = binary("nats-server", "nats-server")
    port = free_port()
    store = tmp_path_factory.mktemp("nats")
    # The user may publish anywhere but under DENIED (a permissions violation, which the
    # server reports on the connection, not as the publish's answer).
    (store / "server.conf").write_text(f"""
listen: "{HOST}:{port}"
jetstream {{ store_dir: "{store / "js"}" }}
authorization {{
  users = [{{
    user: "{USER}", password: "{PASSWORD}",
    permissions: {{ publish: {{ deny: ["{DENIED}.>"] }} }}
  }}]
}}
""")
    with listening([path, "-c", str(store / "server.conf")], port, store / "server.log"):
        yield port


class NatsBroker(Broker):
    type = "nats_jetstream"
    extra = "nats"
    library = "nats"
    refused_codes = frozenset({"no_stream"})
    sensitive = ("password", PASSWORD)

    def __init__(self, port: int) -> None:
        self.port = port
        tag = uuid.uuid4().hex[:12]
        self.prefix, self.missing = f"relaytest{tag}", f"relaytestmissing{tag}"
        self.stream = f"RELAYTEST_{tag}"
        self.client: nats.aio.client.Client | None = None
        self.js: nats.js.JetStreamContext | None = None
        self.subscription: Any = None

    async def __aenter__(self) -> NatsBroker:
        self.client = await nats.connect(f"nats://{HOST}:{self.port}", user=USER, password=PASSWORD)
        self.js = self.client.jetstream()
        self.subscription = await self._stream(self.stream, self.prefix)
        return self

    async def _stream(self, name: str, prefix: str) -> Any:
        """A stream taking ``<prefix>.>``, and a pull subscription reading it."""
        assert self.js is not None
        await self.js.add_stream(name=name, subjects=[f"{prefix}.>"])
        return await self.js.pull_subscribe(f"{prefix}.>", stream=name)

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None and self.js is not None
        for name in (self.stream, self.stream + "_MISSING"):
            try:
                await self.js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass
        await self.client.close()

    def destination(self) -> dict[str, Any]:
        return self.via(self.port)

    def address(self) -> tuple[str, int]:
        return HOST, self.port

    def via(self, port: int) -> dict[str, Any]:
        return {
            "config": {"server_url": f"{HOST}:{port}", "subject": self.prefix + ".{topic}"},
            "credentials": {"username": USER, "password": PASSWORD},
        }

    async def receive(self, timeout: float = 10.0) -> Received:
        try:
            [message] = await self.subscription.fetch(1, timeout=timeout)
        except nats.errors.TimeoutError:
            raise AssertionError(f"no message in {self.stream} within {timeout} s") from None
        await message.ack()
        headers = {k.lower(): v for k, v in (message.headers or {}).items()}
        return Received(message.data, headers, {"subject": message.subject})

    async def refusing(self) -> dict[str, Any]:
        values = self.destination()
        values["config"]["subject"] = self.missing + ".{topic}"
        return values

    async def stop_refusing(self) -> None:
        self.subscription = await self._stream(self.stream + "_MISSING", self.missing)

    def config_change(self) -> dict[str, str]:
        return {"stream": self.stream}

    async def count(self) -> int:
        assert self.js is not None
        return int((await self.js.stream_info(self.stream)).state.messages)


@pytest.fixture
async def broker(nats_port: int) -> AsyncIterator[NatsBroker]:
    async with NatsBroker(nats_port) as b:
        yield b


class TestNatsJetStream(DestinationContract):
    """The contract (tests/support/contract.py) against NATS JetStream."""


@pytest.fixture
async def relay(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: NatsBroker
) -> Contract:
    return await relay_with(start_relay, database_url, http, db, broker)


async def test_the_subject_is_made_from_the_topic_and_the_message_id_from_the_event(
    relay: Contract, broker: NatsBroker
) -> None:
    created = await relay.create(broker.destination(), id="js")
    assert created["target"] == f"{HOST}:{broker.port} / {broker.prefix}.{{topic}}"
    assert created["config"]["tls"] == "false"
    event_id = await relay.publish(b'{"n": 1}', topic="order.created")
    message = await broker.receive()
    assert message.extra["subject"] == f"{broker.prefix}.order.created"
    assert message.metadata["nats-msg-id"] == f"{event_id}:js"
    await wait_until(lambda: _delivered(relay, event_id))
    [attempt] = await relay.attempts(event_id)
    answer = orjson.loads(attempt["response_body"])
    assert answer == {"stream": broker.stream, "seq": 1, "duplicate": False}


async def test_a_manual_retry_is_sent_again_past_jetstreams_duplicate_window(
    relay: Contract, broker: NatsBroker
) -> None:
    """A scheduled retry reuses the message id (a publish whose acknowledgement was lost
    is not stored twice); a retry the operator asks for is a new message."""
    await relay.create(broker.destination(), id="js")
    event_id = await relay.publish(b'{"n": 1}', topic="order.created")
    first = await broker.receive()
    await wait_until(lambda: _delivered(relay, event_id))
    status, answer = await relay.call(
        "POST", "/retry", {"event_id": event_id, "destination_id": "js"}
    )
    assert status in (200, 202), answer
    second = await broker.receive()
    assert second.body == first.body
    assert second.metadata["nats-msg-id"] == f"{event_id}:js:2"
    assert await broker.count() == 2


async def test_a_message_for_another_stream_is_refused_and_a_bad_subject_is_not_retried(
    relay: Contract, broker: NatsBroker
) -> None:
    values = broker.destination()
    values["config"]["stream"] = "NOT_THIS_ONE"
    await relay.create(values, id="wrong")
    event_id = await relay.publish(b"{}", topic="order.created")

    async def failed() -> bool:
        return bool(await relay.attempts(event_id))

    await wait_until(failed)
    [first, *_] = await relay.attempts(event_id)
    assert first["status"] == "failed" and first["error_code"] == "stream_mismatch"
    # A topic that makes no subject (a space in it) fails its delivery once, for good.
    await relay.call("DELETE", "/tenants/acme/destinations/wrong")
    await relay.create(broker.destination(), id="js")
    bad = await relay.publish(b"{}", topic="order created")
    await wait_until(lambda: _status(relay, bad, "failed"))
    [attempt] = await relay.attempts(bad)
    assert attempt["error_code"] == "format_error"
    assert "order created" in attempt["error_detail"]


async def _first_attempt(relay: Contract, values: dict[str, Any]) -> Any:
    """The first attempt row of an event published to a destination made of ``values``."""
    await relay.create(values)
    event_id = await relay.publish(b"{}", topic="order.created")

    async def attempted() -> bool:
        return bool(await relay.attempts(event_id))

    await wait_until(attempted)
    [first, *_] = await relay.attempts(event_id)
    return first


async def test_a_wrong_password_is_auth_failed(relay: Contract, broker: NatsBroker) -> None:
    values = broker.destination()
    values["credentials"]["password"] = "not-the-password"
    first = await _first_attempt(relay, values)
    assert first["status"] == "failed" and first["error_code"] == "auth_failed", dict(first)


async def test_the_api_refuses_a_subject_with_wildcards_and_two_kinds_of_credential(
    relay: Contract, broker: NatsBroker
) -> None:
    assert (await relay.call("PUT", "/tenants/acme"))[0] in (200, 201)
    values = broker.destination()
    values["config"]["subject"] = "events.*"
    values["credentials"]["token"] = "a-token"
    status, answer = await relay.call(
        "POST", "/tenants/acme/destinations", {"type": "nats_jetstream", "topics": "*", **values}
    )
    assert status == 422, answer
    assert any(p.startswith("config.subject must be dot-separated tokens") for p in answer["data"])
    assert "credentials: give a token or a username and password, not both" in answer["data"]


async def _status(relay: Contract, event_id: str, status: str) -> bool:
    return await relay.delivery_status(event_id) == status


async def _delivered(relay: Contract, event_id: str) -> bool:
    return await _status(relay, event_id, "delivered")


async def test_a_subject_the_user_may_not_publish_to_is_access_denied(
    relay: Contract, broker: NatsBroker
) -> None:
    values = broker.destination()
    values["config"]["subject"] = DENIED + ".{topic}"
    first = await _first_attempt(relay, values)
    assert first["status"] == "failed" and first["error_code"] == "access_denied", dict(first)
    assert "permissions violation" in first["error_detail"].lower()
