"""Fairness between tenants (issue 23): one tenant's backlog, or the claim it keeps busy,
does not hold up another tenant's fresh event past the next claim. Real PostgreSQL, real
``relay dispatch`` processes and a real receiver; each test shows the property with a
backlog that cannot drain (receivers or a lock that never let go while it is checked),
so what it asserts is an order of events, never a time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.db import outbox
from relay.db.engine import create_engine
from relay.publish import Event, publish
from tests.integration.test_dispatcher_processes import SECRET, Dispatch, wait_until
from tests.support.receiver import Receiver, Reply


@pytest.fixture
async def dispatcher(database_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """``start(config)`` runs one ``relay dispatch`` process; killed after the test."""
    started: list[Dispatch] = []

    async def start(config: Path) -> Dispatch:
        process = Dispatch("dispatch", config, database_url, tmp_path)
        started.append(process)
        await process.ready()
        return process

    yield start
    for process in started:
        process.stop()


def write_config(
    path: Path, receiver: Receiver, tenants: dict[str, list[dict[str, Any]]], **delivery: Any
) -> Path:
    """Tenants, each with destinations (an id and their keys); a destination's URL is the
    receiver's path ``/<id>``."""
    lines = [
        "[delivery]",
        'allow_private_networks = ["127.0.0.0/8"]',
        *(f"{k} = {orjson.dumps(v).decode()}" for k, v in delivery.items()),
    ]
    for tenant, destinations in tenants.items():
        lines += ["", "[[tenants]]", f'id = "{tenant}"']
        for d in destinations:
            lines += [
                "",
                "[[tenants.destinations]]",
                f'url = "{receiver.url("/" + d["id"])}"',
                f'secret = "{SECRET}"',
                *(f"{k} = {orjson.dumps(v).decode()}" for k, v in d.items()),
            ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def publish_for(database_url: str, tenant: str, count: int, prefix: str) -> None:
    """``count`` events of ``tenant``, in one transaction (relay's Python API)."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for n in range(count):
                data = orjson.dumps({"n": n})
                await publish(conn, Event(tenant, "t", data, id=f"{prefix}-{n}"))
    finally:
        await engine.dispose()


async def test_one_claim_shares_its_rows_between_tenants_not_in_due_order(
    database_url: str, db: Any, receiver: Receiver, tmp_path: Path
) -> None:
    # 200 of big's rows were due before small's one; a claim of four rows asks each
    # tenant for two and takes small's (one global due order would take four of big's,
    # and small's would wait for all 200).
    from relay.config import load_settings
    from relay.db.sync import sync_config

    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        {"big": [{"id": "backlog"}], "small": [{"id": "fresh"}]},
    )
    settings = load_settings(config, env={"RELAY_DATABASE_URL": database_url})
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await sync_config(conn, settings)
        await publish_for(database_url, "big", 200, "big")
        await publish_for(database_url, "small", 1, "small")
        async with engine.begin() as conn:
            claimed = await outbox.claim_due(conn, limit=4, lease_seconds=60, token=uuid.uuid4())
    finally:
        await engine.dispose()
    assert sorted(c.tenant_id for c in claimed) == ["big", "big", "small"]


async def test_a_fresh_event_is_not_held_up_by_a_claim_for_another_tenant(
    dispatcher: Any, database_url: str, db: Any, receiver: Receiver, tmp_path: Path
) -> None:
    # big's destination is rate limited, so its claim first takes the destination's lock
    # (shared by every dispatcher); another session holds it, as another dispatcher
    # claiming it would, and the claim waits. small's event, published meanwhile, is
    # claimed and delivered all the same: a quiet destination's claim does not wait for
    # the claim under way.
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        {
            "big": [{"id": "backlog", "rate_limit_per_second": 1000}],
            "small": [{"id": "fresh"}],
        },
    )
    await dispatcher(config)
    key = "SELECT $1::int, hashtext('big/backlog')"
    lock_class, lock_key = await db.fetchrow(key, outbox.LIMIT_LOCK_CLASS)
    await db.execute("SELECT pg_advisory_lock($1, $2)", lock_class, lock_key)
    await publish_for(database_url, "big", 20, "big")

    async def claim_waits_for_the_lock() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' "
                "AND datname = current_database()"
            )
        )

    await wait_until(claim_waits_for_the_lock, timeout=30)
    await publish_for(database_url, "small", 1, "small")
    [fresh] = await receiver.wait_for(1, path="/fresh", timeout=20)
    assert fresh.headers["webhook-id"] == "small-0"
    assert receiver.on_path("/backlog") == []
    assert await claim_waits_for_the_lock()  # big's claim is still waiting
    await db.execute("SELECT pg_advisory_unlock($1, $2)", lock_class, lock_key)
    await receiver.wait_for(20, path="/backlog", timeout=30)


async def test_a_backlog_that_would_fill_every_slot_leaves_room_for_another_tenant(
    dispatcher: Any, database_url: str, db: Any, receiver: Receiver, tmp_path: Path
) -> None:
    # big has ten destinations whose receivers do not answer (for two minutes), enough
    # to hold all eight of the process's slots (one per destination here); small
    # published a moment before. big stops one slot short of all eight, and small's next
    # event goes out while big's requests are all still waiting for their answer.
    receiver.reply = lambda n, path: Reply(delay=120) if path.startswith("/big") else Reply()
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        {
            "big": [{"id": f"big{n}", "timeout_seconds": 150} for n in range(10)],
            "small": [{"id": "fresh"}],
        },
        concurrency=8,
        per_destination_concurrency=1,
    )
    await dispatcher(config)
    await publish_for(database_url, "small", 1, "before")
    await receiver.wait_for(1, path="/fresh", timeout=20)
    await publish_for(database_url, "big", 3, "big")

    def big_requests() -> int:
        return sum(len(receiver.on_path(f"/big{n}")) for n in range(10))

    await receiver.wait_for(1 + 7, timeout=20)
    await publish_for(database_url, "small", 1, "after")
    fresh = await receiver.wait_for(2, path="/fresh", timeout=20)
    assert [r.headers["webhook-id"] for r in fresh] == ["before-0", "after-0"]
    # None of big's requests was answered: small did not wait for one of big's slots.
    assert big_requests() == 7
    assert receiver.in_flight == 7
    assert (
        await db.fetchval(
            "SELECT count(*) FROM relay.deliveries "
            "WHERE tenant_id = 'big' AND status = 'delivering'"
        )
        == 7
    )


GROUPED = '\n[delivery.groups]\nlatency = ["small"]\n'


def grouped_config(tmp_path: Path, receiver: Receiver, *, takeover: float) -> Path:
    """Tenants big (destination backlog) and small (fresh), small in group latency."""
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        {"big": [{"id": "backlog"}], "small": [{"id": "fresh"}]},
        poll_interval_seconds=0.2,
        group_takeover_seconds=takeover,
    )
    config.write_text(config.read_text() + GROUPED)
    return config


async def test_a_group_is_delivered_by_its_own_dispatcher_and_the_others_leave_it(
    dispatcher: Any, database_url: str, db: Any, receiver: Receiver, tmp_path: Path
) -> None:
    # small is in group latency: `relay dispatch --group latency` delivers it and not big;
    # the dispatcher of no group delivers big and not small (its takeover is far off).
    config = grouped_config(tmp_path, receiver, takeover=3600)
    group = Dispatch("group", config, database_url, tmp_path, "--group", "latency")
    try:
        await group.ready()
        assert "delivering for group latency: tenants small" in group.log
        await publish_for(database_url, "big", 5, "big")
        await publish_for(database_url, "small", 3, "small")
        await receiver.wait_for(3, path="/fresh", timeout=20)
        # Several of its searches later, big's due rows are still not its to take.
        await asyncio.sleep(2)
        assert receiver.on_path("/backlog") == []
        assert (
            await db.fetchval(
                "SELECT count(*) FROM relay.deliveries_active WHERE tenant_id = 'big'"
            )
            == 5
        )
        other = await dispatcher(config)
        assert "delivering for tenants in no group" in other.log
        await receiver.wait_for(5, path="/backlog", timeout=20)
        group.stop()
        # With the group's dispatcher gone, the other leaves small's new event waiting.
        await publish_for(database_url, "small", 1, "small-late")
        await publish_for(database_url, "big", 1, "big-late")
        await receiver.wait_for(6, path="/backlog", timeout=20)
        await asyncio.sleep(2)
        assert len(receiver.on_path("/fresh")) == 3
    finally:
        group.stop()


async def test_a_group_without_a_dispatcher_is_taken_over_after_its_wait(
    dispatcher: Any, database_url: str, db: Any, receiver: Receiver, tmp_path: Path
) -> None:
    # No dispatcher of group latency runs: the dispatcher of no group delivers small's
    # events once their rows have waited group_takeover_seconds, not before, and says so.
    config = grouped_config(tmp_path, receiver, takeover=3)
    other = await dispatcher(config)
    started = time.monotonic()
    await publish_for(database_url, "small", 2, "small")
    await publish_for(database_url, "big", 1, "big")
    await receiver.wait_for(1, path="/backlog", timeout=20)
    assert receiver.on_path("/fresh") == []
    await receiver.wait_for(2, path="/fresh", timeout=30)
    waited = time.monotonic() - started
    assert waited >= 3 - 0.5, waited
    assert "destination small/fresh of group latency" in other.log
    assert "relay dispatch --group latency" in other.log


def test_an_unknown_group_stops_the_dispatcher_naming_the_flag(
    receiver: Receiver, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "relay.toml", receiver, {"small": [{"id": "fresh"}]})
    config.write_text(config.read_text() + GROUPED)
    done = subprocess.run(
        [sys.executable, "-m", "relay", "--config", str(config), "dispatch", "--group", "latncy"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--group: 'latncy' is not a group of delivery.groups (latency)" in done.stderr
    assert "fix: declare it under [delivery.groups]" in done.stderr
