"""The dispatcher keeps its promise when its own parts fail: `relay dispatch` as the CLI
starts it (uvloop), retries falling due by the hundred, a recorder the database refuses,
loops that crash, and a commit whose answer is lost."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.integration.test_dispatcher_processes import (
    by_status,
    dispatchers,  # noqa: F401  (fixture)
    publish_many,
    wait_until,
    write_config,
)
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.slow


async def test_retries_falling_due_under_uvloop_are_all_recorded(
    dispatchers: Any,  # noqa: F811
    receiver: Receiver,
    db: Any,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Defect 1 of issue 18: under uvloop, `loop.call_at` returns a plain Handle (no
    `when()`) for a time under a millisecond away, and the recorder died on it once
    retries fell due: nothing was recorded again, failed deliveries were never retried.
    One destination fails every request, one answers 200; retries are short and jittered
    so that many fall due together."""
    receiver.reply = lambda n, path: Reply(status=500) if path == "/failing" else Reply()
    config = write_config(tmp_path / "relay.toml", receiver, ["failing", "healthy"])
    config.write_text(
        config.read_text() + "\n[delivery.retry]\nschedule_seconds = [0.05, 0.05, 0.05]\n"
        "jitter = 0.9\n"
    )
    process = await dispatchers("dispatch", config)
    events = 400
    await publish_many(database_url, events)

    async def finished() -> bool:
        counts = await by_status(db)()
        return counts.get("delivered", 0) == events and counts.get("failed", 0) == events

    try:
        await wait_until(finished, timeout=90)
    finally:
        assert "crashed" not in process.log, process.log
    # Every try became an attempt row: 1 + 3 retries for each failing delivery.
    rows = await db.fetch(
        "SELECT destination_id, status, count(*) FROM relay.attempts GROUP BY 1, 2 ORDER BY 1"
    )
    assert [tuple(r) for r in rows] == [
        ("failing", "failed", events * 4),
        ("healthy", "success", events),
    ]
    sent = Counter(r.path for r in receiver.requests)
    assert sent == {"/failing": events * 4, "/healthy": events}
    process.proc.send_signal(signal.SIGTERM)
    assert await process.exited(timeout=20) == 0, process.log


async def test_dispatch_reports_unhealthy_while_its_recorder_cannot_write(
    dispatchers: Any,  # noqa: F811
    receiver: Receiver,
    db: Any,
    database_url: str,
    tmp_path: Path,
) -> None:
    """A recorder made to fail (the database refuses every attempt row) turns
    `relay dispatch`'s /healthz to 503 within half a lease, and back to 200 once it
    writes again; nothing is lost meanwhile."""
    await db.execute(
        """
        CREATE FUNCTION public.refuse_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'attempts are refused by the test'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON relay.attempts
            FOR EACH ROW EXECUTE FUNCTION public.refuse_attempts();
        """
    )
    config = write_config(tmp_path / "relay.toml", receiver, ["orders"], lease_seconds=4)
    process = await dispatchers("dispatch", config)
    async with aiohttp.ClientSession() as http:

        async def health() -> tuple[int, dict[str, Any]]:
            async with http.get(process.health_url) as resp:
                return resp.status, await resp.json()

        status, body = await health()
        assert status == 200, body
        assert body["workers"]["dispatcher-record"] == {"status": "healthy"}

        ids = await publish_many(database_url, 20)
        await receiver.wait_for(20, timeout=15)
        loop = asyncio.get_running_loop()
        failing_since = loop.time()

        async def unhealthy() -> bool:
            return (await health())[0] == 503

        # Half a lease (2 s) without a written outcome is a stall.
        await wait_until(unhealthy, timeout=10)
        assert loop.time() - failing_since < 8
        status, body = await health()
        assert body["workers"]["dispatcher-record"] == {"status": "failed"}
        async with http.get(process.health_url.replace("/healthz", "/metrics")) as resp:
            metrics = await resp.text()
        assert 'relay_loop_healthy{loop="dispatcher.record"} 0.0' in metrics

        # Dropping a trigger on the partitioned table locks each partition in turn, and
        # may deadlock with the recorder's retry, which PostgreSQL then cancels: again.
        for _ in range(5):
            try:
                await db.execute("DROP TRIGGER refuse ON relay.attempts")
                break
            except asyncpg.DeadlockDetectedError:
                await asyncio.sleep(0.1)

        async def all_delivered() -> bool:
            return (await by_status(db)()).get("delivered", 0) == 20

        await wait_until(all_delivered, timeout=30)

        async def healthy() -> bool:
            return (await health())[0] == 200

        await wait_until(healthy, timeout=10)
    # Each event was delivered; the refused outcomes were sent again after their lease.
    assert {r.headers["webhook-id"] for r in receiver.requests} == set(ids)
    assert "attempts are refused by the test" in process.log
    process.proc.send_signal(signal.SIGTERM)
    assert await process.exited(timeout=20) == 0, process.log


