"""The chaos scenarios. Each runs relay's CLI processes against a Harness, disrupts them
under load, and returns the Report of tests/chaos/invariants.py plus its own checks.

``long=False`` is the fast size the pytest suite runs (a few hundred events, seconds of
disruption); ``long=True`` is the size ``python -m tests.chaos --long`` runs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg

from tests.chaos import poison as poisons
from tests.chaos.harness import (
    POD_RARE_TOPIC,
    POD_TOPIC,
    RARE_TOPIC,
    TENANT,
    TOPIC,
    Harness,
    Published,
    SlowClient,
    Window,
)
from tests.chaos.invariants import Report, conclude

# The slow, failing and hanging destinations get only the "rare" quarter of the events:
# a receiver that takes 1-2 s, 32 at a time (the default per-destination cap), takes
# about 21 deliveries a second per dispatcher, less than the producers send.
RARE = [RARE_TOPIC, POD_RARE_TOPIC.split("#")[0]]
EVERYTHING = "*"


@dataclass(frozen=True)
class Size:
    seconds: float  # how long the producers publish
    rate: float  # Outpost events per second (the pod producer publishes a third of that)
    down: float  # how long a disruption lasts
    drain: float  # how long the backlog may take to drain afterwards


FAST = Size(seconds=12, rate=15, down=3, drain=45)
LONG = Size(seconds=60, rate=40, down=20, drain=150)


def size(long: bool, **changes: Any) -> Size:
    return replace(LONG if long else FAST, **changes)


# A dispatcher whose claim's acknowledgement a crash lost has rows marked as its own that
# it does not know about: they come back when their lease runs out (60 s by default) and
# a lease loop (every lease/4, at most 15 s) finds them. The drain waits that long.
def lease_drain(lease: float) -> float:
    return lease + min(lease / 4, 15) + 10


async def setup(
    h: Harness,
    receivers: list[tuple[str, str, list[str] | str]],
    commands: list[str],
    delivery: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> None:
    for name, behaviour, topics in receivers:
        await h.receiver(name, behaviour, topics)
    h.configure(delivery, server)
    await h.start(*commands)


async def load(
    h: Harness,
    sz: Size,
    disruption: Callable[[], Awaitable[float]] | None = None,
    at: float = 1 / 3,
) -> tuple[float, float | None]:
    """Publish for ``sz.seconds`` through both APIs; ``at`` that fraction of the way in,
    run the disruption, which returns when it ended. (production end, disruption end)"""
    h.producer("outpost", sz.rate)
    h.producer("pod", sz.rate / 3)
    started = time.time()
    production = asyncio.create_task(h.produce(sz.seconds))
    ended = None
    try:
        if disruption is not None:
            await asyncio.sleep(sz.seconds * at)
            ended = await disruption()
    finally:
        await production
    return started + sz.seconds, ended


# --- processes killed ----------------------------------------------------------------


async def dispatcher_kill9(h: Harness, long: bool) -> Report:
    """kill -9 of one of two dispatchers mid-load (with deliveries in flight to a slow
    receiver); it is restarted at once, and the rows it held are sent again once their
    lease runs out. Fast: ``lease_seconds = 5``, since the default 60 s lease would make
    the test wait a minute for the takeover; long: the default lease."""
    started = time.time()
    sz = size(long)
    await setup(
        h,
        [("ok", "ok", EVERYTHING), ("slow", "slow", RARE)],
        ["api", "dispatch", "dispatch"],
        {} if long else {"lease_seconds": 5},
    )
    victim = h.dispatch_processes()[0]

    async def kill() -> float:
        window = Window("dispatcher killed", time.time())
        h.windows.append(window)
        victim.kill9()
        victim.start()
        assert h.http is not None
        await victim.ready(h.http)
        window.end = time.time()
        return window.end

    production_end, disruption_end = await load(h, sz, kill)
    return await conclude(
        h,
        started=started,
        production_end=production_end,
        disruption_end=disruption_end,
        drain=max(sz.drain, lease_drain(60 if long else 5)),
    )


async def api_kill9(h: Harness, long: bool) -> Report:
    """kill -9 of the API process mid-load, restarted after a moment; producers retry
    what was not acknowledged (Outpost requests with the same id)."""
    started = time.time()
    sz = size(long, down=10 if long else 1)
    await setup(h, [("ok", "ok", EVERYTHING)], ["api", "dispatch"])
    api = h.api_processes()[0]

    async def kill() -> float:
        window = Window("api down", time.time())
        h.windows.append(window)
        api.kill9()
        await asyncio.sleep(sz.down)
        api.start()
        assert h.http is not None
        await api.ready(h.http)
        window.end = time.time()
        return window.end

    production_end, disruption_end = await load(h, sz, kill)
    report = await conclude(
        h,
        started=started,
        production_end=production_end,
        disruption_end=disruption_end,
        drain=sz.drain,
    )
    cut = sum(1 for p in h.producers for a in p.answers if a.status is None)
    report.notes.append(f"publish tries unanswered while the API was down (retried): {cut}")
    return report


async def three_dispatchers(h: Harness, long: bool) -> Report:
    """Three dispatcher processes share one API's load; every one of them takes part."""
    started = time.time()
    sz = size(long)
    await setup(
        h,
        [("ok", "ok", EVERYTHING), ("slow", "slow", RARE)],
        ["api", "dispatch", "dispatch", "dispatch"],
    )
    production_end, _ = await load(h, sz)
    report = await conclude(h, started=started, production_end=production_end, drain=sz.drain)
    shares = {p.name: p.stats().get("delivered", 0) for p in h.dispatch_processes()}
    report.notes.append(f"delivered by each dispatcher: {shares}")
    idle = [name for name, n in shares.items() if n == 0]
    if idle:
        report.violations.append(f"dispatchers that delivered nothing: {idle} ({shares})")
    return report


