"""Operator commands against real history: events show, replay, stats (prune:
test_retention.py)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.support.plans import plan_nodes
from tests.support.receiver import Reply
from tests.support.relay import admin_headers, make_settings


def relay_cli(database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "ops.toml"
    config.write_text("")  # everything from the environment
    env = {**os.environ, "RELAY_CONFIG": str(config), "RELAY_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def fill(start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any) -> Any:
    """acme/good answers 200; acme/bad answers 500 until told otherwise. Five events to
    both: good delivers them, bad's end up failed."""
    state = {"bad_ok": False}

    def reply(n: int, path: str) -> Reply:
        if path == "/bad" and not state["bad_ok"]:
            return Reply(status=500)
        return Reply()

    receiver.reply = reply
    tenants = [
        {
            "id": "acme",
            "destinations": [
                {"id": "good", "url": receiver.url("/good")},
                {"id": "bad", "url": receiver.url("/bad")},
            ],
        }
    ]
    settings = make_settings(
        database_url, tenants=tenants, delivery={"retry": {"schedule_seconds": [0.1]}}
    )
    server = await start_relay(settings)
    for n in range(5):
        body = {"id": f"evt-{n}", "tenant_id": "acme", "topic": "t", "data": {"n": n}}
        async with http.post(
            server.make_url("/api/v1/publish"), json=body, headers=admin_headers()
        ) as resp:
            assert resp.status == 202
    async with asyncio.timeout(15):
        while (
            await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'failed'") < 5
        ):
            await asyncio.sleep(0.05)
    return server, state


