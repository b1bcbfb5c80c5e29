"""Group commit on the HTTP publish path: concurrent publishes share transactions, a 202
is sent only after its event's commit, one bad event does not fail its neighbours, and a
repeated id gets the first publish's answer.

Its route cache: publishes skip the routing read, yet always route by the tenants and
destinations committed before them, whoever changed those (another relay process, the
config sync, an operator in psql)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from relay.appkeys import PUBLISHER
from relay.errors import BadRequest
from relay.publish import Event, Published, publish_many
from tests.support.relay import make_settings
from tests.support.relay import post_publish as post

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CONCURRENT = 60

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
    # No dispatcher: these tests are about what publish commits, not about delivery.
    return await start_relay(make_settings(database_url, tenants=tenants), dispatcher=False)


def order(event_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "tenant_id": "acme", "topic": "order.created", "data": {}} | extra


async def publish_all(http: Any, server: Any, bodies: list[Any]) -> list[tuple[int, Any]]:
    return list(await asyncio.gather(*(post(http, server, b) for b in bodies)))


async def test_concurrent_publishes_share_transactions(server: Any, http: Any, db: Any) -> None:
    bodies = [order(f"evt-{n:03d}") for n in range(CONCURRENT)]
    # The same id twice in one burst: one event, and the repeat is a duplicate.
    bodies.append(order("evt-000"))
    answers = await publish_all(http, server, bodies)
    assert all(status == 202 for status, _ in answers), answers
    assert all(body["destination_ids"] == ["orders"] for _, body in answers)
    assert sorted(body["duplicate"] for _, body in answers) == [False] * CONCURRENT + [True]

    assert await db.fetchval("SELECT count(*) FROM relay.events") == CONCURRENT
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries") == CONCURRENT
    # Rows written by one transaction share its xmin: fewer transactions than events.
    transactions = await db.fetchval("SELECT count(DISTINCT xmin::text) FROM relay.events")
    assert transactions < CONCURRENT / 2
    assert server.app[PUBLISHER].transactions < CONCURRENT / 2


DEFER_FAILURE = """
    CREATE FUNCTION public.refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.id LIKE 'fail-%' THEN
            RAISE EXCEPTION 'refused at commit: %', NEW.id;
        END IF;
        RETURN NULL;
    END $$;
    CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON relay.events
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.refuse_at_commit();
"""


async def test_a_publish_whose_commit_fails_gets_no_202(server: Any, http: Any, db: Any) -> None:
    # The failure comes at COMMIT itself, after every statement succeeded.
    await db.execute(DEFER_FAILURE)
    status, body = await post(http, server, order("fail-alone"))
    assert status == 500 and body == {"status": 500, "message": "internal server error"}

    bodies = [order(f"evt-{n:03d}") for n in range(CONCURRENT)]
    bodies[CONCURRENT // 2] = order("fail-in-a-group")
    answers = await publish_all(http, server, bodies)
    for sent, (status, body) in zip(bodies, answers, strict=True):
        if sent["id"].startswith("fail-"):
            assert status == 500, body
        else:
            assert status == 202, body
    ids = {r["id"] for r in await db.fetch("SELECT id FROM relay.events")}
    assert ids == {b["id"] for b in bodies if not b["id"].startswith("fail-")}
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries") == CONCURRENT - 1


async def test_one_bad_event_does_not_fail_its_neighbours(server: Any, http: Any, db: Any) -> None:
    # A value PostgreSQL refuses (jsonb cannot hold a NUL character) that no request check
    # catches: the HTTP models refuse NUL by name now, so the bad events are handed to the
    # same group-commit writer directly, in the same burst as the good HTTP publishes.
    bad = {n for n in range(0, CONCURRENT, 15)}

    async def bad_publish(n: int) -> tuple[int, Any]:
        event = Event(
            tenant_id="acme",
            topic="order.created",
            data=b"{}",
            id=f"evt-{n:03d}",
            metadata={"note": "nul \x00 here"},
        )
        try:
            await server.app[PUBLISHER].publish([event])
        except BadRequest as exc:
            return 400, {"message": exc.message}
        return 202, {}

    answers = await asyncio.gather(
        *(
            bad_publish(n) if n in bad else post(http, server, order(f"evt-{n:03d}"))
            for n in range(CONCURRENT)
        )
    )
    for n, (status, body) in enumerate(answers):
        if n in bad:
            assert status == 400, body
            assert "PostgreSQL cannot take" in body["message"]
        else:
            assert status == 202, body
    assert await db.fetchval("SELECT count(*) FROM relay.events") == CONCURRENT - len(bad)
    # At least one bad event shared a group with good ones, which were then written alone.
    assert server.app[PUBLISHER].split_groups >= 1


async def test_a_repeat_is_answered_as_the_first_publish_was(
    server: Any, http: Any, db: Any
) -> None:
    # Two more destinations, created one after the other in an order that is not
    # alphabetical: answers list destinations in creation order.
    for name in ("zeta", "alpha"):
        await db.execute(ADD_DESTINATION, "acme", name, SECRET)
    status, first = await post(http, server, order("evt-order"))
    assert (status, first["destination_ids"]) == (202, ["orders", "zeta", "alpha"])
    # Again later (answered from the database), and twice in one burst (as a rule in one
    # group, where the repeat is answered from the first; else from the database).
    answers = [await post(http, server, order("evt-order"))]
    answers += await publish_all(http, server, [order("evt-burst"), order("evt-burst")])
    assert [status for status, _ in answers] == [202, 202, 202]
    assert answers[0][1] == first | {"duplicate": True}
    burst = sorted((body for _, body in answers[1:]), key=lambda b: b["duplicate"])
    assert [b["destination_ids"] for b in burst] == [["orders", "zeta", "alpha"]] * 2


# --- the route cache -------------------------------------------------------------------


async def publish_to(http: Any, server: Any, tenant_id: str = "acme") -> tuple[int, Any]:
    return await post(http, server, {"tenant_id": tenant_id, "topic": "order.created", "data": {}})


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
    status, body = await publish_to(http, server)
    assert (status, body["destination_ids"]) == (202, ["orders"])
    reads = cache.reads
    status, body = await publish_to(http, server)
    assert (status, body["destination_ids"]) == (202, ["orders"])
    assert cache.reads == reads, "the second publish should route from the cache"

    # Another process adds a destination: the very next publish goes there too.
    await db.execute(ADD_DESTINATION, "acme", "audit", SECRET)
    status, body = await publish_to(http, server)
    assert (status, body["destination_ids"]) == (202, ["orders", "audit"])
    event = await db.fetchval(
        "SELECT count(*) FROM relay.deliveries d JOIN relay.events e ON e.seq = d.event_seq"
        " WHERE e.id = $1",
        body["id"],
    )
    assert event == 2

    # ...or deletes one: it gets nothing more.
    await db.execute("UPDATE relay.destinations SET deleted_at = now() WHERE id = 'orders'")
    status, body = await publish_to(http, server)
    assert (status, body["destination_ids"]) == (202, ["audit"])


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
async def test_an_unknown_tenant_is_not_remembered_past_its_creation(
    start_relay: Any, database_url: str, http: Any, db: Any, strict: bool
) -> None:
    """Unknown: a 404 (strict) or a 202 routed nowhere and not stored (the default, as
    Outpost). Either answer stands only while the routes it was read under do."""
    settings = make_settings(database_url, api={"strict_publish": strict})
    server = await start_relay(settings, dispatcher=False)
    cache = server.app[PUBLISHER].routes
    unknown = 404 if strict else 202
    for _ in range(2):
        status, _ = await publish_to(http, server, "newco")
        assert status == unknown
    if not strict:
        # The repeat was answered from the cache, after a look at the route version.
        assert cache.reads == 1
    await db.execute("INSERT INTO relay.tenants (id) VALUES ('newco')")
    await db.execute(ADD_DESTINATION, "newco", "hooks", SECRET)
    status, body = await publish_to(http, server, "newco")
    assert (status, body["destination_ids"]) == (202, ["hooks"])
    # And a tenant deleted elsewhere is unknown at once, though its routes were cached.
    await db.execute("UPDATE relay.tenants SET deleted_at = now() WHERE id = 'newco'")
    status, body = await publish_to(http, server, "newco")
    assert status == unknown
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 1


async def test_overlapping_ids_in_any_order_cannot_deadlock(
    server: Any, database_url: str, db: Any
) -> None:
    """Two transactions publishing the same ids wait on each other in one order only.

    A holds X and then asks for Y; B asks for Y and X, in that order. Written as given, B
    would hold Y while it waits for X, and A's Y would wait for B: a deadlock, one of
    them aborted. relay writes a group's events in key order, so B waits for X first and
    holds nothing A needs."""
    a, b = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        a_tx, b_tx = a.transaction(), b.transaction()
        await a_tx.start()
        await b_tx.start()
        [first] = await publish_many(a, [event("evt-x")])
        assert isinstance(first, Published) and not first.duplicate
        racing = asyncio.create_task(publish_many(b, [event("evt-y"), event("evt-x")]))
        await waiting_for_a_lock(db, b.get_server_pid())
        [second] = await asyncio.wait_for(publish_many(a, [event("evt-y")]), timeout=5)
        assert isinstance(second, Published) and not second.duplicate
        await a_tx.commit()
        answers = await asyncio.wait_for(racing, timeout=5)
        await b_tx.commit()
    finally:
        await a.close()
        await b.close()
    assert [(p.id, p.duplicate) for p in answers if isinstance(p, Published)] == [
        ("evt-y", True),
        ("evt-x", True),
    ]
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 2


def event(event_id: str) -> Event:
    return Event(tenant_id="acme", topic="order.created", data=b"{}", id=event_id)


async def waiting_for_a_lock(db: Any, pid: int) -> None:
    for _ in range(200):
        if await db.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("B never waited for A's row")
