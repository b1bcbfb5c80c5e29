"""moto's server (PyPI ``moto[server]``): SQS, Kinesis and S3 over AWS's own wire
protocols, run in the test process on a port of its own, and aiobotocore clients that
read back what relay sent. moto checks no credentials and no signatures (any key and
secret are accepted), nor an S3 object's checksum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.contract import Broker, Proxy
from tests.support.tcpproxy import TcpProxy

REGION = "us-east-1"
# moto's default account: its queue URLs are <endpoint>/<account>/<name>.
ACCOUNT = "123456789012"
# Any key and secret do for moto; these look like AWS's (the secret is 40 characters).
KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class Moto:
    """``async with Moto() as moto``: moto's server at ``moto.endpoint``."""

    def __init__(self) -> None:
        self.endpoint = ""
        self._server: Any = None

    async def __aenter__(self) -> Moto:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            pytest.skip(f"moto's server is not installed (pip install 'moto[server]'): {exc}")
        # A line per request otherwise, in every failing test's captured log.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            # shutdown() waits for the serving loop's next poll: not on the event loop.
            await asyncio.to_thread(self._server.stop)
            with contextlib.suppress(Exception):
                self._server._server.server_close()

    @contextlib.asynccontextmanager
    async def client(self, service: str) -> AsyncIterator[Any]:
        """An aiobotocore client of ``service`` on this server."""
        from aiobotocore.session import get_session

        async with get_session().create_client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        ) as client:
            yield client

    def queue_url(self, name: str, endpoint: str | None = None) -> str:
        return f"{endpoint or self.endpoint}/{ACCOUNT}/{name}"


class MotoBroker(Broker):
    """What the AWS types' brokers share: moto's server, reached at an endpoint that
    ``at()`` puts in a destination's values (directly, or through a proxy)."""

    extra = "aws"
    # A submodule relay imports (``None`` for the package alone would not stop the import
    # of a submodule already loaded).
    library = "aiobotocore.session"
    shared_modules = ("relay.delivery.aws",)
    sensitive = ("secret", SECRET)
    # aiobotocore's HTTP client: a connection per request in flight.
    pooled = True

    def __init__(self, moto: Moto) -> None:
        self.moto = moto

    def at(self, endpoint: str) -> dict[str, Any]:
        """``destination()``'s values with ``endpoint`` (``http://host:port``)."""
        raise NotImplementedError

    def destination(self) -> dict[str, Any]:
        return self.at(self.moto.endpoint)

    def via(self, port: int) -> dict[str, Any]:
        return self.at(f"http://127.0.0.1:{port}")

    @contextlib.asynccontextmanager
    async def proxied(self) -> AsyncIterator[tuple[Proxy, dict[str, Any]]]:
        # moto closes each connection after one answer; AWS keeps them open, as this front.
        async with KeepAlive(self.moto.endpoint) as front, TcpProxy(*front.address) as proxy:
            yield proxy, self.via(proxy.port)


class KeepAlive:
    """An HTTP/1.1 front for moto, whose server closes every connection after one answer
    (werkzeug's): it keeps connections open as AWS's endpoints do, so a test can see how
    relay's clients hold theirs. ``async with KeepAlive(moto.endpoint) as front``:
    requests to ``front.endpoint`` are answered by moto."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.address = ("", 0)
        self.endpoint = ""
        self._runner: Any = None
        self._session: Any = None

    async def _forward(self, request: Any) -> Any:
        from aiohttp import web

        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            return web.Response(status=answer.status, headers=kept, body=body)

    async def __aenter__(self) -> KeepAlive:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.address = ("127.0.0.1", port)
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
        await self._session.close()


# Hop-by-hop headers, and those aiohttp sets itself for the body it sends.
_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "server", "date"}
)
