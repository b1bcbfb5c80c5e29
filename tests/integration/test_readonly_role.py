"""docs/readonly-role.sql: a role that reads the history views and nothing else."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from relay.db.engine import asyncpg_url
from relay.embedded import psql_path

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "readonly-role.sql"


async def run_script(database_url: str, *variables: str) -> None:
    psql = shutil.which("psql") or psql_path()
    args = [arg for variable in variables for arg in ("-v", variable)]
    result = await asyncio.to_thread(
        subprocess.run,
        [psql, asyncpg_url(database_url), *args, "-f", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


async def test_reader_sessions_get_statement_and_idle_timeouts(
    database_url: str, db: asyncpg.Connection
) -> None:
    group = f"reader_{uuid.uuid4().hex[:8]}"
    login, later = f"{group}_login", f"{group}_later"
    await run_script(database_url, f"role={group}")
    await db.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE "{group}"')
    # Role settings do not pass through membership: the login has none until the script
    # runs again, as its header says.
    await run_script(database_url, f"role={group}")
    await db.execute(f'CREATE ROLE "{later}" LOGIN IN ROLE "{group}"')
    await run_script(database_url, f"role={group}", "statement_timeout=5min")
    try:
        expected = {
            group: {"statement_timeout=5min", "idle_in_transaction_session_timeout=60s"},
            login: {"statement_timeout=5min", "idle_in_transaction_session_timeout=60s"},
            later: {"statement_timeout=5min", "idle_in_transaction_session_timeout=60s"},
        }
        settings = await db.fetch(
            "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s "
            "JOIN pg_roles r ON r.oid = s.setrole "
            "JOIN pg_database d ON d.oid = s.setdatabase AND d.datname = current_database() "
            "WHERE r.rolname LIKE $1",
            f"{group}%",
        )
        assert {row["rolname"]: set(row["setconfig"]) for row in settings} == expected
        url = make_url(asyncpg_url(database_url)).set(username=login)
        reader = await asyncpg.connect(url.render_as_string(hide_password=False))
        try:
            assert await reader.fetchval("SHOW statement_timeout") == "5min"
            assert await reader.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"
        finally:
            await reader.close()
    finally:
        for role in (later, login):
            await db.execute(f'DROP ROLE "{role}"')
        await db.execute(f'DROP OWNED BY "{group}"')
        await db.execute(f'DROP ROLE "{group}"')


async def test_reader_can_select_views_and_nothing_else(
    database_url: str, db: asyncpg.Connection
) -> None:
    group = f"reader_{uuid.uuid4().hex[:8]}"
    login = f"{group}_login"
    psql = shutil.which("psql") or psql_path()
    for _ in range(2):  # idempotent: a second run changes nothing and does not fail
        result = await asyncio.to_thread(
            subprocess.run,
            [psql, asyncpg_url(database_url), "-v", f"role={group}", "-f", str(SCRIPT)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
    await db.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE "{group}"')
    await db.execute(
        "INSERT INTO relay.tenants (id) VALUES ('t');"
        "INSERT INTO relay.destinations (tenant_id, id, topics, url, secret) "
        "VALUES ('t', 'd', '{*}', 'http://x', 'whsec_x')"
    )
    url = make_url(asyncpg_url(database_url)).set(username=login)
    reader = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        for view in ("delivery_log", "delivery_state", "destination_health", "outbox_backlog"):
            await reader.fetch(f"SELECT * FROM relay.{view}")
        assert (await reader.fetchrow("SELECT * FROM relay.destination_health"))[
            "url"
        ] == "http://x"
        for statement in (
            "SELECT * FROM relay.destinations",  # the secrets live here
            "SELECT * FROM relay.events",
            "INSERT INTO relay.tenants (id) VALUES ('x')",
            "UPDATE relay.deliveries SET status = 'pending'",
            "DELETE FROM relay.attempts",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(statement)
        with pytest.raises(asyncpg.PostgresError):
            await reader.execute("DELETE FROM relay.delivery_log")
    finally:
        await reader.close()
        await db.execute(f'DROP ROLE "{login}"')
        await db.execute(f'DROP OWNED BY "{group}"')
        await db.execute(f'DROP ROLE "{group}"')
