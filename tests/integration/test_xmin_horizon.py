"""The xmin horizon: who holds it, in /metrics, /healthz, `relay stats` and the log.

These run on a PostgreSQL server of their own (tests/support/pgserver.py): the horizon
is server-wide, and on a shared server another client's long transaction could be the
oldest holder instead of the test's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from relay import horizon
from relay.app import create_app
from relay.db.engine import create_engine
from relay.horizon import HorizonWatch
from tests.integration.test_metrics import scrape
from tests.support.pgserver import PgServer
from tests.support.relay import make_settings

pytestmark = pytest.mark.slow

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """Prepared transactions and logical slots allowed (both off by default)."""
    with PgServer() as server:

        async def configure() -> None:
            conn = await asyncpg.connect(server.url(), timeout=10)
            try:
                await conn.execute("ALTER SYSTEM SET max_prepared_transactions = 4")
                await conn.execute("ALTER SYSTEM SET wal_level = logical")
            finally:
                await conn.close()

        asyncio.run(configure())
        server.stop()
        server.start()
        yield server


@pytest.fixture
async def relay(pg: PgServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestServer]:
    """A relay (API and dispatcher) warning at 1 s, sampling ten times a second."""
    monkeypatch.setattr(horizon, "SAMPLE_SECONDS", 0.1)
    settings = make_settings(pg.url(), database={"xmin_horizon_warning_seconds": 1})
    server = TestServer(create_app(settings, pg.url()), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def healthz(http: Any, server: TestServer) -> dict[str, Any]:
    async with http.get(server.make_url("/healthz")) as resp:
        assert resp.status == 200  # a warning never fails the check
        body: dict[str, Any] = await resp.json()
    assert body["status"] == "healthy"
    return body


def relay_stats(url: str, tmp_path: Path) -> str:
    config = tmp_path / "stats.toml"
    config.write_text("")
    env = {
        **os.environ,
        "RELAY_CONFIG": str(config),
        "RELAY_DATABASE_URL": url,
        "RELAY_XMIN_HORIZON_WARNING_SECONDS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "relay", "stats"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_a_held_snapshot_is_reported_with_its_holder_until_it_ends(
    pg: PgServer, relay: TestServer, http: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="relay.horizon")
    assert (await healthz(http, relay))["warnings"] == []

    # An analyst's session: REPEATABLE READ, one query, then left idle in the transaction.
    analyst = await asyncpg.connect(
        pg.url(), server_settings={"application_name": "analytics-notebook"}
    )
    pid = analyst.get_server_pid()
    transaction = analyst.transaction(isolation="repeatable_read")
    await transaction.start()
    await analyst.fetchval("SELECT 1")
    try:
        async with asyncio.timeout(15):
            while not (warnings := (await healthz(http, relay))["warnings"]):
                await asyncio.sleep(0.1)
        [warning] = warnings
        assert warning["code"] == "xmin_horizon"
        assert warning["kind"] == "session"
        assert warning["pid"] == pid
        assert warning["application_name"] == "analytics-notebook"
        assert warning["age_seconds"] >= 1
        assert f"pid {pid}" in warning["message"]
        assert "SELECT 1" not in str(warning)  # anyone may read /healthz: no query text

        metrics = await scrape(http, relay)
        assert metrics[("relay_xmin_horizon_age_seconds", (("kind", "session"),))] > 1
        assert metrics[("relay_xmin_horizon_age_seconds", (("kind", "prepared_transaction"),))] == 0
        assert ("relay_xmin_horizon_age_xids", (("kind", "session"),)) in metrics

        shown = await asyncio.to_thread(relay_stats, pg.url(), tmp_path)
        section = shown.partition("xmin horizon")[2].partition("destinations\n")[0]
        first = section.splitlines()[2].split()
        assert first[:1] == ["session"] and str(pid) in first and "analytics-notebook" in first
        assert "idle in transaction" in section
        assert f"SELECT pg_terminate_backend({pid})" in section

        # docs/operations.md's query for psql finds it too.
        [query] = re.findall(
            r"```sql\n(-- name: horizon_holders\n.*?)```", OPERATIONS.read_text(), re.S
        )
        reader = await asyncpg.connect(pg.url())
        try:
            [first_row, *_] = await reader.fetch(query)
        finally:
            await reader.close()
        assert (first_row["pid"], first_row["application_name"]) == (pid, "analytics-notebook")

        await asyncio.sleep(0.5)  # several more samples, all above the threshold
    finally:
        await transaction.rollback()
        await analyst.close()

    async with asyncio.timeout(15):
        while (await healthz(http, relay))["warnings"]:
            await asyncio.sleep(0.1)
    metrics = await scrape(http, relay)
    assert metrics[("relay_xmin_horizon_age_seconds", (("kind", "session"),))] < 1
    logged = [r.getMessage() for r in caplog.records if r.name == "relay.horizon"]
    crossed = [m for m in logged if "held by" in m]
    assert len(crossed) == 1, logged  # once per crossing, not once per sample
    assert f"session pid {pid} (application_name 'analytics-notebook')" in crossed[0]
    assert f"pg_terminate_backend({pid})" in crossed[0]
    assert any("back under" in m for m in logged)


async def test_prepared_transactions_and_replication_slots_hold_it_too(pg: PgServer) -> None:
    engine = create_engine(pg.url(), pool_size=1)
    conn = await asyncpg.connect(pg.url())
    watch = HorizonWatch(engine, warn_after=0.5)
    try:
        # A two-phase commit left halfway: no session, only its transaction id.
        await conn.execute("BEGIN; SELECT pg_current_xact_id(); PREPARE TRANSACTION 'forgotten'")
        await asyncio.sleep(0.6)
        [oldest, *_] = await watch.sample()
        assert (oldest.kind, oldest.name, oldest.pid) == ("prepared_transaction", "forgotten", None)
        assert oldest.age_seconds is not None and oldest.age_seconds > 0.5
        assert watch.warning == oldest
        assert watch.health_warnings()[0]["gid"] == "forgotten"
        await conn.execute("ROLLBACK PREPARED 'forgotten'")
        holders = await watch.sample()
        assert all(h.kind != "prepared_transaction" for h in holders)
        assert watch.warning is None

        # A logical slot nobody reads holds the catalogs' horizon. PostgreSQL gives it no
        # time: its age counts from when the watch first saw it.
        await conn.execute("SELECT pg_create_logical_replication_slot('stuck', 'pgoutput')")
        try:
            first = next(h for h in await watch.sample() if h.kind == "replication_slot")
            assert first.name == "stuck" and first.state == "logical inactive catalog_xmin"
            await asyncio.sleep(0.3)
            later = next(h for h in await watch.sample() if h.kind == "replication_slot")
            assert later.age_seconds is not None and first.age_seconds is not None
            assert later.age_seconds >= first.age_seconds + 0.3
        finally:
            await conn.execute("SELECT pg_drop_replication_slot('stuck')")
    finally:
        await conn.close()
        await engine.dispose()
