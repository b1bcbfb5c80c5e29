"""The contract every destination type keeps, run against its real server (Outpost's
internal/destregistry/testing/publisher_suite.go is the model).

A type's test module subclasses ``DestinationContract`` and gives a ``broker`` fixture:
a ``Broker`` that knows how to point a destination at the real server (or at one that
refuses, or at none), and how to read a message back. Each test then goes through
relay as a user does: the API creates the destination and publishes the event, the
dispatcher delivers it, the broker is read, and relay.attempts says what happened.

    class TestRabbitMQ(DestinationContract):
        @pytest.fixture
        async def broker(self) -> AsyncIterator[Broker]:
            async with RabbitBroker() as broker:
                yield broker

Besides the messages, the contract holds a type's connections to account: through a proxy
in front of its server (``Broker.proxied()``) it counts them (one per destination, reused,
opened again when cut, closed when relay stops) and hangs them (a hung server fails its
own deliveries only). And it starts ``relay serve`` as users do, the destination in its
config file.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Protocol

import asyncpg
import orjson
import pytest

from relay.delivery import registry
from tests.support.relay import (
    ADMIN_KEY,
    RelayProcess,
    admin_headers,
    free_port,
    make_settings,
    toml,
)
from tests.support.tcpproxy import TcpProxy

API = "/api/v1"
RFC3339_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# The first retries of the contract's schedule (no jitter): long enough to read between
# attempts, short enough for a test; plenty of them, so a refusal outlasts a few.
SCHEDULE = [0.25, 0.25, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class Proxy(Protocol):
    """Between relay and a type's server (tests/support/tcpproxy.py's TcpProxy): relay's
    connections through it, opened so far and open now; ``cut()`` closes them, ``hang()``
    stops passing bytes until ``resume()``."""

    @property
    def accepted(self) -> int: ...
    @property
    def open(self) -> int: ...
    def cut(self) -> None: ...
    def hang(self) -> None: ...
    def resume(self) -> None: ...


@dataclass
class Received:
    """A message as the broker holds it: its body, and Outpost's metadata as this type
    carries it (message headers, x-outpost-* headers, attributes), keys in lower case."""

    body: bytes
    metadata: dict[str, str]
    # What else the type sets (routing key, content type, signature, ...).
    extra: dict[str, Any] = field(default_factory=dict)


class Broker:
    """A type's real server as the contract sees it. Subclasses fill in the hooks."""

    type: ClassVar[str]
    # The pip extra whose absence the API names, and the client library it installs
    # (None: the type needs nothing beyond relay's own dependencies).
    extra: ClassVar[str | None] = None
    library: ClassVar[str | None] = None
    # relay's modules besides the type's own that import the library (one shared by
    # several types: relay/delivery/aws.py), to import again without it.
    shared_modules: ClassVar[tuple[str, ...]] = ()
    # Codes of a refused message's failed attempt (HTTP types: the HTTP status instead).
    refused_codes: ClassVar[frozenset[str]] = frozenset()
    refused_statuses: ClassVar[frozenset[int]] = frozenset()
    down_codes: ClassVar[frozenset[str]] = frozenset({"connection_refused"})
    # The credential Outpost obfuscates in answers, and its value in destination().
    sensitive: ClassVar[tuple[str, str]]
    # Connections one destination's client opens to deliver; it keeps one of them open.
    connections: ClassVar[int] = 1
    # The client keeps a pool of connections, one per request in flight (HTTP, Redis), not
    # one connection that carries them all: the connection tests send one at a time.
    pooled: ClassVar[bool] = False

    def settings(self) -> dict[str, Any]:
        """Sections of relay's settings the type needs (e.g. its endpoints)."""
        return {}

    def destination(self) -> dict[str, Any]:
        """``config`` and ``credentials`` of a destination the server accepts."""
        raise NotImplementedError

    async def receive(self, timeout: float = 10.0) -> Received:
        """The next message delivered to that destination."""
        raise NotImplementedError

    async def refusing(self) -> dict[str, Any]:
        """``config`` and ``credentials`` of a destination the server refuses for now."""
        raise NotImplementedError

    async def stop_refusing(self) -> None:
        """From now on the server takes what ``refusing()`` pointed at; ``receive`` reads it."""
        raise NotImplementedError

    def down(self) -> dict[str, Any]:
        """``config`` and ``credentials`` of a destination where no server listens (from
        ``take_down()`` on, for a type whose server relay's settings name); by default,
        ``via`` a port nobody listens on."""
        return self.via(free_port())

    async def take_down(self) -> None:
        """Called once the ``down()`` destination is made: stop what should be down."""

    def config_change(self) -> dict[str, str]:
        """A change to ``destination()``'s config a merge-patch can make ({}: none)."""
        return {}

    def address(self) -> tuple[str, int]:
        """Where the server listens, for a proxy in front of it."""
        raise NotImplementedError

    def via(self, port: int) -> dict[str, Any]:
        """``destination()``'s values, reaching the server through 127.0.0.1:``port``."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def proxied(self) -> AsyncIterator[tuple[Proxy, dict[str, Any]]]:
        """A proxy in front of the server, and ``destination()``'s values through it."""
        async with TcpProxy(*self.address()) as proxy:
            yield proxy, self.via(proxy.port)