# --- PostgreSQL stopped ----------------------------------------------------------------


async def _database_stop(h: Harness, long: bool, mode: str) -> Report:
    """Three outages (fast: 2 s each; long: 20 s, then 3 s twice), 2-4 s apart, each
    under a burst of publishes as the server goes down. Fast: ``lease_seconds = 10``: a
    claim whose acknowledgement the crash lost is released when its lease runs out, and
    the default 60 s would make the test wait over a minute; long: the default lease."""
    started = time.time()
    sz = size(long, seconds=60 if long else 16)
    outages = [20.0, 3.0, 3.0] if long else [2.0, 2.0, 2.0]
    between = 4.0 if long else 2.0
    lease = 60.0 if long else 10.0
    await setup(
        h,
        [("ok", "ok", EVERYTHING), ("slow", "slow", RARE)],
        ["serve"],
        {} if long else {"lease_seconds": lease},
    )

    async def outage(down: float) -> float:
        # A burst of publishes as the server goes down, so that requests meet its
        # connections in every state of their closing.
        assert h.http is not None
        burst = h.producer("outpost", 300)
        bursting = asyncio.create_task(burst.run(h.http, 0.5, 30))
        await asyncio.sleep(0.2)
        window = Window("database down", time.time())
        h.windows.append(window)
        await h.pg_stop(mode)
        await asyncio.sleep(down)
        await h.pg_start()
        window.end = time.time()
        await bursting
        return window.end

    async def stops() -> float:
        ended = 0.0
        for n, down in enumerate(outages):
            if n:
                await asyncio.sleep(between)
            ended = await outage(down)
        return ended

    production_end, disruption_end = await load(h, sz, stops, at=0.2)
    return await conclude(
        h,
        started=started,
        production_end=production_end,
        disruption_end=disruption_end,
        drain=max(sz.drain, lease_drain(lease)),
    )


