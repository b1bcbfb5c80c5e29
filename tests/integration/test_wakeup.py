"""Waking the dispatchers after group commits (relay/wakeup.py).

The group's write no longer NOTIFYs (a notifying commit holds a database-wide lock until
it is flushed); a Waker sends one NOTIFY after the commits that poked it. These tests
listen on the channel as a dispatcher does."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from relay.appkeys import PUBLISHER
from relay.db.outbox import NOTIFY_CHANNEL
from relay.wakeup import Waker
from tests.support.pgserver import PgServer
from tests.support.relay import make_settings
from tests.support.relay import post_publish as post


@pytest.fixture
async def listener(database_url: str) -> Any:
    conn, heard = await listen(database_url)
    yield heard
    await conn.close()


async def listen(url: str) -> tuple[asyncpg.Connection, asyncio.Queue[str]]:
    conn = await asyncpg.connect(url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(NOTIFY_CHANNEL, lambda *args: heard.put_nowait(args[2]))
    return conn, heard


async def sent(waker: Waker, count: int) -> None:
    """Wait for the waker to count ``count`` NOTIFYs: a listener may hear one before the
    waker has its answer."""
    for _ in range(100):
        if waker.sent >= count:
            break
        await asyncio.sleep(0.02)
    assert waker.sent == count


async def quiet(heard: asyncio.Queue[str], seconds: float = 0.3) -> int:
    """Notifications heard within ``seconds``."""
    await asyncio.sleep(seconds)
    count = heard.qsize()
    while not heard.empty():
        heard.get_nowait()
    return count


async def test_pokes_before_the_waker_runs_make_one_notify(
    database_url: str, listener: asyncio.Queue[str]
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    waker = Waker(pool)
    waker.start()
    try:
        for _ in range(50):
            waker.poke()
        assert await quiet(listener) == 1
        # Idle again: the next poke is a NOTIFY of its own, sent at once.
        waker.poke()
        await asyncio.wait_for(listener.get(), timeout=2)
        await sent(waker, 2)
    finally:
        await waker.stop()
        await pool.close()


async def test_publishes_wake_only_when_outbox_rows_were_queued(
    start_relay: Any, database_url: str, receiver: Any, http: Any, listener: asyncio.Queue[str]
) -> None:
    tenants = [
        {"id": "acme", "destinations": [{"id": "orders", "url": receiver.url()}]},
        {"id": "quiet", "destinations": []},
    ]
    server = await start_relay(make_settings(database_url, tenants=tenants), dispatcher=False)
    waker = server.app[PUBLISHER].waker

    # No destination: an event, no outbox row, nothing to wake anyone for.
    status, _ = await post(http, server, {"tenant_id": "quiet", "topic": "t", "data": {}})
    assert status == 202
    assert await quiet(listener) == 0
    assert waker.sent == 0

    # The 202 comes after the commit; the wake-up right after it.
    status, _ = await post(http, server, {"tenant_id": "acme", "topic": "t", "data": {}})
    assert status == 202
    await asyncio.wait_for(listener.get(), timeout=2)

    # A repeat of that id queues nothing: no wake-up.
    status, body = await post(http, server, {"id": "e1", "tenant_id": "acme", "data": {}})
    assert (status, body["duplicate"]) == (202, False)
    await asyncio.wait_for(listener.get(), timeout=2)
    status, body = await post(http, server, {"id": "e1", "tenant_id": "acme", "data": {}})
    assert (status, body["duplicate"]) == (202, True)
    assert await quiet(listener) == 0

    # A burst of concurrent publishes: fewer NOTIFYs than commits that queued rows.
    before, commits = waker.sent, server.app[PUBLISHER].transactions
    bodies = [{"tenant_id": "acme", "topic": "t", "data": {"n": n}} for n in range(200)]
    answers = await asyncio.gather(*(post(http, server, b) for b in bodies))
    assert all(status == 202 for status, _ in answers)
    heard = await quiet(listener)
    assert 1 <= heard == waker.sent - before
    assert heard <= server.app[PUBLISHER].transactions - commits


@pytest.mark.slow
async def test_the_waker_outlives_a_database_restart() -> None:
    with PgServer() as pg:
        pool = await asyncpg.create_pool(pg.url(), min_size=0, max_size=1)
        waker = Waker(pool)
        waker.start()
        try:
            conn, heard = await listen(pg.url())
            waker.poke()
            await asyncio.wait_for(heard.get(), timeout=5)
            await sent(waker, 1)

            await asyncio.to_thread(pg.stop, "immediate")
            waker.poke()  # fails: logged, and left to the dispatchers' polling
            await asyncio.sleep(0.5)
            assert waker.sent == 1

            await asyncio.to_thread(pg.start)
            conn, heard = await listen(pg.url())
            waker.poke()
            await asyncio.wait_for(heard.get(), timeout=5)
            await sent(waker, 2)
            await conn.close()
        finally:
            await waker.stop()
            await pool.close()
