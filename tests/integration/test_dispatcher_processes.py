"""Real ``relay dispatch`` OS processes sharing one database: exactly-once delivery without
crashes, at-least-once across a ``kill -9``, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.db.engine import create_engine
from relay.publish import Event, publish
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.slow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, receiver: Receiver, destinations: list[str], **delivery: Any) -> Path:
    lines = [
        "[delivery]",
        'allow_private_networks = ["127.0.0.0/8"]',
        "poll_interval_seconds = 0.2",
    ]
    lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in delivery.items()]
    lines += ["", "[[tenants]]", 'id = "acme"']
    for name in destinations:
        lines += [
            "",
            "[[tenants.destinations]]",
            f'id = "{name}"',
            f'url = "{receiver.url("/" + name)}"',
            f'secret = "{SECRET}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dispatch:
    """One ``relay dispatch`` process, its output in a log file."""

    def __init__(
        self,
        name: str,
        config: Path,
        database_url: str,
        tmp: Path,
        *options: str,
        **env_overrides: str,
    ) -> None:
        self.name = name
        self.log_path = tmp / f"{name}.log"
        # Each dispatcher on this machine serves /healthz on a port of its own.
        self.health_port = free_port()
        env = (
            os.environ
            | {
                "RELAY_DATABASE_URL": database_url,
                "RELAY_HEALTH_PORT": str(self.health_port),
                "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp"),
            }
            | env_overrides
        )
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "relay",
                    "--config",
                    str(config),
                    "--log-level",
                    "INFO",
                    "dispatch",
                    *options,
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while "relay dispatch running" not in self.log:
                assert self.proc.poll() is None, f"{self.name} exited:\n{self.log}"
                await asyncio.sleep(0.05)

    async def exited(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            while self.proc.poll() is None:
                await asyncio.sleep(0.05)
        return self.proc.returncode

    def stats(self) -> dict[str, int]:
        match = re.search(r"dispatcher stopped: (.*)", self.log)
        assert match, f"{self.name} logged no stats:\n{self.log}"
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
async def dispatchers(database_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """``start(name, config)`` runs a dispatcher process; all are killed after the test."""
    started: list[Dispatch] = []

    async def start(name: str, config: Path, **env: str) -> Dispatch:
        process = Dispatch(name, config, database_url, tmp_path, **env)
        started.append(process)
        await process.ready()
        return process

    yield start
    for process in started:
        process.stop()


async def publish_many(database_url: str, count: int, *, per_transaction: int = 200) -> list[str]:
    """Publish ``count`` events the way the API does (event + outbox rows, one commit)."""
    engine = create_engine(database_url, pool_size=1)
    ids = [f"evt-{n:05d}" for n in range(count)]
    try:
        for start in range(0, count, per_transaction):
            async with engine.begin() as conn:
                for event_id in ids[start : start + per_transaction]:
                    data = orjson.dumps({"id": event_id})
                    await publish(conn, Event("acme", "order.created", data, id=event_id))
    finally:
        await engine.dispose()
    return ids


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)


def by_status(db: Any) -> Callable[[], Awaitable[dict[str, int]]]:
    async def fetch() -> dict[str, int]:
        rows = await db.fetch("SELECT status, count(*) FROM relay.deliveries GROUP BY status")
        return {r["status"]: r["count"] for r in rows}

    return fetch


async def test_three_dispatcher_processes_deliver_every_event_exactly_once(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    events, destinations = 2000, ["orders", "audit"]
    config = write_config(
        tmp_path / "relay.toml", receiver, destinations, batch_size=50, concurrency=32
    )
    processes = [await dispatchers(f"dispatch-{n}", config) for n in range(3)]

    # Publish while all three are polling and listening.
    ids = await publish_many(database_url, events)
    total = events * len(destinations)

    async def all_delivered() -> bool:
        return (await by_status(db)()).get("delivered", 0) == total

    await wait_until(all_delivered, timeout=90)
    await asyncio.sleep(0.5)  # anything late (a duplicate) would arrive now

    sent = Counter((r.path, r.headers["webhook-id"]) for r in receiver.requests)
    expected = {(f"/{d}", event_id) for d in destinations for event_id in ids}
    assert set(sent) == expected
    duplicates = {key: n for key, n in sent.items() if n > 1}
    assert duplicates == {}
    assert len(receiver.requests) == total
    # One attempt per delivery, each a success.
    rows = await db.fetch("SELECT number, status, count(*) FROM relay.attempts GROUP BY 1, 2")
    assert [tuple(r) for r in rows] == [(1, "success", total)]

    for process in processes:
        process.proc.send_signal(signal.SIGTERM)
    for process in processes:
        assert await process.exited(timeout=20) == 0, process.log
    shares = [p.stats()["delivered"] for p in processes]
    assert sum(shares) == total
    # All three took part (the claim's SKIP LOCKED shares the work out).
    assert all(share > 0 for share in shares), shares


async def test_kill_9_mid_flight_loses_nothing_and_attempt_rows_tell_the_story(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    # The first 30 requests are answered; the next 10 hang (in flight when A dies).
    hanging = range(30, 40)
    receiver.reply = lambda n, path: Reply(delay=60) if n in hanging else Reply()
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        ["orders"],
        concurrency=10,
        per_destination_concurrency=10,
        lease_seconds=2,
        timeout_seconds=30,
    )
    a = await dispatchers("dispatch-a", config)
    ids = await publish_many(database_url, 100)

    await receiver.wait_for(40, timeout=30)

    async def first_recorded() -> bool:
        return (await by_status(db)()).get("delivered", 0) == 30

    await wait_until(first_recorded, timeout=10)
    # A is alive: it keeps extending its leases, so nothing expires though the lease is 2 s.
    await asyncio.sleep(3)
    assert await db.fetchval("SELECT count(*) FROM relay.attempts WHERE status = 'failed'") == 0
    assert (await by_status(db)())["delivering"] == 10
    in_flight = {r.headers["webhook-id"] for r in receiver.requests[30:40]}

    a.proc.send_signal(signal.SIGKILL)
    assert await a.exited(timeout=10) == -signal.SIGKILL
    b = await dispatchers("dispatch-b", config)

    async def all_delivered() -> bool:
        return (await by_status(db)()).get("delivered", 0) == 100

    await wait_until(all_delivered, timeout=30)

    # Every event reached the receiver at least once; only the in-flight ones twice,
    # under the same webhook-id.
    sent = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert set(sent) == set(ids)
    assert {event_id for event_id, n in sent.items() if n > 1} == in_flight
    assert all(n <= 2 for n in sent.values())

    story = await db.fetch(
        """
        SELECT e.id, array_agg(a.number ORDER BY a.id) AS numbers,
               array_agg(coalesce(a.error_code, a.status) ORDER BY a.id) AS outcomes
        FROM relay.attempts a JOIN relay.events e ON e.seq = a.event_seq
        GROUP BY e.id
        """
    )
    told = {r["id"]: (list(r["numbers"]), list(r["outcomes"])) for r in story}
    assert len(told) == 100
    for event_id, (numbers, outcomes) in told.items():
        if event_id in in_flight:
            assert (numbers, outcomes) == ([1, 2], ["lease_expired", "success"])
        else:
            assert (numbers, outcomes) == ([1], ["success"])
    lost = await db.fetchrow(
        "SELECT * FROM relay.attempts WHERE error_code = 'lease_expired' LIMIT 1"
    )
    assert lost["status"] == "failed" and "may have reached the receiver" in lost["error_detail"]
    # The lost try is dated when A claimed it and lasted until the lease ran out.
    assert lost["duration_ms"] >= 2000

    b.proc.send_signal(signal.SIGTERM)
    assert await b.exited(timeout=20) == 0
    assert b.stats()["released_expired"] == 10


async def test_sigterm_finishes_in_flight_within_grace_and_exits_0(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    receiver.reply = lambda n, path: Reply(delay=1.0)
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        ["orders"],
        concurrency=5,
        shutdown_grace_seconds=5,
    )
    process = await dispatchers("dispatch", config)
    await publish_many(database_url, 20)
    await receiver.wait_for(5, timeout=15)

    process.proc.send_signal(signal.SIGTERM)
    assert await process.exited(timeout=15) == 0, process.log
    # The five in flight finished and were recorded; nothing else was claimed.
    assert len(receiver.requests) == 5
    assert await by_status(db)() == {"delivered": 5, "pending": 15}
    assert await db.fetchval("SELECT count(*) FROM relay.attempts") == 5
    stats = process.stats()
    assert (stats["delivered"], stats["released_on_stop"]) == (5, 0)


async def test_sigterm_past_the_grace_period_releases_what_is_in_flight(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    receiver.reply = lambda n, path: Reply(delay=30)
    config = write_config(
        tmp_path / "relay.toml",
        receiver,
        ["orders"],
        concurrency=5,
        shutdown_grace_seconds=0.5,
    )
    process = await dispatchers("dispatch", config)
    await publish_many(database_url, 20)
    await receiver.wait_for(5, timeout=15)

    process.proc.send_signal(signal.SIGTERM)
    assert await process.exited(timeout=10) == 0, process.log
    # The five requests reached the receiver, so each cut-short try is an attempt row:
    # failed, "interrupted", and its delivery pending again (attempt 1 spent).
    assert await by_status(db)() == {"pending": 20}
    attempts = await db.fetch(
        "SELECT a.number, a.status, a.error_code, a.http_status, a.duration_ms, "
        "d.attempts, d.last_error, d.claim_token, d.next_attempt_at <= now() AS due "
        "FROM relay.attempts a JOIN relay.deliveries d ON d.id = a.delivery_id"
    )
    assert len(attempts) == 5
    for row in attempts:
        assert (row["number"], row["status"], row["error_code"], row["http_status"]) == (
            1,
            "failed",
            "interrupted",
            None,
        )
        assert (row["attempts"], row["last_error"], row["claim_token"], row["due"]) == (
            1,
            "interrupted",
            None,
            True,
        )
        assert row["duration_ms"] >= 400  # from the claim until the grace period ran out
    assert process.stats()["released_on_stop"] == 5

    # The next dispatcher sends them again, as attempt 2, under the same webhook-id.
    receiver.reply = lambda n, path: Reply()
    again = await dispatchers("dispatch", config)

    async def all_delivered() -> bool:
        return (await by_status(db)()).get("delivered", 0) == 20

    await wait_until(all_delivered, timeout=30)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM relay.attempts WHERE number = 2 AND status = 'success'"
        )
        == 5
    )
    cut_short = {r.headers["webhook-id"] for r in receiver.requests[:5]}
    assert cut_short <= {r.headers["webhook-id"] for r in receiver.requests[5:]}
    again.proc.send_signal(signal.SIGTERM)
    assert await again.exited(timeout=15) == 0, again.log


async def test_an_event_committed_behind_the_cursor_is_delivered_at_once(
    dispatchers: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    # A producer publishes inside its own transaction (relay's Python API) and commits
    # seconds later. Its row is due from the transaction's start, so by its commit the
    # dispatcher's cursor on that destination is past it: events published and delivered
    # meanwhile moved it. The commit's NOTIFY names the destination and the row's time,
    # and moves the cursor back; without it the row would wait for the sweep (30 s).
    config = write_config(tmp_path / "relay.toml", receiver, ["orders"])
    await dispatchers("dispatch", config)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as late:
            await publish(late, Event("acme", "order.created", b"{}", id="evt-late"))
            await asyncio.sleep(0.5)
            ids = await publish_many(database_url, 20, per_transaction=1)
            await receiver.wait_for(20, timeout=15)
            assert {r.headers["webhook-id"] for r in receiver.requests} == set(ids)
        # Committed.
        await receiver.wait_for(21, timeout=10)
    finally:
        await engine.dispose()
    assert receiver.requests[-1].headers["webhook-id"] == "evt-late"
