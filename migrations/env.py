"""alembic environment: async engine, relay's schema, and relay's tables as the target."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from relay.db.tables import SCHEMA, metadata

config = context.config
target_metadata = metadata


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # Only relay's own schema: a shared database may hold the producer's tables too.
    if type_ == "schema":
        return name == SCHEMA
    return True


def _run(connection: Connection) -> None:
    # Several relay processes may start at once; one migrates, the others wait. The lock
    # is taken before CREATE SCHEMA, which itself races when run concurrently.
    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('relay.migrate'))"))
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=_include_name,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "relay.db.migrate sets sqlalchemy.url"
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("relay migrations run online only: use `relay migrate`")

connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_online())