async def test_a_batch_whose_commit_answer_was_lost_is_not_recorded_twice(
    receiver: Receiver, db: Any, database_url: str
) -> None:
    """Defect 7: the recorder retries a batch when its commit fails, but a commit can
    succeed with its answer lost (a network drop, PostgreSQL stopping at that moment).
    The retry then added a second attempt row per outcome (679 success rows for 677
    deliveries after an immediate stop) and counted each failure twice. Here a proxy
    between the dispatcher and PostgreSQL drops the connection where the server's answer
    to the recorder's COMMIT would arrive."""
    from relay.db.engine import create_engine
    from relay.db.sync import sync_config
    from relay.dispatcher import Dispatcher
    from tests.support.pgproxy import PgProxy
    from tests.support.relay import make_settings

    receiver.reply = lambda n, path: Reply(status=500)
    settings = make_settings(
        database_url,
        tenants=[{"id": "acme", "destinations": [{"id": "orders", "url": receiver.url()}]}],
        delivery={"retry": {"schedule_seconds": []}},  # no retries: one attempt each
    )
    engine = create_engine(database_url, pool_size=2)
    proxy = await PgProxy(database_url).start()
    dispatcher = None
    try:
        async with engine.begin() as conn:
            await sync_config(conn, settings)
        # The claim loop, recorder and LISTEN connect through the proxy; the claim is a
        # statement of its own (no COMMIT), so the first COMMIT is the recorder's.
        proxy.lose_next_commit_answer()
        dispatcher = Dispatcher(engine, proxy.url, settings.delivery)
        await dispatcher.start()
        await publish_many(database_url, 20)

        async def all_failed() -> bool:
            return (await by_status(db)()).get("failed", 0) == 20

        await wait_until(all_failed, timeout=30)
        await asyncio.sleep(0.5)  # a second write of the batch would land by now
        assert proxy.commit_answers_lost == 1
        assert await db.fetchval("SELECT count(*) FROM relay.attempts") == 20
        # Each failure counted once in the destination's health.
        assert await db.fetchval("SELECT consecutive_failures FROM relay.destinations") == 20
    finally:
        if dispatcher is not None:
            await dispatcher.stop()
        await proxy.close()
        await engine.dispose()


