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
