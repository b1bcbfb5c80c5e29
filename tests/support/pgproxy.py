"""A TCP proxy in front of PostgreSQL that can lose a COMMIT's answer.

The server commits, and the client never hears so: the connection drops right where the
``CommandComplete`` message for COMMIT would have reached it. That is what a network
failure or a server crash at the wrong moment looks like to relay, made to happen on
purpose: ``proxy.lose_next_commit_answer()``, or ``lose_next_claim_answer()`` for a
claim (one statement that commits on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from sqlalchemy.engine import make_url

# CommandComplete ('C'), length 11, tag "COMMIT\0": the server's answer to COMMIT.
COMMIT_COMPLETE = re.compile(re.escape(b"C\x00\x00\x00\x0bCOMMIT\x00"))
# The rows of a claim that took some: each carries its destination's signing secret
# (nothing else the dispatcher reads through this proxy does), then the statement's
# CommandComplete.
CLAIM_COMPLETE = re.compile(rb"whsec_.*C\x00\x00\x00.SELECT [1-9]", re.DOTALL)


class PgProxy:
    def __init__(self, target_url: str) -> None:
        url = make_url(target_url)
        # A Unix socket directory (the embedded server's ?host=/dir) or a TCP address.
        socket_dir = url.query.get("host")
        self._socket = (
            f"{socket_dir}/.s.PGSQL.{url.port or 5432}" if isinstance(socket_dir, str) else None
        )
        self._target = (url.host or "127.0.0.1", url.port or 5432)
        self._url = url.difference_update_query(["host"])
        self._server: asyncio.Server | None = None
        self._armed: re.Pattern[bytes] | None = None
        self.commit_answers_lost = 0
        self.answers_lost = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> PgProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return self._url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

    def lose_next_commit_answer(self) -> None:
        self._armed = COMMIT_COMPLETE

    def lose_next_claim_answer(self) -> None:
        """The next claim that takes rows (autocommit: it commits) is not answered."""
        self._armed = CLAIM_COMPLETE

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._socket is not None:
            server_r, server_w = await asyncio.open_unix_connection(self._socket)
        else:
            server_r, server_w = await asyncio.open_connection(*self._target)
        self._writers |= {client_w, server_w}

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, watch: bool) -> None:
            try:
                while data := await r.read(65536):
                    if watch and self._armed is not None and self._armed.search(data):
                        # The server has committed; its answer goes nowhere.
                        if self._armed is COMMIT_COMPLETE:
                            self.commit_answers_lost += 1
                        self._armed = None
                        self.answers_lost += 1
                        break
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for writer in (client_w, server_w):
                    writer.close()

        await asyncio.gather(
            pump(client_r, server_w, watch=False), pump(server_r, client_w, watch=True)
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
