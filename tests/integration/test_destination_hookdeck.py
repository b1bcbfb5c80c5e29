"""hookdeck destinations against a local stand-in for Hookdeck: a real HTTP server as
its publish endpoint (delivery.hookdeck.publish_url) and as its token check
(delivery.hookdeck.api_url). Hookdeck's own servers are not reachable from tests; as in
Outpost's suite, nothing here checks a token against them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.support.contract import (
    Broker,
    Contract,
    DestinationContract,
    Proxy,
    Received,
    relay_with,
)
from tests.support.receiver import Receiver, Reply
from tests.support.tcpproxy import TcpProxy

VERIFY = "/2025-01-01/sources/{id}/managed/verify"


def token(source_id: str, key: str = "signing-key-of-the-source") -> str:
    return base64.b64encode(f"{source_id}:{key}".encode()).decode()


class HookdeckStandIn(Broker):
    type = "hookdeck"
    refused_statuses = frozenset({503})
    sensitive = ("token", token("src_contract"))
    # The dispatcher's HTTP client (shared by the HTTP types): a connection per request in
    # flight, kept alive.
    pooled = True

    def __init__(self) -> None:
        # Hookdeck's API (token checks) and its publish endpoint, apart: the latter goes
        # down in one test.
        self.api = Receiver()
        self.hooks = Receiver()
        self.source = "src_contract"
        self.refused: set[str] = set()
        self.read = 0
        self.names = {"src_contract": "orders-source", "src_refused": "refused-source"}
        # The port relay posts to (a proxy's, when one is in between).
        self.publish_port: int | None = None

    def _api_reply(self, n: int, path: str) -> Reply:
        for source_id, name in self.names.items():
            if path == VERIFY.format(id=source_id):
                return Reply(200, orjson.dumps({"name": name, "url": "https://x"}).decode())
        return Reply(404, '{"message": "not found"}')

    def _hook_reply(self, n: int, path: str) -> Reply:
        return Reply(503, "busy") if path.lstrip("/") in self.refused else Reply(200, "ok")

    async def __aenter__(self) -> HookdeckStandIn:
        await self.api.__aenter__()
        await self.hooks.__aenter__()
        self.api.reply = self._api_reply
        self.hooks.reply = self._hook_reply
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hooks.__aexit__()
        await self.api.__aexit__()

    def settings(self) -> dict[str, Any]:
        base = self.hooks.url("")
        if self.publish_port is not None:
            base = f"http://127.0.0.1:{self.publish_port}"
        return {"delivery": {"hookdeck": {"publish_url": base, "api_url": self.api.url("")}}}

    def destination(self) -> dict[str, Any]:
        return {"credentials": {"token": token(self.source)}}

    async def receive(self, timeout: float = 10.0) -> Received:
        path = "/" + self.source
        while True:
            requests = await self.hooks.wait_for(self.read + 1, path=path, timeout=timeout)
            request = requests[self.read]
            self.read += 1
            if request.path.lstrip("/") not in self.refused:
                break
        prefix = "x-outpost-"
        return Received(
            request.body,
            {
                k.lower().removeprefix(prefix): v
                for k, v in request.headers.items()
                if k.lower().startswith(prefix)
            },
            {
                "signature": request.headers["x-hookdeck-signature"],
                "content_type": request.headers["content-type"],
            },
        )

    async def refusing(self) -> dict[str, Any]:
        self.source = "src_refused"
        self.refused.add(self.source)
        return self.destination()

    async def stop_refusing(self) -> None:
        self.refused.clear()

    def down(self) -> dict[str, Any]:
        return self.destination()

    async def take_down(self) -> None:
        await self.hooks.__aexit__()

    @contextlib.asynccontextmanager
    async def proxied(self) -> AsyncIterator[tuple[Proxy, dict[str, Any]]]:
        # The publish endpoint is a setting of relay's, not the destination's: a relay
        # started from here on posts through the proxy.
        async with TcpProxy("127.0.0.1", self.hooks.port) as proxy:
            self.publish_port = proxy.port
            try:
                yield proxy, self.destination()
            finally:
                self.publish_port = None


@pytest.fixture
async def broker() -> AsyncIterator[HookdeckStandIn]:
    async with HookdeckStandIn() as b:
        yield b


class TestHookdeck(DestinationContract):
    """The contract (tests/support/contract.py) against the stand-in."""


@pytest.fixture
async def relay(
    start_relay: Any, database_url: str, http: Any, db: Any, broker: HookdeckStandIn
) -> Contract:
    return await relay_with(start_relay, database_url, http, db, broker)


async def test_the_body_is_signed_with_the_token_as_hookdeck_checks_it(
    relay: Contract, broker: HookdeckStandIn
) -> None:
    await relay.create(broker.destination())
    await relay.publish(b'{"id": 1}', topic="order.created")
    message = await broker.receive()
    key = token("src_contract").encode()
    expected = base64.b64encode(hmac.new(key, b'{"id": 1}', hashlib.sha256).digest()).decode()
    assert message.extra == {"signature": f"v0={expected}", "content_type": "application/json"}


async def test_a_token_is_checked_with_hookdeck_when_saved(
    relay: Contract, broker: HookdeckStandIn
) -> None:
    created = await relay.create(broker.destination(), id="h")
    [check] = broker.api.requests
    assert check.path == VERIFY.format(id="src_contract")
    assert check.headers["x-hookdeck-source-token"] == token("src_contract")
    # The source's name and id are kept in config, and shown as Outpost shows them.
    assert created["config"] == {"source_name": "orders-source", "source_id": "src_contract"}
    assert created["target"] == "orders-source"
    assert created["target_url"] == "https://dashboard.hookdeck.com/sources/src_contract"
    # The same token again is not checked again; a new one is.
    path = "/tenants/acme/destinations/h"
    status, _ = await relay.call("PATCH", path, {"credentials": {"token": token("src_contract")}})
    assert status == 200 and len(broker.api.requests) == 1
    status, patched = await relay.call(
        "PATCH", path, {"credentials": {"token": token("src_refused")}}
    )
    assert status == 200 and len(broker.api.requests) == 2
    assert patched["config"]["source_name"] == "refused-source"
    # A token Hookdeck does not know, and one that is no token, are refused as Outpost does.
    status, answer = await relay.call(
        "PATCH", path, {"credentials": {"token": token("src_unknown")}}
    )
    assert status == 422
    assert answer["data"] == ["credentials.token failed token_verification_failed validation"]
    status, answer = await relay.call(
        "POST",
        "/tenants/acme/destinations",
        {"type": "hookdeck", "topics": "*", "credentials": {"token": "hk_12345"}},
    )
    assert status == 422
    assert answer["data"] == ["credentials.token failed invalid_token_format validation"]