async def postgres_sessions_killed(h: Harness, long: bool) -> Report:
    """Every relay session terminated (``pg_terminate_backend``, as a pooler, a failover
    or an operator does) ten times a second for a while under load; the server stays
    up. Requests that lose their connection are answered 503 with Retry-After, never
    500, and relay reconnects. Fast: ``lease_seconds = 10`` (as for the stops)."""
    started = time.time()
    sz = size(long, seconds=40, rate=40) if long else size(long, seconds=12, rate=30)
    lease = 60.0 if long else 10.0
    await setup(
        h,
        [("ok", "ok", EVERYTHING), ("slow", "slow", RARE)],
        ["serve"],
        {} if long else {"lease_seconds": lease},
    )

    async def terminate() -> float:
        window = Window("sessions terminated", time.time())
        h.windows.append(window)
        conn = await asyncpg.connect(h.database_url, timeout=10)
        killed = 0
        try:
            while time.time() - window.start < (20 if long else 5):
                killed += await conn.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        window.end = time.time()
        h.notes.append(f"sessions terminated: {killed}")
        return window.end

    production_end, disruption_end = await load(h, sz, terminate, at=0.25)
    return await conclude(
        h,
        started=started,
        production_end=production_end,
        disruption_end=disruption_end,
        drain=max(sz.drain, lease_drain(lease)),
    )


async def postgres_fast_stop(h: Harness, long: bool) -> Report:
    """PostgreSQL stopped with ``pg_ctl -m fast`` under load (sessions are terminated),
    down a while, started again; `relay serve` answers 503 meanwhile and carries on."""
    return await _database_stop(h, long, "fast")


async def postgres_immediate_stop(h: Harness, long: bool) -> Report:
    """PostgreSQL crashed (``pg_ctl -m immediate``: no clean shutdown, recovery at start)
    under load, down a while, started again."""
    return await _database_stop(h, long, "immediate")


# --- destinations that misbehave -----------------------------------------------------


async def bad_destinations(h: Harness, long: bool) -> Report:
    """Destinations that answer 500, hang, are slow, or fail now and then, alongside a
    healthy one, in one `relay serve`. The healthy one keeps being delivered promptly;
    the failing ones are retried and every try recorded. Fast: a retry schedule of 1 s
    and 2 s (``retry.base_seconds = 1``, ``max_retries = 2``), since the default's first
    retry comes after 30 s; long: the default schedule."""
    started = time.time()
    sz = size(long)
    retry = {} if long else {"retry": {"base_seconds": 1.0, "max_retries": 2}}
    first_retry = 30.0 if long else 1.0
    await setup(
        h,
        [
            ("ok", "ok", EVERYTHING),
            ("slow", "slow", RARE),
            ("flaky", "flaky", EVERYTHING),
            ("failing", "failing", RARE),
            ("hanging", "hanging", RARE),
        ],
        ["serve"],
        retry,
    )
    production_end, _ = await load(h, sz)
    # Long: flaky events wait out the default first retry (30 s).
    report = await conclude(
        h, started=started, production_end=production_end, drain=sz.drain + first_retry
    )

    # The healthy destination, promptly: acknowledgement to arrival.
    ok = next(r for r in h.receivers if r.name == "ok")
    latencies = sorted(
        max(0.0, ok.first_ok[e.event_id] - e.acked_at)
        for e in h.acked().values()
        if e.event_id in ok.first_ok
    )
    if latencies:
        p95 = latencies[int(len(latencies) * 0.95)]
        report.notes.append(
            f"ok destination latency: median {statistics.median(latencies):.3f}s "
            f"p95 {p95:.3f}s max {latencies[-1]:.3f}s"
        )
        if p95 > 1.0 or latencies[-1] > 5.0:
            report.violations.append(
                f"the healthy destination was not delivered promptly next to failing ones: "
                f"p95 {p95:.2f}s (bound 1 s), max {latencies[-1]:.2f}s (bound 5 s)"
            )
    report.violations += await _retried_and_recorded(h, first_retry)
    return report


