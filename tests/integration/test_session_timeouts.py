"""relay's sessions cannot idle in a transaction, and only its non-hot SQL gets a
statement timeout (relay/db/engine.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from relay.appkeys import ENGINE, PUBLISHER
from relay.db import engine as db_engine
from relay.db.engine import connect_raw, create_engine, is_connection_failure, statement_cancelled
from tests.support.relay import make_settings

SHOW = (
    "SELECT current_setting('statement_timeout'), "
    "current_setting('idle_in_transaction_session_timeout')"
)


async def test_every_kind_of_relay_connection_has_its_timeouts(
    start_relay: Any, database_url: str, db: asyncpg.Connection
) -> None:
    # Defaults on the database (as an operator might set them on relay's role) reach no
    # relay connection: each says what it wants, 0 included.
    name = make_url(database_url).database
    await db.execute(f'ALTER DATABASE "{name}" SET statement_timeout = 7000')
    await db.execute(f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout = 0')

    settings = make_settings(database_url, database={"statement_timeout_seconds": 12})
    server = await start_relay(settings)
    # The pool: API, lease upkeep, housekeeping, config sync.
    async with server.app[ENGINE].connect() as conn:
        assert tuple((await conn.execute(text(SHOW))).one()) == ("12s", "1min")
    # The publish writers' pool.
    pool = server.app[PUBLISHER]._pool
    assert pool is not None
    async with pool.acquire() as conn:
        assert tuple(await conn.fetchrow(SHOW)) == ("0", "1min")
    # The dispatcher's claim, recorder and LISTEN connections, and the router's.
    raw = await connect_raw(database_url, server_settings={"application_name": "x"})
    try:
        assert tuple(await raw.fetchrow(SHOW)) == ("0", "1min")
        assert await raw.fetchval("SHOW application_name") == "x"
    finally:
        await raw.close()
    # Migrations: no statement timeout.
    migrations = create_engine(database_url, pool_size=1, statement_timeout=0)
    try:
        async with migrations.connect() as conn:
            assert tuple((await conn.execute(text(SHOW))).one()) == ("0", "1min")
    finally:
        await migrations.dispose()


async def test_a_session_left_idle_in_a_transaction_is_ended_by_the_server(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_engine, "IDLE_IN_TRANSACTION_TIMEOUT", 0.3)
    engine = create_engine(database_url, pool_size=1)
    raw = await connect_raw(database_url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))  # autobegin: in a transaction from here
            await asyncio.sleep(1)
            with pytest.raises(Exception) as lost:
                await conn.execute(text("SELECT 1"))
            assert is_connection_failure(lost.value)
        transaction = raw.transaction()
        await transaction.start()
        await asyncio.sleep(1)
        with pytest.raises(Exception) as lost:
            await raw.fetchval("SELECT 1")
        assert is_connection_failure(lost.value)
        # The pool hands out a live connection again.
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await raw.close()
        await engine.dispose()


async def test_a_statement_past_the_timeout_is_cancelled_not_a_lost_connection(
    database_url: str,
) -> None:
    engine = create_engine(database_url, pool_size=1, statement_timeout=0.2)
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception) as cut:
                await conn.execute(text("SELECT pg_sleep(2)"))
        # The API answers it 503 (relay/api/errors.py); nothing treats it as a lost
        # connection (the dispatcher's connections have no statement timeout).
        assert statement_cancelled(cut.value)
        assert not is_connection_failure(cut.value)
    finally:
        await engine.dispose()


async def test_relay_psql_sessions_have_the_idle_timeout_too(
    database_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("")
    env = {**os.environ, "RELAY_CONFIG": str(config), "RELAY_DATABASE_URL": database_url}
    env.pop("PGOPTIONS", None)

    def psql_show() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "relay", "psql", "--", "-At", "-c", SHOW],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert await asyncio.to_thread(psql_show) == "0|1min"
    # The user's own PGOPTIONS come after relay's, so they win.
    env["PGOPTIONS"] = "-c idle_in_transaction_session_timeout=5min"
    assert await asyncio.to_thread(psql_show) == "0|5min"