@pytest.mark.parametrize(
    "owner, name",
    [
        ("dispatcher", "claim"),
        ("dispatcher", "record"),
        ("dispatcher", "lease"),
        ("router", "route"),
        ("publisher", "writer"),
    ],
)
async def test_a_loop_that_crashes_is_logged_restarted_and_reported(
    start_relay: Any,
    http: Any,
    receiver: Receiver,
    db: Any,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    owner: str,
    name: str,
) -> None:
    """Kill one loop (an unexpected exception where it reports progress): the crash is
    logged with its traceback at once, /healthz says so until the loop runs again, the
    loop is restarted, and delivery goes on."""
    from relay import supervise
    from relay.appkeys import METRICS
    from tests.support.relay import admin_headers, make_settings

    # A restart a second away: long enough for /healthz to be seen failing.
    monkeypatch.setattr(supervise, "FIRST_BACKOFF", 1.0)
    settings = make_settings(
        database_url,
        tenants=[{"id": "acme", "destinations": [{"id": "orders", "url": receiver.url()}]}],
        delivery={"lease_seconds": 1},
    )
    server = await start_relay(settings)
    supervisor = next(s for s in server.app[METRICS].supervisors if s.owner == owner)
    loops = [loop for key, loop in supervisor.loops.items() if key.startswith(name)]
    crashed = asyncio.Event()

    def crash_once(beat: Any) -> Any:
        def beat_or_crash() -> None:
            if not crashed.is_set():
                crashed.set()
                raise RuntimeError("injected by the test")
            beat()

        return beat_or_crash

    for loop in loops:
        loop.beat = crash_once(loop.beat)

    async def publish(event_id: str) -> None:
        body = {"tenant_id": "acme", "topic": "t", "id": event_id, "data": {}}
        async with http.post(
            server.make_url("/api/v1/publish"), json=body, headers=admin_headers()
        ) as resp:
            assert resp.status == 202

    await publish("before")
    await asyncio.wait_for(crashed.wait(), timeout=10)
    async with http.get(server.make_url("/healthz")) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"]
        workers = (await resp.json())["workers"]
        assert "failed" in {w["status"] for k, w in workers.items() if k.startswith(owner)}
    crash_logs = [r for r in caplog.records if "loop crashed; restarting it" in r.getMessage()]
    assert len(crash_logs) == 1 and crash_logs[0].exc_info is not None

    async def restarted() -> bool:
        return sum(loop.restarts for loop in loops) == 1 and all(loop.running for loop in loops)

    await wait_until(restarted, timeout=10)
    await publish("after")

    async def delivered() -> bool:
        return (await by_status(db)()).get("delivered", 0) == 2

    await wait_until(delivered, timeout=15)

    async def healthy() -> bool:
        async with http.get(server.make_url("/healthz")) as resp:
            return resp.status == 200

    await wait_until(healthy, timeout=10)
    async with http.get(server.make_url("/metrics")) as resp:
        metrics = await resp.text()
    label = f"{owner}.{name}" if name != "writer" else None
    restarts = [
        line
        for line in metrics.splitlines()
        if line.startswith("relay_loop_restarts_total") and line.endswith(" 1.0")
    ]
    assert len(restarts) == 1, restarts
    if label is not None:
        assert f'loop="{label}"' in restarts[0]


