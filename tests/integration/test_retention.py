"""History retention by time slice (relay/retention.py, migration 0008), on real history.

The tests make history old by moving it three hours back, into the legacy slice (the one
migration 0008 made of the tables as they were), and judge ages by a clock three hours
ahead: relay's own writes keep landing in the slices of the database's real time.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from relay import retention
from relay.config import RetentionSettings
from relay.db.engine import create_engine
from tests.integration.test_ops import relay_cli
from tests.support.receiver import Reply
from tests.support.relay import admin_headers, make_settings

HOUR = timedelta(hours=1)
SHIFT = f"({3 * 60}::bigint << 32)"

# Three hours back: seq encodes its minute, the finished deliveries and attempts are in
# the slice of their updated_at and created_at. Everything lands in the legacy slice.
AGE_HISTORY = [
    f"UPDATE relay.events SET seq = seq - {SHIFT}, created_at = created_at - interval '3 h'",
    f"UPDATE relay.event_keys SET seq = seq - {SHIFT}",
    f"UPDATE relay.deliveries SET event_seq = event_seq - {SHIFT}, "
    "updated_at = CASE WHEN status IN ('delivered', 'failed') "
    "THEN updated_at - interval '3 h' ELSE updated_at END",
    f"UPDATE relay.attempts SET event_seq = event_seq - {SHIFT}, "
    "created_at = created_at - interval '3 h'",
]


async def age_history(db: Any) -> None:
    async with db.transaction():
        for statement in AGE_HISTORY:
            await db.execute(statement)


async def publish(http: Any, server: Any, event_id: str, topic: str) -> None:
    body = {"id": event_id, "tenant_id": "acme", "topic": topic, "data": {"id": event_id}}
    async with http.post(
        server.make_url("/api/v1/publish"), json=body, headers=admin_headers()
    ) as resp:
        assert resp.status == 202, await resp.text()


def tenants(receiver: Any) -> list[dict[str, Any]]:
    return [
        {
            "id": "acme",
            "destinations": [
                {"id": "good", "url": receiver.url("/good"), "topics": ["t"]},
                {"id": "bad", "url": receiver.url("/bad"), "topics": ["t"]},
                {"id": "later", "url": receiver.url("/later"), "topics": ["keep"]},
            ],
        }
    ]


async def finished_history(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any
) -> None:
    """Five events delivered to good and failed at bad, then one published with no
    dispatcher running: its delivery to later is still pending. No relay runs after."""
    receiver.reply = lambda n, path: Reply(status=500) if path == "/bad" else Reply()
    settings = make_settings(
        database_url, tenants=tenants(receiver), delivery={"retry": {"schedule_seconds": [0.1]}}
    )
    server = await start_relay(settings)
    for n in range(5):
        await publish(http, server, f"evt-{n}", "t")
    async with asyncio.timeout(15):
        while (
            await db.fetchval(
                "SELECT count(*) FROM relay.deliveries WHERE status IN ('delivered', 'failed')"
            )
            < 10
        ):
            await asyncio.sleep(0.05)
    await server.close()
    api_only = await start_relay(settings, dispatcher=False)
    await publish(http, api_only, "evt-keep", "keep")
    await api_only.close()


async def maintain(database_url: str, *, ahead: timedelta, max_age: timedelta) -> Any:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            now = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
        return await retention.maintain(
            engine, RetentionSettings(batch_size=2), max_age=max_age, now=now + ahead
        )
    finally:
        await engine.dispose()


async def test_old_slices_are_dropped_and_what_is_still_owed_is_kept_and_delivered(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any
) -> None:
    await finished_history(start_relay, http, receiver, database_url, db)
    await age_history(db)
    # Dead tuples of the aging itself are not the point: count the partitions instead.
    before = await db.fetchval(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'relay'::regnamespace "
        "AND relkind = 'r' AND relname LIKE '%\\_legacy'"
    )
    assert before == 3

    done = await maintain(database_url, ahead=3 * HOUR, max_age=HOUR)

    assert done is not None
    assert done.retired[0].legacy  # the oldest first
    assert done.kept_events == 1
    assert done.forgotten_keys == 5  # in batches of two
    # The legacy partitions are gone: dropped, not emptied.
    assert not await db.fetchval(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'relay'::regnamespace "
        "AND relkind = 'r' AND relname LIKE '%\\_legacy'"
    )
    events = await db.fetch("SELECT id, kept, tableoid::regclass::text AS t FROM relay.events")
    assert [tuple(r) for r in events] == [("evt-keep", True, "relay.events_kept")]
    assert await db.fetchval("SELECT count(*) FROM relay.attempts") == 0
    states = await db.fetch("SELECT event_id, destination_id, status FROM relay.delivery_state")
    assert [tuple(r) for r in states] == [("evt-keep", "later", "pending")]
    keys = await db.fetch("SELECT id FROM relay.event_keys")
    assert [r["id"] for r in keys] == ["evt-keep"]

    # What was kept is delivered once a dispatcher runs; the dropped events' ids are new
    # again, the kept one's is still a repeat.
    receiver.reply = lambda n, path: Reply()
    settings = make_settings(database_url, tenants=tenants(receiver))
    server = await start_relay(settings)
    await publish(http, server, "evt-0", "t")
    await publish(http, server, "evt-keep", "keep")
    async with asyncio.timeout(15):
        while (
            await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
            < 3
        ):
            await asyncio.sleep(0.05)
    later = [r for r in receiver.requests if r.path == "/later"]
    assert len(later) == 1 and b"evt-keep" in later[0].body
    assert await db.fetchval("SELECT count(*) FROM relay.events WHERE id = 'evt-keep'") == 1
    log = await db.fetch("SELECT event_id, destination_id, status FROM relay.delivery_log")
    assert ("evt-keep", "later", "success") in [tuple(r) for r in log]
    await server.close()

    # Past the age with nothing left to deliver, the kept event goes too, with its key.
    done = await maintain(database_url, ahead=3 * HOUR, max_age=HOUR)
    assert done is not None and done.pruned_kept == 1
    assert not await db.fetchval("SELECT count(*) FROM relay.events_kept")
    assert not await db.fetchval("SELECT count(*) FROM relay.event_keys WHERE id = 'evt-keep'")


async def test_a_replay_running_while_a_slice_closes_keeps_its_event(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any
) -> None:
    from relay.db import ops
    from relay.db.ops import ReplayFilter

    await finished_history(start_relay, http, receiver, database_url, db)
    await age_history(db)
    engine = create_engine(database_url, pool_size=2)
    try:
        # A replay of bad's failed deliveries, not yet committed, when retention starts.
        async with engine.begin() as conn:
            ids, _ = await ops.replay_batch(
                conn, ReplayFilter(statuses=("failed",), destination_id="bad"), after=0, limit=2
            )
            assert len(ids) == 2
            task = asyncio.create_task(maintain(database_url, ahead=3 * HOUR, max_age=HOUR))
            await asyncio.sleep(0.5)
            assert not task.done()  # waiting for the replay
        done = await asyncio.wait_for(task, 20)
    finally:
        await engine.dispose()
    assert done is not None and done.kept_events == 3
    kept = await db.fetch(
        "SELECT event_id, destination_id, status FROM relay.delivery_state ORDER BY 1, 2"
    )
    assert [tuple(r) for r in kept] == [
        ("evt-0", "bad", "pending"),
        ("evt-1", "bad", "pending"),
        ("evt-keep", "later", "pending"),
    ]


async def test_a_retry_of_an_event_whose_slice_is_closing_keeps_it(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any
) -> None:
    from relay.db import slices

    await finished_history(start_relay, http, receiver, database_url, db)
    await age_history(db)
    # The legacy slice is closing (the first step of retiring it), not yet dropped.
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            raw = await slices.raw(conn)
            legacy = (await slices.slices(raw))[0]
            await slices.close(raw, legacy.starts_at, *retention.seq_range(legacy))
        # Nothing to deliver is left in evt-3, so closing did not keep it.
        assert not await db.fetchval("SELECT count(*) FROM relay.events_kept WHERE id = 'evt-3'")
        # The retry is taken by an API alone: no dispatcher sends it before the drop.
        settings = make_settings(database_url, tenants=tenants(receiver))
        api_only = await start_relay(settings, dispatcher=False)
        async with http.post(
            api_only.make_url("/api/v1/retry"),
            json={"event_id": "evt-3", "destination_id": "bad"},
            headers=admin_headers(),
        ) as resp:
            assert resp.status == 202, await resp.text()
        assert await db.fetchval("SELECT kept FROM relay.events WHERE id = 'evt-3'")
        await api_only.close()
        done = await retention.maintain(
            engine, RetentionSettings(), max_age=HOUR, now=legacy.ends_at + 2 * HOUR
        )
        assert done is not None and legacy.starts_at in [s.starts_at for s in done.retired]
        assert done.pruned_kept == 0  # its delivery is pending
        receiver.reply = lambda n, path: Reply()
        await start_relay(settings)
        async with asyncio.timeout(15):
            while not await db.fetchval(
                "SELECT count(*) FROM relay.delivery_state "
                "WHERE event_id = 'evt-3' AND destination_id = 'bad' AND status = 'delivered'"
            ):
                await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


async def test_relay_prune_drops_slices_by_the_age_given(
    database_url: str, db: Any, tmp_path: Path
) -> None:
    # The legacy slice (empty here) ended when the database was migrated.
    pruned = await asyncio.to_thread(
        relay_cli, database_url, tmp_path, "prune", "--older-than-days", str(1 / 86400)
    )
    assert pruned.returncode == 0, pruned.stderr
    assert "slices of history: (legacy) to" in pruned.stdout
    # Progress per slice dropped, with the rate and the time left (issue 21). The legacy
    # slice, and more when the suite's template is older than its first slices.
    assert re.search(
        r"^dropped (\d+)/\1 \(100%\), [\d,]+ slices/s, ETA 0:00:00$", pruned.stdout, re.M
    )
    assert not await db.fetchval(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'relay'::regnamespace "
        "AND relkind = 'r' AND relname LIKE '%\\_legacy'"
    )
    # Without an age, prune refuses rather than guessing.
    refused = await asyncio.to_thread(relay_cli, database_url, tmp_path, "prune")
    assert refused.returncode == 2 and "retention.max_age_days" in refused.stderr


def test_slices_are_an_eighth_of_the_age_and_made_well_ahead() -> None:
    from datetime import UTC, datetime

    assert retention.slice_width(timedelta(days=30)) == timedelta(days=1)
    assert retention.slice_width(timedelta(hours=8)) == timedelta(hours=1)
    assert retention.slice_width(timedelta(minutes=5)) == timedelta(minutes=5)  # the least
    assert retention.slice_width(timedelta(0)) == timedelta(days=1)
    now = datetime(2026, 12, 7, 12, 0, 30, tzinfo=UTC)
    made = retention.slices_to_make(now - timedelta(minutes=1), now, timedelta(minutes=30))
    assert made[0] == (now - timedelta(minutes=1), now + timedelta(minutes=29))
    assert made[-1][1] >= now + timedelta(minutes=90)  # three slices
    # After a long stop, one slice spans the gap.
    gap = retention.slices_to_make(now - timedelta(days=3), now, timedelta(hours=1))
    assert gap[0] == (now - timedelta(days=3), datetime(2026, 12, 7, 13, 0, tzinfo=UTC))
    assert all(a[1] == b[0] for a, b in itertools.pairwise(gap))


async def test_slices_made_ahead_at_another_width_are_made_again(
    database_url: str, db: Any
) -> None:
    # The migration made ten-minute slices ahead; five minutes of retention asks for
    # five-minute ones. Those wholly ahead are remade, and time stays covered throughout.
    engine = create_engine(database_url, pool_size=1)
    try:
        done = await retention.maintain(engine, RetentionSettings(max_age_days=5 / 1440))
    finally:
        await engine.dispose()
    assert done is not None and done.remade > 0
    rows = await db.fetch("SELECT starts_at, ends_at FROM relay.slices ORDER BY starts_at")
    assert all(a["ends_at"] == b["starts_at"] for a, b in itertools.pairwise(rows))
    now = await db.fetchval("SELECT clock_timestamp()")
    ahead = [r for r in rows[1:] if r["starts_at"] > now + timedelta(minutes=1)]  # not legacy
    assert ahead and all(r["ends_at"] - r["starts_at"] == timedelta(minutes=5) for r in ahead)
    assert rows[-1]["ends_at"] >= now + retention.MIN_AHEAD
    partitions = await db.fetchval(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'relay.attempts'::regclass"
    )
    assert partitions == len(rows)