async def _retried_and_recorded(h: Harness, first_retry: float) -> list[str]:
    """Failing and hanging destinations: every try is an attempt row with its cause, and
    a failed delivery is tried again once its retry falls due."""
    problems: list[str] = []
    rare = {e.event_id for e in h.acked().values() if e.topic.split("#")[0] in RARE}
    conn = await asyncpg.connect(h.database_url, timeout=30)
    try:
        rows = await conn.fetch(
            """
            SELECT d.destination_id, e.id AS event_id, d.status,
                   array_agg(a.number ORDER BY a.id) FILTER (WHERE a.id IS NOT NULL) AS numbers,
                   array_agg(coalesce(a.error_code, 'http_' || a.http_status, a.status)
                             ORDER BY a.id) FILTER (WHERE a.id IS NOT NULL) AS outcomes,
                   array_agg(a.duration_ms ORDER BY a.id) FILTER (WHERE a.id IS NOT NULL)
                       AS durations,
                   extract(epoch FROM min(a.started_at))::float8 AS first_try
            FROM relay.deliveries d JOIN relay.events e ON e.seq = d.event_seq
            LEFT JOIN relay.attempts a ON a.delivery_id = d.id
            WHERE d.destination_id IN ('failing', 'hanging')
            GROUP BY d.destination_id, e.id, d.status
            """
        )
        hanging_throttle = await conn.fetchrow(
            "SELECT throttle, throttle_reason FROM relay.destinations WHERE id = 'hanging'"
        )
    finally:
        await conn.close()
    # A delivery first tried this long before relay stopped must have been tried again.
    due_by = {"failing": first_retry * 1.1 + 5, "hanging": 5 + first_retry * 1.1 + 5}
    for dest in ("failing", "hanging"):
        mine = [r for r in rows if r["destination_id"] == dest and r["event_id"] in rare]
        routed = {r["event_id"] for r in mine}
        if routed != rare:
            problems.append(f"{dest}: {len(rare - routed)} rare events have no delivery row")
        expected_code = "http_500" if dest == "failing" else "timeout"
        tried = [r for r in mine if r["numbers"]]
        wrong = [
            f"{r['event_id']}: {r['outcomes']}"
            for r in tried
            if any(o not in (expected_code, "lease_expired", "interrupted") for o in r["outcomes"])
        ]
        if wrong:
            problems.append(f"{dest}: attempts recorded with an unexpected outcome: {wrong[:3]}")
        if dest == "failing":
            untried = [r["event_id"] for r in mine if not r["numbers"]]
            if untried:
                problems.append(f"failing: {len(untried)} deliveries never tried: {untried[:3]}")
        else:
            timeouts = [
                d
                for r in tried
                for d, o in zip(r["durations"], r["outcomes"], strict=True)
                if o == "timeout"
            ]
            if not timeouts or min(timeouts) < 4500:
                problems.append(
                    f"hanging: timeouts should take the default 5 s; recorded: {timeouts[:5]}"
                )
        stale = [
            f"{r['event_id']} ({r['status']}, tries {r['numbers']})"
            for r in tried
            if len(r["numbers"]) < 2 and r["first_try"] < h.stopped_at - due_by[dest]
        ]
        if dest == "hanging":
            # Its retries queue behind first tries. Its timeouts slow it down (adaptive
            # backoff, issue 23: a cap of one in flight at its floor, each try 5 s), so a
            # retry may not come within the run: then it must have been slowed down, and
            # say why.
            slowed = hanging_throttle is not None and hanging_throttle["throttle"] < 1
            if tried and stale and all(len(r["numbers"]) < 2 for r in tried) and not slowed:
                problems.append(
                    f"hanging: no delivery was ever retried, nor the destination slowed "
                    f"down, e.g. {stale[:3]}"
                )
            if slowed and "did not answer in time" not in str(hanging_throttle):
                problems.append(f"hanging: slowed down for another reason: {hanging_throttle}")
        elif stale:
            problems.append(
                f"{dest}: {len(stale)} failed deliveries never retried though due "
                f"(first try over {due_by[dest]:.0f}s before relay stopped): {stale[:3]}"
            )
    return problems


