"""Delivery control across real ``relay dispatch`` processes sharing one database: rate
limits and in-flight caps that hold for the whole deployment (issue 23), measured at a
real receiver."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.db.engine import create_engine
from relay.publish import Event, publish
from tests.integration.test_dispatcher_processes import (
    SECRET,
    Dispatch,
    by_status,
    publish_many,
    wait_until,
)
from tests.integration.test_ops import relay_cli
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.slow


@pytest.fixture
async def dispatchers(database_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """``start(name, config)`` runs a ``relay dispatch`` process; all killed after."""
    started: list[Dispatch] = []

    async def start(name: str, config: Path, **env: str) -> Dispatch:
        process = Dispatch(name, config, database_url, tmp_path, **env)
        started.append(process)
        await process.ready()
        return process

    yield start
    for process in started:
        process.stop()


def write_config(
    path: Path,
    receiver: Receiver,
    *,
    tenant: dict[str, Any] | None = None,
    destination: dict[str, Any] | None = None,
    **delivery: Any,
) -> Path:
    """One tenant, acme, with one destination, orders, each with the keys given."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return orjson.dumps(v).decode()

    def keys(values: dict[str, Any] | None) -> list[str]:
        return [f"{k} = {value(v)}" for k, v in (values or {}).items()]

    lines = [
        "[delivery]",
        'allow_private_networks = ["127.0.0.0/8"]',
        "poll_interval_seconds = 0.2",
        *keys(delivery),
        "",
        "[[tenants]]",
        'id = "acme"',
        *keys(tenant),
        "",
        "[[tenants.destinations]]",
        'id = "orders"',
        f'url = "{receiver.url("/orders")}"',
        f'secret = "{SECRET}"',
        *keys(destination),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def all_delivered(db: Any, events: int) -> Callable[[], Awaitable[bool]]:
    """A check for wait_until: all ``events`` are delivered."""

    async def check() -> bool:
        return (await by_status(db)()).get("delivered", 0) == events

    return check


async def deliver_with_three(
    dispatchers: Any,
    db: Any,
    database_url: str,
    config: Path,
    events: int,
    *,
    timeout: float = 60,
    per_transaction: int = 200,
) -> None:
    """Three ``relay dispatch`` processes with ``config`` deliver ``events`` published
    events (published once all three run)."""
    for n in range(3):
        await dispatchers(f"dispatch-{n}", config)
    await publish_many(database_url, events, per_transaction=per_transaction)
    await wait_until(all_delivered(db, events), timeout=timeout)


# The sizes: 100 s at 50/s; 10,000 ordered deliveries on a busy machine.
@pytest.mark.timeout(420)
async def test_three_dispatchers_hold_a_destination_to_its_rate_and_in_flight_cap(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    # Issue 23's must-show: 5,000 events, three processes, a destination limited to 50/s:
    # 50/s +-10% at the receiver, never more than C in flight there. Each process alone
    # could send 32 at a time (per_destination_concurrency) and ~1,000/s.
    rate, cap, events = 50, 4, 5000
    receiver.reply = lambda n, path: Reply(delay=0.05)
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        destination={"rate_limit_per_second": rate, "max_in_flight": cap},
    )
    await deliver_with_three(
        dispatchers,
        db,
        database_url,
        config,
        events,
        timeout=events / rate * 1.5 + 30,
        per_transaction=500,
    )
    times = sorted(r.at for r in receiver.requests)
    assert len(times) == events
    # The rate in the middle of the drain, past the first burst, over ~90 seconds.
    start, end = times[0] + 5, times[-1] - 2
    measured = sum(start <= t < end for t in times) / (end - start)
    assert rate * 0.9 <= measured <= rate * 1.1, measured
    assert receiver.max_in_flight <= cap
    # Waiting for a token is never a failed attempt.
    rows = await db.fetch("SELECT number, status, count(*) FROM relay.attempts GROUP BY 1, 2")
    assert [tuple(r) for r in rows] == [(1, "success", events)]


async def test_a_fast_limit_is_never_exceeded_however_long_the_backlog(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    # 400/s over a backlog of 8,000: the claim's refill once counted the time of its own
    # in-flight count twice, which grows with the backlog (530/s for a 500/s limit).
    # Only the upper bound is asserted: a slow machine may deliver less, never more.
    rate, events = 400, 8000
    config = write_config(
        tmp_path / "relay.toml", receiver, destination={"rate_limit_per_second": rate}
    )
    await deliver_with_three(
        dispatchers, db, database_url, config, events, timeout=120, per_transaction=1000
    )
    times = sorted(r.at for r in receiver.requests)
    assert len(times) == events
    # The rate past the first burst and before the end, over ~16 s (the bug: 423/s).
    start, end = times[0] + 2, times[-1] - 1
    measured = sum(start <= t < end for t in times) / (end - start)
    assert measured <= rate * 1.025, measured


async def test_a_tenants_in_flight_cap_holds_across_three_dispatchers(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    # A slow receiver: without a deployment-wide cap, three processes would have up to
    # 3 x 32 requests in flight to it.
    events, cap = 60, 3
    receiver.reply = lambda n, path: Reply(delay=0.3)
    config = write_config(tmp_path / "relay.toml", receiver, tenant={"max_in_flight": cap})
    await deliver_with_three(dispatchers, db, database_url, config, events)
    assert receiver.max_in_flight == cap
    assert len(receiver.requests) == events


async def test_a_rate_limit_alone_leaves_a_second_of_its_rate_in_flight(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    # A slow receiver and a rate limit with no max_in_flight: the rate bounds it, not
    # per_destination_concurrency (32) held by all processes together, which would keep
    # it to 32 / 0.3 s = ~107/s against its limit of 400/s. Each process still sends at
    # most 32 at a time.
    events, rate = 400, 400
    receiver.reply = lambda n, path: Reply(delay=0.3)
    config = write_config(
        tmp_path / "relay.toml", receiver, destination={"rate_limit_per_second": rate}
    )
    await deliver_with_three(dispatchers, db, database_url, config, events, per_transaction=100)
    assert 40 < receiver.max_in_flight <= 3 * 32
    assert len(receiver.requests) == events


async def test_a_destination_without_limits_is_not_slowed(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    # The other side of the cap test: the same slow receiver, no limits: many at once.
    events = 60
    receiver.reply = lambda n, path: Reply(delay=0.3)
    config = write_config(tmp_path / "relay.toml", receiver)
    await deliver_with_three(dispatchers, db, database_url, config, events)
    assert receiver.max_in_flight > 3 * 3


async def test_a_429_with_retry_after_pauses_the_destination_and_it_recovers(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    events, refused = 300, 40
    receiver.reply = lambda n, path: (
        Reply(status=429, headers={"Retry-After": "2"}) if n == refused else Reply(delay=0.02)
    )
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        per_destination_concurrency=4,
        retry={"schedule_seconds": [0.5], "jitter": 0},
    )
    await dispatchers("dispatch", config)
    await publish_many(database_url, events)

    await receiver.wait_for(refused + 1, timeout=30)
    answered = receiver.requests[refused].at

    async def judged() -> bool:
        row = await db.fetchrow("SELECT throttled_until FROM relay.destinations")
        return row["throttled_until"] is not None

    await wait_until(judged, timeout=5)
    row = await db.fetchrow(
        "SELECT throttle, throttle_reason, throttled_until - now() AS left FROM relay.destinations"
    )
    # Halved (the requests already on their way, answered 200, may have given some back).
    assert 0.5 <= row["throttle"] < 1
    assert row["throttle_reason"] == "the receiver answered 429 with Retry-After: 2"

    await wait_until(all_delivered(db, events), timeout=60)
    # Nothing was sent for 2 s after the 429 was answered, but what was already on its
    # way (the four slots' requests, sent before relay read the 429).
    after = sorted(r.at - answered for r in receiver.requests if r.at > answered)
    assert after and after[0] >= 0
    assert [t for t in after if 0.1 < t < 2.0] == []
    assert sum(t <= 0.1 for t in after) <= 4
    # Healthy answers since then brought it back to full speed.
    row = await db.fetchrow(
        "SELECT throttle, throttled_until, throttle_reason FROM relay.destinations"
    )
    assert tuple(row) == (1.0, None, None)
    # The refused delivery was tried again after its Retry-After, and delivered.
    rows = await db.fetch("SELECT number, status, count(*) FROM relay.attempts GROUP BY 1, 2")
    assert sorted(tuple(r) for r in rows) == [
        (1, "failed", 1),
        (1, "success", events - 1),
        (2, "success", 1),
    ]


# The sizes: 100 s at 50/s; 10,000 ordered deliveries on a busy machine.
@pytest.mark.timeout(420)
async def test_ordered_keys_arrive_in_publish_order_through_failures_and_a_kill_9(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    # Issue 23's must-show: 10,000 events over 100 keys from concurrent producers, three
    # dispatchers (one killed with kill -9 mid-run), a receiver failing 10% at random.
    keys, per_key, producers = 100, 100, 4
    events = keys * per_key
    chance = random.Random(23)
    answered: dict[str, int] = {}  # per key, the last n answered 200
    wrong: list[tuple[str, int, int]] = []

    def reply(number: int, path: str) -> Reply:
        event = receiver.requests[number].json()
        key, n = event["key"], event["n"]
        last = answered.get(key, -1)
        # The next one, or the last one again (sent again after the kill -9).
        if n not in (last, last + 1):
            wrong.append((key, last, n))
        if chance.random() < 0.1:
            return Reply(status=500)
        answered[key] = max(last, n)
        return Reply()

    receiver.reply = reply
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        destination={"ordering_key": "order"},
        lease_seconds=2,
        retry={"schedule_seconds": [0.05, 0.1] + [0.2] * 10, "jitter": 0},
    )
    processes = [await dispatchers(f"dispatch-{n}", config) for n in range(3)]

    engine = create_engine(database_url, pool_size=producers)

    async def produce(first_key: int) -> None:
        mine = range(first_key, keys, producers)
        for n in range(per_key):
            async with engine.begin() as conn:
                for k in mine:
                    data = orjson.dumps({"key": f"k{k}", "n": n})
                    await publish(
                        conn,
                        Event(
                            "acme",
                            "order.created",
                            data,
                            id=f"k{k}-{n}",
                            metadata={"order": f"k{k}"},
                        ),
                    )

    started = time.monotonic()
    try:
        await asyncio.gather(*(produce(p) for p in range(producers)))
    finally:
        await engine.dispose()
    await receiver.wait_for(events // 3, timeout=120)
    processes[0].proc.send_signal(signal.SIGKILL)

    await wait_until(all_delivered(db, events), timeout=300)
    took = time.monotonic() - started
    assert wrong == []
    assert answered == {f"k{k}": per_key - 1 for k in range(keys)}
    assert await db.fetchval("SELECT count(*) FROM relay.attempts WHERE status = 'failed'") > 0
    print(
        f"ordered: {events} events over {keys} keys delivered in {took:.1f} s "
        f"({events / took:.0f}/s), {len(receiver.requests)} requests"
    )


@pytest.mark.parametrize("policy", ["block", "skip"])
async def test_a_failing_head_holds_only_its_key_and_the_policy_decides(
    dispatchers: Any,
    receiver: Receiver,
    db: Any,
    database_url: str,
    tmp_path: Path,
    http: Any,
    policy: str,
) -> None:
    # k1's first event always fails; k2's go through. Three tries (two retries).
    def reply(number: int, path: str) -> Reply:
        event = receiver.requests[number].json()
        return Reply(status=500) if (event["key"], event["n"]) == ("k1", 0) else Reply()

    receiver.reply = reply
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        destination={"ordering_key": "order", "ordering_on_failure": policy},
        retry={"schedule_seconds": [0.1, 0.1], "jitter": 0},
    )
    process = await dispatchers("dispatch", config)
    engine = create_engine(database_url, pool_size=1)
    try:
        for n in range(5):
            async with engine.begin() as conn:
                for key in ("k1", "k2"):
                    data = orjson.dumps({"key": key, "n": n})
                    meta = {"order": key}
                    await publish(conn, Event("acme", "t", data, id=f"{key}-{n}", metadata=meta))
    finally:
        await engine.dispose()

    def seen(key: str) -> list[int]:
        return [r.json()["n"] for r in receiver.requests if r.json()["key"] == key]

    if policy == "skip":
        # The head fails for good, and its key goes on, in order.
        await receiver.wait_for(3 + 4 + 5, timeout=30)
        assert seen("k1") == [0, 0, 0, 1, 2, 3, 4]
        assert seen("k2") == [0, 1, 2, 3, 4]
        return

    async def blocked() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM relay.deliveries_active WHERE next_attempt_at = 'infinity'"
            )
        )

    await wait_until(blocked, timeout=30)
    await asyncio.sleep(1)  # nothing more of k1 goes out
    assert seen("k1") == [0, 0, 0]
    assert seen("k2") == [0, 1, 2, 3, 4]
    # Visible in SQL (above), in the dispatcher's metrics, and in relay stats.
    async with http.get(process.health_url.replace("/healthz", "/metrics")) as resp:
        metrics = await resp.text()
    assert 'relay_ordered_keys_blocked{destination_id="orders",tenant_id="acme"} 1.0' in metrics
    stats = await asyncio.to_thread(relay_cli, database_url, tmp_path, "stats")
    assert "ordered keys blocked" in stats.stdout and "orders" in stats.stdout, stats
    # An operator's retry (what POST /api/v1/retry does to a pending row: due now,
    # manual) sends the head again; the receiver takes it now, and the key goes on.
    receiver.reply = lambda number, path: Reply()
    await db.execute(
        "UPDATE relay.deliveries_active SET next_attempt_at = now(), manual = true"
        " WHERE next_attempt_at = 'infinity'"
    )
    await db.execute("NOTIFY relay_outbox")
    await receiver.wait_for(3 + 5 + 5, timeout=30)
    assert seen("k1") == [0, 0, 0, 0, 1, 2, 3, 4]