async def test_replay_dry_run_counts_what_replay_then_replays(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any, tmp_path: Path
) -> None:
    _, state = await fill(start_relay, http, receiver, database_url, db)
    dry = await asyncio.to_thread(
        relay_cli, database_url, tmp_path, "replay", "--destination", "bad", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert "dry run: 5 deliveries would be replayed" in dry.stdout
    # A dry run changes nothing.
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'failed'") == 5

    state["bad_ok"] = True
    before = len(receiver.on_path("/bad"))
    done = await asyncio.to_thread(
        relay_cli, database_url, tmp_path, "replay", "--destination", "bad", "--batch-size", "2"
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 5 deliveries" in done.stdout
    # Piped, progress is a line per batch with the share, the rate and the time left.
    assert re.search(
        r"^replayed 2/5 \(40%\), [\d,]+ deliveries/s, ETA \d+:\d\d:\d\d$", done.stdout, re.M
    )
    await receiver.wait_for(before + 5, path="/bad")
    async with asyncio.timeout(10):
        while (
            await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
            < 10
        ):
            await asyncio.sleep(0.05)
    manual = await db.fetch(
        "SELECT status FROM relay.attempts WHERE manual AND destination_id = 'bad'"
    )
    assert [r["status"] for r in manual] == ["success"] * 5
    # The good destination's deliveries were not touched.
    assert len(receiver.on_path("/good")) == 5


async def test_replay_filters_by_tenant_and_time_window(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any, tmp_path: Path
) -> None:
    await fill(start_relay, http, receiver, database_url, db)
    none = await asyncio.to_thread(
        relay_cli, database_url, tmp_path, "replay", "--tenant", "other", "--dry-run"
    )
    assert "dry run: 0 deliveries" in none.stdout
    future = await asyncio.to_thread(
        relay_cli, database_url, tmp_path, "replay", "--since", "2999-01-01", "--dry-run"
    )
    assert "dry run: 0 deliveries" in future.stdout
    window = await asyncio.to_thread(
        relay_cli, database_url, tmp_path, "replay", "--until", "2999-01-01T00:00:00Z", "--dry-run"
    )
    assert "dry run: 5 deliveries" in window.stdout
    bad = await asyncio.to_thread(relay_cli, database_url, tmp_path, "replay", "--since", "nope")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


async def test_events_show_tells_the_story(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any, tmp_path: Path
) -> None:
    await fill(start_relay, http, receiver, database_url, db)
    shown = await asyncio.to_thread(relay_cli, database_url, tmp_path, "events", "show", "evt-3")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "event evt-3  tenant acme" in out
    assert '"n":3' in out.replace(" ", "")
    # One delivered and one failed delivery; three attempts in all (1 + 2 for bad).
    deliveries = out.split("deliveries\n")[1].split("attempts\n")[0]
    assert "good" in deliveries and "delivered" in deliveries
    assert "bad" in deliveries and "failed" in deliveries
    attempts = out.split("attempts\n")[1].strip().splitlines()
    assert len(attempts) == 1 + 3
    missing = await asyncio.to_thread(relay_cli, database_url, tmp_path, "events", "show", "nope")
    assert missing.returncode == 1 and "no event 'nope'" in missing.stdout


async def test_stats_shows_backlog_and_health(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any, tmp_path: Path
) -> None:
    await fill(start_relay, http, receiver, database_url, db)
    shown = await asyncio.to_thread(relay_cli, database_url, tmp_path, "stats")
    assert shown.returncode == 0, shown.stderr
    health = shown.stdout.split("destinations\n")[1]
    rows = {line.split()[1]: line.split() for line in health.strip().splitlines()[1:]}
    assert set(rows) == {"good", "bad"}
    # attempts_1h: good 5, bad 10 (two tries each); success rates as percentages and
    # booleans as yes/no (issue 21: not 1.0000 and True); piped, so no colour codes.
    assert rows["good"][2:6] == ["yes", "0", "5", "100.0%"]
    assert rows["bad"][2:6] == ["yes", "10", "10", "0.0%"]
    assert "\x1b[" not in shown.stdout


async def end_strays(database_url: str) -> int:
    """One housekeeping round's ending of deliveries stranded on deleted destinations."""
    from relay.db import ops
    from relay.db.engine import create_engine

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await ops.fail_deleted_destinations(conn)
    finally:
        await engine.dispose()


async def test_deliveries_stranded_on_a_deleted_destination_are_ended_not_replayed(
    start_relay: Any, http: Any, receiver: Any, database_url: str, db: Any, tmp_path: Path
) -> None:
    server, _ = await fill(start_relay, http, receiver, database_url, db)
    await server.close()
    await db.execute("UPDATE relay.destinations SET deleted_at = now() WHERE id = 'bad'")
    # As if an attempt in flight during the DELETE had been recorded as a retry.
    await db.execute(
        "UPDATE relay.deliveries SET status = 'pending' WHERE destination_id = 'bad' "
        "AND event_seq = (SELECT min(event_seq) FROM relay.deliveries)"
    )
    dry = await asyncio.to_thread(relay_cli, database_url, tmp_path, "replay", "--dry-run")
    assert "dry run: 0 deliveries" in dry.stdout  # bad's failed ones are not replayable
    assert await end_strays(database_url) == 1
    stranded = await db.fetch(
        "SELECT status, last_error FROM relay.deliveries WHERE destination_id = 'bad' "
        "AND status NOT IN ('failed')"
    )
    assert stranded == []
    assert (
        await db.fetchval(
            "SELECT count(*) FROM relay.deliveries WHERE last_error = 'destination deleted'"
        )
        == 1
    )


async def test_ending_strays_looks_up_the_deleted_destinations_not_the_backlog(
    db: Any, database_url: str
) -> None:
    # Every dispatcher runs this each minute. A live destination with 20,000 pending, a
    # deleted one with two strays, and (as autovacuum leaves a table of a few rows) no
    # statistics for destinations: the rows must be found per deleted destination, never
    # by walking the pending backlog.
    from relay.db import ops

    await db.execute("INSERT INTO relay.tenants (id) VALUES ('acme')")
    await db.execute(
        """INSERT INTO relay.destinations (tenant_id, id, topics, url, secret, deleted_at)
           VALUES ('acme', 'live', '{*}', 'http://127.0.0.1:9/a', 'whsec_x', NULL),
                  ('acme', 'gone', '{*}', 'http://127.0.0.1:9/b', 'whsec_x', now())"""
    )
    await db.execute(
        """WITH e AS (
               INSERT INTO relay.events (tenant_id, id, data)
               SELECT 'acme', 'evt-' || g, '{}' FROM generate_series(1, 20002) g
               RETURNING seq, id)
           INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id)
           SELECT seq, 'acme',
                  CASE WHEN split_part(id, '-', 2)::int % 10000 = 0 THEN 'gone' ELSE 'live' END
           FROM e"""
    )
    await db.execute("ANALYZE relay.deliveries")
    [plan] = orjson.loads(
        await db.fetchval("EXPLAIN (FORMAT JSON) " + str(ops.FAIL_DELETED_DESTINATIONS))
    )
    nodes = plan_nodes(plan["Plan"])
    scans = {
        node["Node Type"]
        for node in nodes
        if node.get("Relation Name") in ("deliveries", "deliveries_active")
    }
    assert "Seq Scan" not in scans, scans
    # One look-up by destination (either index keyed by it), then the rows by key.
    indexes = {node["Index Name"] for node in nodes if "Index Name" in node}
    by_destination = {
        "ix_deliveries_destination",
        "ix_deliveries_active_destination",
        "ix_deliveries_due",
    }
    assert len(indexes & by_destination) == 1, indexes
    assert indexes - by_destination == {"pk_deliveries_active"}, indexes

    assert await end_strays(database_url) == 2
    counts = await db.fetch(
        "SELECT destination_id, status, count(*) FROM relay.deliveries GROUP BY 1, 2 ORDER BY 1"
    )
    assert [tuple(r) for r in counts] == [("gone", "failed", 2), ("live", "pending", 20_000)]
