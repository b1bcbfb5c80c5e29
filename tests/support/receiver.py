"""A real webhook receiver for tests: a local aiohttp server that records every request
and answers as the test tells it to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy


@dataclass
class Received:
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    """``async with Receiver() as r``: r.url(path) to point a destination at it."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        # Called with the request number (0-based) and the path: what to answer.
        self.reply: Callable[[int, str], Reply] = lambda n, path: Reply()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Requests being answered now, and the most at any moment.
        self.in_flight = 0
        self.max_in_flight = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on_path(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        number = len(self.requests)
        self.requests.append(Received(request.path, request.headers, body))
        async with self._arrived:
            self._arrived.notify_all()
        reply = self.reply(number, request.path)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply.delay:
                await asyncio.sleep(reply.delay)
            return web.Response(status=reply.status, text=reply.body, headers=reply.headers)
        finally:
            self.in_flight -= 1

    async def wait_for(
        self, count: int, *, path: str | None = None, timeout: float = 10.0
    ) -> list[Received]:
        """Wait until at least ``count`` requests (on ``path``, if given) arrived."""

        def enough() -> bool:
            seen = self.on_path(path) if path else self.requests
            return len(seen) >= count

        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(enough)
        return self.on_path(path) if path else list(self.requests)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
