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

        await db.execute("DROP TRIGGER refuse ON relay.attempts")

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
