"""Publishing inside the producer's own transaction: the Python API (SQLAlchemy and raw
asyncpg connections) and the relay.publish() SQL function, against a live relay."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from relay.db.engine import connect_raw, create_engine
from relay.errors import NotFound, ValidationFailed
from relay.publish import Event, publish
from tests.support.relay import make_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOPICS = ["order.created", "order.paid"]


def settings(database_url: str, receiver_url: str) -> Any:
    return make_settings(
        database_url,
        topics=TOPICS,
        tenants=[
            {
                "id": "acme",
                "destinations": [
                    {"id": "orders", "url": receiver_url, "topics": ["order.*"], "secret": SECRET}
                ],
            }
        ],
    )


@pytest.fixture
async def relay(start_relay: Any, database_url: str, receiver: Any, db: Any) -> Any:
    server = await start_relay(settings(database_url, receiver.url()))
    # The producer's own table, next to relay's schema in the same database.
    await db.execute("CREATE TABLE public.orders (id text PRIMARY KEY, total int NOT NULL)")
    return server


async def count(db: Any, sql: str, *args: Any) -> int:
    return int(await db.fetchval(sql, *args))


async def assert_nothing_arrives(receiver: Any, seconds: float = 1.0) -> None:
    # Longer than several poll intervals (0.2 s): a leaked event would have been sent.
    await asyncio.sleep(seconds)
    assert receiver.requests == []


def order_event(event_id: str, topic: str = "order.created") -> Event:
    return Event(tenant_id="acme", topic=topic, data=b'{"order": "o-1"}', id=event_id)


# --- SQLAlchemy AsyncConnection ------------------------------------------------------


async def test_sqlalchemy_commit_is_delivered_and_rollback_leaves_nothing(
    relay: Any, database_url: str, receiver: Any, db: Any
) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO public.orders VALUES ('o-1', 10)"))
            published = await publish(conn, order_event("evt-commit"), topics=TOPICS)
            assert published.as_json() == {
                "id": "evt-commit",
                "duplicate": False,
                "destination_ids": ["orders"],
            }
            # Not committed yet: invisible to everyone else, dispatcher included.
            assert await count(db, "SELECT count(*) FROM relay.events") == 0

        [request] = await receiver.wait_for(1)
        assert request.headers["webhook-id"] == "evt-commit"
        assert request.body == b'{"order": "o-1"}'

        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO public.orders VALUES ('o-2', 20)"))
                await publish(conn, order_event("evt-rollback"), topics=TOPICS)
                raise RuntimeError("the producer's business logic fails")
    finally:
        await engine.dispose()

    assert await count(db, "SELECT count(*) FROM relay.events WHERE id = 'evt-rollback'") == 0
    assert await count(db, "SELECT count(*) FROM relay.deliveries") == 1
    assert await count(db, "SELECT count(*) FROM public.orders") == 1
    receiver.requests.clear()
    await assert_nothing_arrives(receiver)


async def test_sqlalchemy_errors_leave_the_transaction_usable(
    relay: Any, database_url: str, receiver: Any, db: Any
) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO public.orders VALUES ('o-1', 10)"))
            with pytest.raises(NotFound, match="tenant 'nobody' not found"):
                await publish(conn, Event(tenant_id="nobody", topic="order.created", data=b"{}"))
            with pytest.raises(ValidationFailed, match="not one of the configured topics"):
                await publish(conn, order_event("evt-x", topic="user.created"), topics=TOPICS)
            with pytest.raises(NotFound, match="destination 'nope' not found"):
                await publish(
                    conn,
                    Event(tenant_id="acme", topic="order.paid", data=b"{}", destination_id="nope"),
                )
            # data is the caller's serialization, embedded in the write as it is: it must
            # be one JSON value. Text that would close the event's JSON object and open
            # another must not become a second event.
            for data in (b"{not json", b'{}, "topic": "order.paid"}, {"tenant_id": "acme"'):
                with pytest.raises(ValidationFailed, match="data must be one serialized JSON"):
                    await publish(
                        conn, Event(tenant_id="acme", topic="order.paid", data=data, id="evt-bad")
                    )
            with pytest.raises(ValidationFailed, match="body must be one serialized JSON"):
                await publish(
                    conn,
                    Event(tenant_id="acme", topic="order.paid", data=b"{}", body=b"[1,", id="b"),
                )
            # relay's own errors are raised before any write: the transaction goes on.
            await conn.execute(text("INSERT INTO public.orders VALUES ('o-2', 20)"))
            await publish(conn, order_event("evt-after-errors"))
    finally:
        await engine.dispose()
    assert await count(db, "SELECT count(*) FROM public.orders") == 2
    [request] = await receiver.wait_for(1)
    assert request.headers["webhook-id"] == "evt-after-errors"
    assert await count(db, "SELECT count(*) FROM relay.events") == 1


async def test_same_id_twice_is_a_duplicate(relay: Any, database_url: str, db: Any) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            first = await publish(conn, order_event("evt-twice"))
        async with engine.begin() as conn:
            again = await publish(conn, order_event("evt-twice", topic="order.paid"))
    finally:
        await engine.dispose()
    assert first.duplicate is False
    assert again.as_json() == {"id": "evt-twice", "duplicate": True, "destination_ids": ["orders"]}
    assert await count(db, "SELECT count(*) FROM relay.events") == 1
    assert await count(db, "SELECT count(*) FROM relay.deliveries") == 1


# --- raw asyncpg connection -----------------------------------------------------------


async def test_asyncpg_commit_rollback_and_duplicate(
    relay: Any, database_url: str, receiver: Any, db: Any
) -> None:
    conn = await connect_raw(database_url)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO public.orders VALUES ('o-1', 10)")
            published = await publish(conn, order_event("evt-pg"))
        assert published.destination_ids == ["orders"]
        [request] = await receiver.wait_for(1)
        assert request.headers["webhook-id"] == "evt-pg"

        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await publish(conn, order_event("evt-pg-rollback"))
                raise RuntimeError("abort")

        async with conn.transaction():
            again = await publish(conn, order_event("evt-pg"))
        assert again.duplicate is True and again.destination_ids == ["orders"]

        # A value PostgreSQL itself refuses aborts the transaction, as any failed
        # statement does; a savepoint keeps the rest of the transaction.
        async with conn.transaction():
            with pytest.raises(asyncpg.PostgresError):
                async with conn.transaction():  # a savepoint
                    await publish(
                        conn,
                        Event(
                            tenant_id="acme",
                            topic="order.paid",
                            data=b"{}",
                            id="evt-nul",
                            metadata={"k": "\u0000"},
                        ),
                    )
            await conn.execute("INSERT INTO public.orders VALUES ('o-2', 20)")
    finally:
        await conn.close()
    assert await count(db, "SELECT count(*) FROM relay.events") == 1
    assert await count(db, "SELECT count(*) FROM public.orders") == 2
    receiver.requests.clear()
    await assert_nothing_arrives(receiver)


# --- the relay.publish() SQL function ------------------------------------------------


async def test_sql_function_commit_rollback_duplicate(
    relay: Any, database_url: str, receiver: Any, db: Any
) -> None:
    conn = await connect_raw(database_url)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO public.orders VALUES ('o-1', 10)")
            row = await conn.fetchrow(
                "SELECT * FROM relay.publish('acme', 'order.created', '{\"order\": \"o-1\"}',"
                " id => 'evt-sql', metadata => '{\"source\": \"sql\"}')"
            )
        assert dict(row) == {"id": "evt-sql", "duplicate": False}
        [request] = await receiver.wait_for(1)
        assert request.headers["webhook-id"] == "evt-sql"
        assert request.body == b'{"order": "o-1"}'
        routed = await db.fetchval("SELECT routed_at FROM relay.events WHERE id = 'evt-sql'")
        assert routed is not None

        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.fetchrow("SELECT relay.publish('acme', 'order.created', '{}', 'evt-rb')")
                raise RuntimeError("abort")

        again = await conn.fetchrow(
            "SELECT * FROM relay.publish('acme', 'order.paid', '{}', id => 'evt-sql')"
        )
        assert dict(again) == {"id": "evt-sql", "duplicate": True}

        generated = await conn.fetchrow("SELECT * FROM relay.publish('acme', 'order.paid', '{}')")
        assert generated["id"].startswith("evt_") and generated["duplicate"] is False
        await receiver.wait_for(2)
    finally:
        await conn.close()
    assert await count(db, "SELECT count(*) FROM relay.events WHERE id = 'evt-rb'") == 0
    assert await count(db, "SELECT count(*) FROM relay.deliveries") == 2


@pytest.mark.parametrize(
    ("call", "sqlstate", "message"),
    [
        ("relay.publish('nobody', 't', '{}')", "P0002", "tenant 'nobody' not found"),
        ("relay.publish('acme', '', '{}')", "22023", "topic is required"),
        ("relay.publish('acme', 't', '[1]')", "22023", "data must be a JSON object"),
        ("relay.publish('acme', 't', '{}', id => '')", "22023", "id must be 1 to 255"),
        ("relay.publish('acme', 't', '{}', metadata => '{\"n\": 1}')", "22023", "metadata"),
        (
            "relay.publish('acme', 't', '{}', destination_id => 'nope')",
            "P0002",
            "destination 'nope' not found",
        ),
    ],
)
async def test_sql_function_errors_are_clear(
    relay: Any, database_url: str, db: Any, call: str, sqlstate: str, message: str
) -> None:
    conn = await connect_raw(database_url)
    try:
        async with conn.transaction():
            # PostgreSQL aborts the transaction on any error; a savepoint keeps the rest.
            with pytest.raises(asyncpg.PostgresError) as raised:
                async with conn.transaction():
                    await conn.fetchrow(f"SELECT * FROM {call}")
            assert raised.value.sqlstate == sqlstate
            assert message in str(raised.value)
            await conn.execute("INSERT INTO public.orders VALUES ('o-1', 10)")
    finally:
        await conn.close()
    assert await count(db, "SELECT count(*) FROM public.orders") == 1
    assert await count(db, "SELECT count(*) FROM relay.events") == 0
