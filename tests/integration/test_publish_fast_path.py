"""What the HTTP publish fast path (one statement per group, on an autocommit connection,
rows sent as JSON) must still do: read a time without an offset as UTC whatever the
session's time zone, and wake the dispatchers on commit only when it queued deliveries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.relay import make_settings
from tests.support.relay import post_publish as post

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
async def server(start_relay: Any, database_url: str, db: Any, receiver: Any) -> Any:
    # A session time zone far from UTC: a naive time read in it would be off by hours.
    database = await db.fetchval("SELECT current_database()")
    await db.execute(f"ALTER DATABASE {database} SET timezone = 'America/New_York'")
    tenants = [
        {
            "id": "acme",
            "destinations": [{"id": "orders", "url": receiver.url(), "secret": SECRET}],
        },
        # No destinations: its events queue nothing.
        {"id": "quiet"},
    ]
    return await start_relay(make_settings(database_url, tenants=tenants), dispatcher=False)


async def test_a_time_without_offset_is_utc(server: Any, http: Any, db: Any) -> None:
    bodies = [
        {"id": "naive", "tenant_id": "acme", "time": "2026-01-02T03:04:05.123456", "data": {}},
        {"id": "aware", "tenant_id": "acme", "time": "2026-01-02T03:04:05+02:00", "data": {}},
    ]
    answers = await asyncio.gather(*(post(http, server, b) for b in bodies))
    assert [status for status, _ in answers] == [202, 202], answers
    rows = {r["id"]: r["time"] for r in await db.fetch("SELECT id, time FROM relay.events")}
    assert rows == {
        "naive": datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        "aware": datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC),
    }


async def test_the_wake_up_comes_only_with_queued_deliveries(
    server: Any, http: Any, db: Any
) -> None:
    woken: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener("relay_outbox", lambda *args: woken.put_nowait(args[2]))

    status, body = await post(http, server, {"tenant_id": "quiet", "data": {"n": 1}})
    assert status == 202 and body["destination_ids"] == [], body
    # Duplicate ids queue nothing either.
    status, _ = await post(http, server, {"id": "dup", "tenant_id": "acme", "data": {}})
    assert status == 202
    await asyncio.wait_for(woken.get(), 5)
    status, body = await post(http, server, {"id": "dup", "tenant_id": "acme", "data": {}})
    assert status == 202 and body["duplicate"] is True
    await asyncio.sleep(0.3)
    assert woken.empty()

    # The 202 comes after the commit, and the commit delivered the wake-up.
    status, body = await post(http, server, {"tenant_id": "acme", "data": {"n": 2}})
    assert status == 202 and body["destination_ids"] == ["orders"]
    await asyncio.wait_for(woken.get(), 5)
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries") == 2
