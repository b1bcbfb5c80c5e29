"""PostgreSQL restarts under load: the API answers 503 (never hangs, never 500s), relay
reconnects by itself, and no acknowledged event is lost.

The server restarted here is one this test starts itself (tests/support/pgserver.py),
never a shared one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from relay.app import create_app
from relay.appkeys import DISPATCHER
from tests.support.pgserver import PgServer
from tests.support.receiver import Receiver
from tests.support.relay import admin_headers, make_settings

pytestmark = pytest.mark.slow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def pg() -> Iterator[PgServer]:
    with PgServer() as server:
        yield server


@dataclass
class Answer:
    event_id: str
    status: int | None
    body: Any
    retry_after: str | None
    seconds: float
    at: float
    error: str | None = None


@pytest.fixture
async def relay(pg: PgServer, receiver: Receiver) -> AsyncIterator[TestServer]:
    settings = make_settings(
        pg.url(),
        tenants=[
            {
                "id": "acme",
                "destinations": [{"id": "orders", "url": receiver.url(), "secret": SECRET}],
            }
        ],
        database={"pool_size": 5},
        # A short lease: a try cut off by the crash is retried within seconds.
        delivery={"lease_seconds": 3, "shutdown_grace_seconds": 1},
    )
    server = TestServer(create_app(settings, pg.url()), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_postgres_restart_under_load_answers_503_and_loses_no_acknowledged_event(
    pg: PgServer, relay: TestServer, receiver: Receiver
) -> None:
    answers: list[Answer] = []
    stop = asyncio.Event()
    numbers = itertools.count()
    timeout = aiohttp.ClientTimeout(total=30)

    async def publisher(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            event_id = f"evt-{next(numbers):05d}"
            body = {"id": event_id, "tenant_id": "acme", "topic": "t", "data": {"id": event_id}}
            started = time.monotonic()
            try:
                async with http.post(
                    relay.make_url("/api/v1/publish"), json=body, headers=admin_headers()
                ) as resp:
                    payload = await resp.json(content_type=None)
                    answers.append(
                        Answer(
                            event_id,
                            resp.status,
                            payload,
                            resp.headers.get("Retry-After"),
                            time.monotonic() - started,
                            started,
                        )
                    )
            except Exception as exc:  # a hang (client timeout) or a dropped connection
                answers.append(
                    Answer(
                        event_id, None, None, None, time.monotonic() - started, started, repr(exc)
                    )
                )
            await asyncio.sleep(0.01)

    def acked_since(moment: float) -> int:
        return sum(1 for a in answers if a.status == 202 and a.at >= moment)

    async def until(predicate: Any, limit: float) -> None:
        async with asyncio.timeout(limit):
            while not predicate():
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(timeout=timeout) as http:
        workers = [asyncio.create_task(publisher(http)) for _ in range(4)]
        try:
            await until(lambda: acked_since(0) >= 50, 20)

            # Crash PostgreSQL (no clean shutdown), keep it down a while, start it again.
            down_at = time.monotonic()
            await asyncio.to_thread(pg.stop, "immediate")
            await until(lambda: sum(1 for a in answers if a.status == 503) >= 10, 20)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(pg.start)
            up_at = time.monotonic()

            await until(lambda: acked_since(up_at) >= 50, 30)
        finally:
            stop.set()
            await asyncio.gather(*workers)

    # While it was down: 503 JSON with Retry-After; never a 500, a hang or a reset.
    assert [a for a in answers if a.error is not None] == []
    assert {a.status for a in answers} <= {202, 503}
    unavailable = [a for a in answers if a.status == 503]
    assert len(unavailable) >= 10
    for answer in unavailable:
        assert answer.body["status"] == 503
        assert "unavailable" in answer.body["message"]
        assert answer.retry_after is not None and int(answer.retry_after) > 0
        assert down_at <= answer.at + answer.seconds
    assert max(a.seconds for a in answers) < 10

    # Every acknowledged event reaches the receiver (at least once).
    acked = {a.event_id for a in answers if a.status == 202}
    assert acked_since(up_at) >= 50

    def received() -> set[str]:
        return {r.headers["webhook-id"] for r in receiver.requests}

    await until(lambda: acked <= received(), 60)

    # And the database holds every acknowledged event, each delivery recorded delivered.
    conn = await asyncpg.connect(pg.url())
    try:
        stored = {r["id"] for r in await conn.fetch("SELECT id FROM relay.events")}
        assert acked <= stored

        async def recorded() -> int:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM relay.deliveries d JOIN relay.events e"
                " ON e.seq = d.event_seq WHERE e.id = ANY($1) AND d.status = 'delivered'",
                list(acked),
            )
            return count

        async with asyncio.timeout(30):
            while await recorded() < len(acked):
                await asyncio.sleep(0.1)
    finally:
        await conn.close()

    # The dispatcher's loops all came back: LISTEN reconnected, and it reports healthy.
    dispatcher = relay.app[DISPATCHER]
    assert dispatcher is not None
    await until(lambda: dispatcher.listening, 10)
    assert dispatcher.listen_connections >= 2
    # The lease loop reached the database again (its heartbeat, on the monotonic clock).
    await until(lambda: dispatcher.supervisor.loops["lease"].beat_at > up_at, 10)
    assert dispatcher.healthy
    async with aiohttp.ClientSession() as http:
        async with http.get(relay.make_url("/healthz")) as resp:
            assert resp.status == 200