# --- hostile clients -----------------------------------------------------------------


async def poison_inputs(h: Harness, long: bool) -> Report:
    """Poison requests on both publish APIs (tests/chaos/poison.py) interleaved with
    normal traffic: each poison request gets a 4xx JSON answer, never a 5xx; normal
    traffic is all delivered; every accepted event is readable through
    ``GET /api/v1/events/{id}`` and ``GET /api/v1/events?tenant_id=...``."""
    started = time.time()
    sz = size(long)
    await setup(h, [("ok", "ok", EVERYTHING)], ["api", "dispatch"])
    catalogue = poisons.catalogue() * (3 if long else 1)
    results: list[poisons.PoisonResult] = []

    async def send_all() -> None:
        gap = sz.seconds / (len(catalogue) + 1)
        tasks = []
        for n, poison in enumerate(catalogue):
            await asyncio.sleep(gap)
            event_id = f"{h.name}-poison-{n:03d}"
            tasks.append(asyncio.create_task(poisons.send(h.port, poison, event_id)))
        results.extend(await asyncio.gather(*tasks))

    sender = asyncio.create_task(send_all())
    production_end, _ = await load(h, sz)
    await sender

    violations: list[str] = []
    extra: dict[str, Published] = {}
    for result in results:
        violations += poisons.problems(result)
        if result.poison.expect == "no-5xx":
            topic = TOPIC if result.poison.api == "outpost" else POD_TOPIC
            for event_id in result.accepted_ids:
                extra[event_id] = Published(event_id, topic, result.at, "poison")
    answered = sorted(
        {f"{r.poison.name} -> {r.status}" for r in results}, key=lambda s: s.split(" -> ")[0]
    )
    notes = ["poison answers: " + "; ".join(answered)]
    readable = sorted(set(h.acked()) | set(extra))

    async def live() -> list[str]:
        return await _readable(h, readable)

    return await conclude(
        h,
        started=started,
        production_end=production_end,
        drain=sz.drain,
        extra_acked=extra,
        live=live,
        violations=violations,
        notes=notes,
    )


async def _readable(h: Harness, event_ids: list[str]) -> list[str]:
    """Every accepted event answers 200 on GET /api/v1/events/{id}, and every page of
    GET /api/v1/events?tenant_id=... answers 200."""
    http = h.http
    assert http is not None
    headers = {"Authorization": "Bearer " + poisons.ADMIN_KEY}
    failures: list[str] = []
    semaphore = asyncio.Semaphore(8)

    async def one(event_id: str) -> None:
        async with (
            semaphore,
            http.get(
                f"{h.base_url}/api/v1/events/{event_id}",
                params={"tenant_id": TENANT},
                headers=headers,
            ) as resp,
        ):
            if resp.status != 200:
                failures.append(f"GET /api/v1/events/{event_id} -> {resp.status}")

    await asyncio.gather(*(one(e) for e in event_ids))
    problems = []
    if failures:
        problems.append(f"{len(failures)} accepted events not readable: {failures[:3]}")
    cursor: str | None = None
    pages = 0
    while True:
        params = {"tenant_id": TENANT, "limit": "1000"} | ({"next": cursor} if cursor else {})
        async with http.get(f"{h.base_url}/api/v1/events", params=params, headers=headers) as resp:
            pages += 1
            if resp.status != 200:
                body = (await resp.text())[:200]
                problems.append(f"GET /api/v1/events page {pages} -> {resp.status} {body}")
                break
            cursor = (await resp.json())["pagination"]["next"]
        if not cursor:
            break
    return problems


# A request whose headers or body trickle in must not hold its connection forever:
# relay ends it (closes it, or answers 408) once server.header_timeout_seconds (default
# 75 s, counted from the connection's opening) or server.body_timeout_seconds (default
# 30 s) has passed. The check allows this much on top.
SLOW_CLIENT_SLACK = 5.0