async def test_a_row_that_cannot_be_read_is_quarantined_alone(
    pg_server_url: str, receiver: Receiver
) -> None:
    """A delivery whose event cannot be read (here: a byte that is not UTF-8, stored in a
    SQL_ASCII database by another writer) failed every claim it was part of, so nothing
    behind it was delivered. The dispatcher looks at the rows one at a time, quarantines
    that one (failed, with an `unprocessable` attempt row) and delivers the others."""
    import uuid

    import asyncpg
    from sqlalchemy.engine import make_url

    from relay.db.engine import asyncpg_url, create_engine
    from relay.db.migrate import upgrade
    from relay.db.sync import sync_config
    from relay.dispatcher import Dispatcher
    from tests.support.relay import make_settings

    name = f"relay_ascii_{uuid.uuid4().hex[:12]}"
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    admin = await asyncpg.connect(asyncpg_url(pg_server_url))
    await admin.execute(
        f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'SQL_ASCII' "
        "LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    engine = create_engine(url, pool_size=2)
    dispatcher = None
    try:
        await upgrade(engine)
        settings = make_settings(
            url, tenants=[{"id": "acme", "destinations": [{"id": "orders", "url": receiver.url()}]}]
        )
        async with engine.begin() as conn:
            await sync_config(conn, settings)
        db = await asyncpg.connect(asyncpg_url(url))
        try:
            # {"a":"\xff"}: first in line, so in the first claim.
            await db.execute(
                """
                WITH e AS (
                    INSERT INTO relay.events (tenant_id, id, topic, data)
                    VALUES ('acme', 'poison', 't',
                            convert_from('\\x7b2261223a22ff227d'::bytea, 'SQL_ASCII')::json)
                    RETURNING seq)
                INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id,
                                              next_attempt_at)
                SELECT seq, 'acme', 'orders', now() - interval '1 minute' FROM e
                """
            )
            ids = await publish_many(url, 5)
            dispatcher = Dispatcher(engine, url, settings.delivery)
            await dispatcher.start()

            async def settled() -> bool:
                return await by_status(db)() == {"delivered": 5, "failed": 1}

            await wait_until(settled, timeout=30)
            story = await db.fetch(
                "SELECT a.number, a.status, a.error_code, a.error_detail FROM relay.attempts a "
                "JOIN relay.events e ON e.seq = a.event_seq WHERE e.id = 'poison'"
            )
        finally:
            await db.close()
        assert [tuple(r)[:3] for r in story] == [(1, "failed", "unprocessable")]
        assert "UTF8" in story[0]["error_detail"]
        assert sorted(r.headers["webhook-id"] for r in receiver.requests) == ids
        assert dispatcher.quarantined == 1
    finally:
        if dispatcher is not None:
            await dispatcher.stop()
        await engine.dispose()
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_a_blocked_address_fails_at_once_instead_of_on_the_retry_schedule(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    """The SSRF guard's refusal does not change on retry: one attempt, then failed
    (it used to be retried on the whole schedule). A name is judged at delivery, by what
    it resolves to, so the destination itself was accepted."""
    from tests.support.relay import admin_headers, make_settings

    url = f"http://localhost:{receiver.port}/hook"
    settings = make_settings(
        database_url,
        tenants=[{"id": "acme", "destinations": [{"id": "orders", "url": url}]}],
        delivery={"allow_private_networks": []},
    )
    server = await start_relay(settings)
    body = {"tenant_id": "acme", "topic": "t", "id": "e1", "data": {}}
    async with http.post(
        server.make_url("/api/v1/publish"), json=body, headers=admin_headers()
    ) as resp:
        assert resp.status == 202

    async def failed() -> bool:
        return (await by_status(db)()).get("failed", 0) == 1

    await wait_until(failed, timeout=10)
    await asyncio.sleep(1.0)  # the schedule's retries (0.2 s, 0.4 s) would be in by now
    rows = await db.fetch("SELECT number, error_code FROM relay.attempts")
    assert [tuple(r) for r in rows] == [(1, "blocked_address")]
    assert receiver.requests == []


async def test_rows_of_a_claim_whose_answer_was_lost_are_taken_back_at_once(
    receiver: Receiver, db: Any, database_url: str
) -> None:
    """A claim commits on its own; when its connection breaks before the answer arrives,
    the rows carry this dispatcher's token but it holds none of them. They used to wait
    out the whole lease (the chaos suite saw an event delivered 66 s after a 3 s outage);
    the dispatcher now takes them back as soon as it reconnects."""
    from relay.db.engine import create_engine
    from relay.db.sync import sync_config
    from relay.dispatcher import Dispatcher
    from tests.support.pgproxy import PgProxy
    from tests.support.relay import make_settings

    settings = make_settings(
        database_url,
        tenants=[{"id": "acme", "destinations": [{"id": "orders", "url": receiver.url()}]}],
        delivery={"lease_seconds": 60},
    )
    engine = create_engine(database_url, pool_size=2)
    proxy = await PgProxy(database_url).start()
    dispatcher = None
    try:
        async with engine.begin() as conn:
            await sync_config(conn, settings)
        dispatcher = Dispatcher(engine, proxy.url, settings.delivery)
        await dispatcher.start()
        proxy.lose_next_claim_answer()
        ids = await publish_many(database_url, 5)
        started = asyncio.get_running_loop().time()

        async def delivered() -> bool:
            return (await by_status(db)()).get("delivered", 0) == 5

        await wait_until(delivered, timeout=15)
        assert asyncio.get_running_loop().time() - started < 10  # not a 60 s lease
        assert proxy.answers_lost == 1
        assert dispatcher.stats.taken_back == 5
        assert sorted(r.headers["webhook-id"] for r in receiver.requests) == ids
        # Sent once each, and no try was lost: no lease_expired rows.
        rows = await db.fetch("SELECT number, status FROM relay.attempts")
        assert sorted(tuple(r) for r in rows) == [(1, "success")] * 5
    finally:
        if dispatcher is not None:
            await dispatcher.stop()
        await proxy.close()
        await engine.dispose()