class Contract:
    """A live relay (API and dispatcher) with the broker's settings, and its database."""

    def __init__(self, http: Any, server: Any, db: asyncpg.Connection, broker: Broker) -> None:
        self.http, self.server, self.db, self.broker = http, server, db, broker

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        kwargs = {} if body is None else {"json": body}
        url = self.server.make_url(API + path)
        async with self.http.request(method, url, headers=admin_headers(), **kwargs) as resp:
            return resp.status, await resp.json()

    async def create(self, values: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        assert (await self.call("PUT", "/tenants/acme"))[0] in (200, 201)
        body = {"type": self.broker.type, "topics": "*", **values, **extra}
        status, created = await self.call("POST", "/tenants/acme/destinations", body)
        assert status == 201, created
        return created  # type: ignore[no-any-return]

    async def publish(self, raw_data: bytes, **fields: Any) -> str:
        """Publish with ``data`` exactly as these bytes; the event id."""
        head = orjson.dumps({"tenant_id": "acme", **fields})[:-1]
        headers = admin_headers() | {"Content-Type": "application/json"}
        url = self.server.make_url(API + "/publish")
        body = head + b',"data":' + raw_data + b"}"
        async with self.http.post(url, data=body, headers=headers) as r:
            assert r.status == 202, await r.text()
            return str((await r.json())["id"])

    async def attempts(self, event_id: str, destination: str | None = None) -> list[Any]:
        """The event's attempts (to ``destination``, if given), first to last."""
        return await self.db.fetch(
            "SELECT a.* FROM relay.attempts a JOIN relay.events e ON e.seq = a.event_seq"
            " WHERE e.id = $1 AND ($2::text IS NULL OR a.destination_id = $2)"
            " ORDER BY a.number",
            event_id,
            destination,
        )

    async def delivery_status(self, event_id: str, destination: str | None = None) -> str | None:
        return await self.db.fetchval(  # type: ignore[no-any-return]
            "SELECT d.status FROM relay.deliveries d JOIN relay.events e ON e.seq = d.event_seq"
            " WHERE e.id = $1 AND ($2::text IS NULL OR d.destination_id = $2)",
            event_id,
            destination,
        )


async def relay_with(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: Broker, **sections: Any
) -> Contract:
    """A live relay for ``broker``: the contract's retry schedule, the broker's settings,
    then ``sections`` (``delivery`` merged into the others' key by key)."""
    merged = broker.settings()
    delivery = {"retry": {"schedule_seconds": SCHEDULE, "jitter": 0}}
    delivery |= merged.pop("delivery", {}) | sections.pop("delivery", {})
    settings = make_settings(database_url, delivery=delivery, **(merged | sections))
    return Contract(http, await start_relay(settings), db, broker)


StartContract = Callable[..., Awaitable[Contract]]


class DestinationContract:
    """What every destination type must do, through relay's API, against its server."""

    @pytest.fixture
    def start_contract(
        self, broker: Broker, start_relay: Any, database_url: str, http: Any, db: Any
    ) -> StartContract:
        """``await start_contract(**sections)``: ``relay_with`` for this test's broker."""

        async def start(**sections: Any) -> Contract:
            return await relay_with(start_relay, database_url, http, db, broker, **sections)

        return start

    @pytest.fixture
    async def contract(self, start_contract: StartContract) -> Contract:
        return await start_contract()

    async def test_an_event_reads_back_as_outpost_sends_it(self, contract: Contract) -> None:
        broker = contract.broker
        await contract.create(
            broker.destination(), delivery_metadata={"app": "relay", "source": "destination"}
        )
        data = b'{ "z" : 1.50,\n  "a":[1e2, "\\u00e9", {"k": null}] }'
        before = time.time()
        event_id = await contract.publish(
            data, topic="order.created", metadata={"source": "crm", "region": "eu"}
        )
        message = await broker.receive()
        # The producer's bytes, as Outpost sends the event's data.
        assert message.body == data
        # Outpost's MakeMetadata: system keys < delivery_metadata < the event's metadata.
        meta = message.metadata
        assert meta["event-id"] == event_id and meta["topic"] == "order.created"
        assert meta["source"] == "crm" and meta["region"] == "eu" and meta["app"] == "relay"
        assert RFC3339_SECONDS.match(meta["timestamp"]), meta["timestamp"]
        stamped = calendar.timegm(time.strptime(meta["timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
        assert stamped >= int(before) - 1
        await wait_until(lambda: _all_are(contract, [event_id], "delivered"))
        [attempt] = await contract.attempts(event_id)
        assert attempt["status"] == "success" and attempt["number"] == 1
        assert attempt["error_code"] is None
        # The API shows the attempt as Outpost does (a broker's success is code "OK"), by
        # the destination's type too, and counts it under that type.
        status, page = await contract.call(
            "GET", f"/attempts?event_id={event_id}&destination_type={broker.type}"
        )
        assert status == 200 and [a["status"] for a in page["models"]] == ["success"]
        code = str(attempt["http_status"]) if attempt["http_status"] else "OK"
        assert page["models"][0]["code"] == code
        other = "rabbitmq" if broker.type == "kafka" else "kafka"
        path = f"/attempts?event_id={event_id}&destination_type={other}"
        status, page = await contract.call("GET", path)
        assert status == 200 and page["models"] == []
        day = time.strftime("%Y-%m-%d", time.gmtime())
        status, metrics = await contract.call(
            "GET",
            f"/metrics/attempts?time[start]={day}T00:00:00Z&time[end]=2999-01-01T00:00:00Z"
            "&measures=count&dimensions=destination_type&dimensions=code",
        )
        assert status == 200, metrics
        assert [(m["dimensions"], m["metrics"]["count"]) for m in metrics["data"]] == [
            ({"destination_type": broker.type, "code": code}, 1)
        ]

    async def test_a_refused_message_is_a_failed_attempt_retried_on_schedule(
        self, contract: Contract
    ) -> None:
        broker = contract.broker
        await contract.create(await broker.refusing())
        event_id = await contract.publish(b'{"n": 1}', topic="order.created")

        async def failed_twice() -> bool:
            return len(await contract.attempts(event_id)) >= 2

        await wait_until(failed_twice)
        first, second = (await contract.attempts(event_id))[:2]
        for attempt in (first, second):
            assert attempt["status"] == "failed"
            assert (
                attempt["error_code"] in broker.refused_codes
                or attempt["http_status"] in broker.refused_statuses
            ), dict(attempt)
            assert attempt["error_detail"] or attempt["response_body"], dict(attempt)
        # The second try came on the schedule (its first delay), not at once.
        assert second["started_at"] - first["started_at"] >= timedelta(seconds=SCHEDULE[0] - 0.05)
        await broker.stop_refusing()
        message = await broker.receive(timeout=20)
        assert message.body == b'{"n": 1}'
        await wait_until(lambda: _all_are(contract, [event_id], "delivered"), timeout=20)
        attempts = await contract.attempts(event_id)
        assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
        assert [a["status"] for a in attempts][-1] == "success"

    async def test_a_server_that_is_down_is_a_failed_attempt_with_its_code(
        self, contract: Contract
    ) -> None:
        broker = contract.broker
        await contract.create(broker.down())
        await broker.take_down()
        event_id = await contract.publish(b'{"n": 2}', topic="order.created")

        async def failed_twice() -> bool:
            return len(await contract.attempts(event_id)) >= 2

        await wait_until(failed_twice)
        for attempt in (await contract.attempts(event_id))[:2]:
            assert attempt["status"] == "failed" and attempt["http_status"] is None
            assert attempt["error_code"] in broker.down_codes, dict(attempt)
        assert await contract.delivery_status(event_id) in ("pending", "delivering")

    async def test_the_api_shows_and_updates_it_as_outpost_does(self, contract: Contract) -> None:
        broker = contract.broker
        values = broker.destination()
        created = await contract.create(values, id="d1")
        key, secret = broker.sensitive
        # Secrets are never echoed: Outpost's obfuscation (4 characters, then asterisks).
        shown = created["credentials"][key]
        assert shown != secret and set(shown[4:]) == {"*"} and len(shown) == len(secret)
        assert created["type"] == broker.type and created["target"]
        status, found = await contract.call("GET", "/tenants/acme/destinations/d1")
        assert status == 200 and found["credentials"][key] == shown
        assert found["config"] == created["config"]
        path = f"/tenants/acme/destinations?type={broker.type}"
        status, listed = await contract.call("GET", path)
        assert status == 200 and [d["id"] for d in listed] == ["d1"]
        # Merge-patch: config keys changed one by one, the credentials kept.
        change = broker.config_change()
        status, patched = await contract.call(
            "PATCH",
            "/tenants/acme/destinations/d1",
            {"metadata": {"team": "ops"}, "config": change},
        )
        assert status == 200 and patched["credentials"][key] == shown
        assert patched["metadata"] == {"team": "ops"}
        assert patched["config"] == created["config"] | change
        stored = await contract.db.fetchval(
            "SELECT credentials ->> $1 FROM relay.destinations WHERE id = 'd1'", key
        )
        assert stored == secret
        # Every required field missing is named, as Outpost names it.
        status, answer = await contract.call(
            "POST", "/tenants/acme/destinations", {"type": broker.type, "topics": "*"}
        )
        required = [
            f"{section}.{f.key} is required"
            for section, fields in (
                ("config", registry.schema(broker.type).config_fields),
                ("credentials", registry.schema(broker.type).credential_fields),
            )
            for f in fields
            if f.required
        ]
        assert status == 422 and answer["data"] == required
        status, answer = await contract.call(
            "PATCH", "/tenants/acme/destinations/d1", {"type": "webhook"}
        )
        assert status == 422 and "type cannot be changed" in answer["message"]

    async def test_without_its_extra_it_is_refused_naming_it(
        self, contract: Contract, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        broker = contract.broker
        entry = registry.TYPES[broker.type]
        assert entry.module is not None and entry.extra == broker.extra
        if broker.library is None:
            # Nothing to install: it delivers with relay's own dependencies.
            assert registry.availability(broker.type) is None
            return
        # The client library cannot be imported (as in an install without the extra).
        monkeypatch.setitem(sys.modules, broker.library, None)  # type: ignore[arg-type]
        # Not imported yet when this test runs alone.
        monkeypatch.delitem(sys.modules, entry.module, raising=False)
        for name in broker.shared_modules:
            # Gone from sys.modules and from its package (``from package import name``
            # would find it there).
            monkeypatch.delitem(sys.modules, name, raising=False)
            package, _, attribute = name.rpartition(".")
            monkeypatch.delattr(sys.modules[package], attribute, raising=False)
        registry.forget()
        try:
            status, answer = await contract.call(
                "POST",
                "/tenants/acme/destinations",
                {"type": broker.type, "topics": "*", **broker.destination()},
            )
        finally:
            monkeypatch.undo()
            registry.forget()
        assert status == 422, answer
        assert f"pip install 'relay[{broker.extra}]'" in answer["message"]

    async def test_one_connection_per_destination_reused_and_opened_again_when_cut(
        self, broker: Broker, start_contract: StartContract
    ) -> None:
        # Twenty at once share the one connection; a pool's are one at a time.
        delivery = {"per_destination_concurrency": 1} if broker.pooled else {}
        async with _proxied(broker, start_contract, **delivery) as (relay, proxy, values):
            await relay.create(values)
            for n in range(20):
                await relay.publish(b'{"n": %d}' % n, topic="t")
            bodies = {(await broker.receive()).body for _ in range(20)}
            assert bodies == {b'{"n": %d}' % n for n in range(20)}
            # Twenty deliveries, the connections of one client.
            assert proxy.accepted == broker.connections, proxy.accepted

            proxy.cut()  # the server restarts, say
            after = [b'{"after": %d}' % n for n in range(5)]
            ids = [await relay.publish(body, topic="t") for body in after]
            await _all_arrive(broker, after, timeout=30)
            await wait_until(lambda: _all_are(relay, ids, "delivered"), timeout=30)
            # Opened again, once: not per delivery.
            assert broker.connections < proxy.accepted <= 2 * broker.connections, proxy.accepted

    async def test_a_hung_server_fails_its_own_deliveries_only(
        self, broker: Broker, start_contract: StartContract, receiver: Any
    ) -> None:
        delivery = {"timeout_seconds": 1.0}
        async with _proxied(broker, start_contract, **delivery) as (relay, proxy, values):
            # "connected" has its connection when the server stops answering; "new"
            # connects while it does not answer.
            destinations = ("connected", "new")
            await relay.create(values, id="connected")
            first = await relay.publish(b'{"first": 1}', topic="t")
            assert (await broker.receive()).body == b'{"first": 1}'
            await wait_until(lambda: _all_are(relay, [first], "delivered"))
            await relay.create(values, id="new")
            hook = {"config": {"url": receiver.url("/hook")}}
            await relay.create(hook, type="webhook", id="hook")
            proxy.hang()
            stuck = [b'{"n": %d}' % n for n in range(5)]
            ids = [await relay.publish(body, topic="t") for body in stuck]
            # The webhook beside it is delivered meanwhile, each at once.
            await receiver.wait_for(5, path="/hook", timeout=20)

            async def tried_twice() -> bool:
                tries = [await relay.attempts(ids[0], d) for d in destinations]
                return all(len(t) >= 2 for t in tries)

            await wait_until(tried_twice, timeout=30)
            for destination in destinations:
                for attempt in await relay.attempts(ids[0], destination):
                    assert attempt["status"] == "failed", dict(attempt)
                    assert attempt["error_code"] == "timeout", dict(attempt)
                    assert attempt["http_status"] is None, dict(attempt)
            proxy.resume()
            await _all_arrive(broker, stuck, timeout=30)

            async def all_delivered() -> bool:
                return all([await _all_are(relay, ids, "delivered", d) for d in destinations])

            await wait_until(all_delivered, timeout=30)

    async def test_stopping_relay_closes_its_connections(
        self, broker: Broker, start_contract: StartContract
    ) -> None:
        async with _proxied(broker, start_contract) as (relay, proxy, values):
            await relay.create(values)
            event_id = await relay.publish(b"{}", topic="t")
            await broker.receive()
            await wait_until(lambda: _all_are(relay, [event_id], "delivered"))
            assert proxy.open == 1, proxy.open
            await relay.server.close()
            await wait_until(lambda: _is(proxy.open == 0), timeout=15)

    @pytest.mark.slow
    async def test_relay_serve_as_users_start_it_delivers(
        self, broker: Broker, tmp_path: Path, http: Any, db: Any, database_url: str
    ) -> None:
        """`relay serve` (uvloop and all defaults), the destination in its config file
        with its credentials from the environment."""
        values = broker.destination()
        credentials = values.get("credentials", {})
        env = {_variable(broker, key): value for key, value in credentials.items()}
        destination = {
            "id": "d",
            "type": broker.type,
            "config": values.get("config", {}),
            "credentials_env": {key: _variable(broker, key) for key in credentials},
        }
        raw = broker.settings()
        # The test's servers are on loopback, which relay refuses by default.
        delivery = {"allow_private_networks": ["127.0.0.0/8"]} | raw.pop("delivery", {})
        port = free_port()
        raw |= {
            "server": {"port": port, "admin_api_key": ADMIN_KEY, "health_port": 0},
            "delivery": delivery,
            "tenants": [{"id": "acme", "destinations": [destination]}],
        }
        config = tmp_path / "relay.toml"
        config.write_text(toml(raw))
        env["RELAY_DATABASE_URL"] = database_url
        serve = RelayProcess("serve", config, tmp_path / "serve.log", env)
        try:
            await serve.ready(f"http://127.0.0.1:{port}/healthz")
            async with http.post(
                f"http://127.0.0.1:{port}/api/v1/publish",
                json={"tenant_id": "acme", "topic": "order.created", "data": {"n": 1}},
                headers=admin_headers(),
            ) as resp:
                assert resp.status == 202, await resp.text()
                event_id = (await resp.json())["id"]
            message = await broker.receive(timeout=30)
        finally:
            code = serve.stop()
        assert code == 0, serve.log
        assert orjson.loads(message.body) == {"n": 1}
        assert message.metadata["topic"] == "order.created"
        assert message.metadata["event-id"] == event_id
        assert await db.fetchval("SELECT status FROM relay.attempts") == "success"


@contextlib.asynccontextmanager
async def _proxied(
    broker: Broker, start_contract: StartContract, **delivery: Any
) -> AsyncIterator[tuple[Contract, Proxy, dict[str, Any]]]:
    """A relay whose destinations may reach the broker through its proxy; stopped before
    the proxy goes (its connections to the proxy are its own to close)."""
    async with broker.proxied() as (proxy, values):
        relay = await start_contract(delivery=delivery)
        try:
            yield relay, proxy, values
        finally:
            await relay.server.close()


async def _all_arrive(broker: Broker, bodies: list[bytes], timeout: float) -> None:
    """Read until each of ``bodies`` arrived (some may arrive twice: at least once)."""
    deadline = time.monotonic() + timeout
    seen: set[bytes] = set()
    while not set(bodies) <= seen:
        seen.add((await broker.receive(timeout=max(deadline - time.monotonic(), 1))).body)


async def _all_are(
    contract: Contract, event_ids: list[str], status: str, destination: str | None = None
) -> bool:
    return all([await contract.delivery_status(i, destination) == status for i in event_ids])


async def _is(value: bool) -> bool:
    return value


def _variable(broker: Broker, key: str) -> str:
    """The environment variable a credential of the config file's destination is in."""
    return f"TEST_{broker.type}_{key}".upper()