async def slow_clients(h: Harness, long: bool) -> Report:
    """Over a hundred connections trickle their headers or their body one byte every
    2 s while `relay serve` serves normal traffic. Normal requests keep being answered
    promptly, and relay ends every trickling connection when its header or body timeout
    runs out. Fast: ``server.header_timeout_seconds = 10`` and ``body_timeout_seconds =
    10`` (the defaults, 75 s and 30 s, would make the test wait well over a minute);
    long: the defaults, 400 connections."""
    started = time.time()
    timeouts = {"headers": 75.0, "body": 30.0} if long else {"headers": 10.0, "body": 10.0}
    server = (
        {}
        if long
        else {
            "header_timeout_seconds": timeouts["headers"],
            "body_timeout_seconds": timeouts["body"],
        }
    )
    trickle = max(timeouts.values()) + SLOW_CLIENT_SLACK + 5
    sz = size(long, seconds=trickle + 5, rate=20) if long else size(long, seconds=trickle, rate=10)
    count = 400 if long else 120
    await setup(h, [("ok", "ok", EVERYTHING)], ["serve"], server=server)
    clients = [SlowClient(i, "headers" if i % 2 else "body") for i in range(count)]
    until = time.time() + 2 + trickle

    async def trickling() -> None:
        await asyncio.sleep(2)
        await asyncio.gather(*(c.run(h.port, 2.0, until) for c in clients))

    slow = asyncio.create_task(trickling())
    production_end, _ = await load(h, sz)
    await slow

    violations = []
    notes = []
    lingering = [
        c
        for c in clients
        if c.ended_at is None or c.ended_at - c.opened_at > timeouts[c.mode] + SLOW_CLIENT_SLACK
    ]
    hows = Counter(f"{c.mode} {c.how}" for c in clients if c.how)
    lasted = {
        mode: max(
            (c.ended_at - c.opened_at for c in clients if c.mode == mode and c.ended_at),
            default=None,
        )
        for mode in timeouts
    }
    notes.append(
        f"slow connections ended by the server: {count - len(lingering)}/{count} "
        f"{dict(hows)}; longest: "
        + ", ".join(f"{m} {'-' if t is None else f'{t:.1f}s'}" for m, t in lasted.items())
    )
    if lingering:
        modes = {m: sum(1 for c in lingering if c.mode == m) for m in timeouts}
        violations.append(
            f"{len(lingering)} of {count} trickling connections outlived relay's header/body "
            f"timeouts ({timeouts}) by over {SLOW_CLIENT_SLACK:.0f}s: {modes}"
        )
    waits = sorted(e.acked_at - e.sent_at for e in h.acked().values())
    if waits:
        p99 = waits[int(len(waits) * 0.99)]
        notes.append(f"publish latency: median {statistics.median(waits):.3f}s p99 {p99:.3f}s")
        if p99 > 1.0:
            violations.append(f"normal publishes slowed by slow clients: p99 {p99:.2f}s")
    return await conclude(
        h,
        started=started,
        production_end=production_end,
        drain=sz.drain,
        violations=violations,
        notes=notes,
    )


SCENARIOS: dict[str, Callable[[Harness, bool], Awaitable[Report]]] = {
    "dispatcher_kill9": dispatcher_kill9,
    "api_kill9": api_kill9,
    "three_dispatchers": three_dispatchers,
    "postgres_fast_stop": postgres_fast_stop,
    "postgres_immediate_stop": postgres_immediate_stop,
    "postgres_sessions_killed": postgres_sessions_killed,
    "bad_destinations": bad_destinations,
    "poison_inputs": poison_inputs,
    "slow_clients": slow_clients,
}


async def run(name: str, *, long: bool, workdir: Path) -> Report:
    """One scenario from start to end, in a Harness of its own (PostgreSQL included)."""
    async with Harness(name, workdir) as h:
        return await SCENARIOS[name](h, long)
