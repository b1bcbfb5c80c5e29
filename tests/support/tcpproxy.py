"""A TCP proxy in front of a broker that tests can turn against relay: count the
connections relay opens, cut them all (a broker restart, a dropped network), or let them
hang (a broker that accepts and never answers)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """``async with TcpProxy(host, port) as proxy``: relay connects to ``proxy.port`` (on
    ``listen``: another loopback address, 127.0.0.2, stands for another host)."""

    def __init__(self, host: str, port: int, listen: str = "127.0.0.1") -> None:
        self.target = (host, port)
        self.listen = listen
        self.port = 0
        # Connections accepted so far, and open now.
        self.accepted = 0
        self.open = 0
        self._hanging = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def hang(self) -> None:
        """Stop passing bytes either way (connections stay open, new ones too)."""
        self._hanging.set()

    def resume(self) -> None:
        self._hanging.clear()

    def cut(self) -> None:
        """Close every connection now, as a broker that restarts does."""
        for writer in list(self._writers):
            writer.close()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                while self._hanging.is_set():
                    await asyncio.sleep(0.05)
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the proxy closing
            await self._serve(client_r, client_w)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            self.open -= 1
            client_w.close()
            return
        pair = {client_w, server_w}
        self._writers |= pair
        try:
            await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))
        finally:
            self._writers -= pair
            self.open -= 1

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.listen, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
