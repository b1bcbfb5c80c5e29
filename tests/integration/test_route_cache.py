"""The publish path's route cache: publishes skip the routing read, yet always route by
the tenants and destinations committed before them, whoever changed those (another relay
process, the config sync, an operator in psql)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.appkeys import PUBLISHER
from tests.support.relay import admin_headers, make_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

ADD_DESTINATION = """
    INSERT INTO relay.destinations (tenant_id, id, topics, url, secret)
    VALUES ($1, $2, '{*}', 'https://example.com/hook', $3)
"""


@pytest.fixture
async def server(start_relay: Any, database_url: str, receiver: Any) -> Any:
    tenants = [
        {
            "id": "acme",
            "destinations": [{"id": "orders", "url": receiver.url(), "secret": SECRET}],
        }
    ]
    return await start_relay(make_settings(database_url, tenants=tenants), dispatcher=False)


async def publish(http: Any, server: Any, tenant_id: str = "acme") -> tuple[int, Any]:
    body = {"tenant_id": tenant_id, "topic": "order.created", "data": {}}
    async with http.post(
        server.make_url("/api/v1/publish"), json=body, headers=admin_headers()
    ) as resp:
        return resp.status, await resp.json()


async def version(db: Any) -> int:
    return int(await db.fetchval("SELECT version FROM relay.route_version"))


async def test_the_route_version_moves_at_commit_of_routing_changes(db: Any) -> None:
    start = await version(db)
    await db.execute("INSERT INTO relay.tenants (id) VALUES ('acme')")
    assert await version(db) == start + 1
    async with db.transaction():
        await db.execute(ADD_DESTINATION, "acme", "orders", SECRET)
        # Bumped at commit (a deferred trigger), not by the statement.
        assert await version(db) == start + 1
    assert await version(db) == start + 2
    # What routing does not read leaves it alone: the dispatcher's failure counter...
    await db.execute("UPDATE relay.destinations SET consecutive_failures = 3")
    await db.execute('UPDATE relay.tenants SET metadata = \'{"plan": "pro"}\'')
    assert await version(db) == start + 2
    # ...what it reads moves it.
    for change in (
        "UPDATE relay.destinations SET topics = '{order.created}'",
        'UPDATE relay.destinations SET filter = \'{"data": {"n": 1}}\'',
        "UPDATE relay.destinations SET disabled_at = now()",
        "UPDATE relay.destinations SET deleted_at = now()",
        "UPDATE relay.tenants SET deleted_at = now()",
    ):
        before = await version(db)
        await db.execute(change)
        assert await version(db) == before + 1, change


async def test_cached_routes_follow_changes_committed_elsewhere(
    server: Any, http: Any, db: Any
) -> None:
    cache = server.app[PUBLISHER].routes
    status, body = await publish(http, server)
    assert (status, body["destination_ids"]) == (202, ["orders"])
    reads = cache.reads
    status, body = await publish(http, server)
    assert (status, body["destination_ids"]) == (202, ["orders"])
    assert cache.reads == reads, "the second publish should route from the cache"

    # Another process adds a destination: the very next publish goes there too.
    await db.execute(ADD_DESTINATION, "acme", "audit", SECRET)
    status, body = await publish(http, server)
    assert (status, body["destination_ids"]) == (202, ["orders", "audit"])
    event = await db.fetchval(
        "SELECT count(*) FROM relay.deliveries d JOIN relay.events e ON e.seq = d.event_seq"
        " WHERE e.id = $1",
        body["id"],
    )
    assert event == 2

    # ...or deletes one: it gets nothing more.
    await db.execute("UPDATE relay.destinations SET deleted_at = now() WHERE id = 'orders'")
    status, body = await publish(http, server)
    assert (status, body["destination_ids"]) == (202, ["audit"])


async def test_an_unknown_tenant_is_not_remembered_past_its_creation(
    server: Any, http: Any, db: Any
) -> None:
    status, _ = await publish(http, server, "newco")
    assert status == 404
    await db.execute("INSERT INTO relay.tenants (id) VALUES ('newco')")
    await db.execute(ADD_DESTINATION, "newco", "hooks", SECRET)
    status, body = await publish(http, server, "newco")
    assert (status, body["destination_ids"]) == (202, ["hooks"])
    # And a tenant deleted elsewhere is refused at once, though its routes were cached.
    await db.execute("UPDATE relay.tenants SET deleted_at = now() WHERE id = 'newco'")
    status, _ = await publish(http, server, "newco")
    assert status == 404
