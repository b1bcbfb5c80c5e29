"""The migrations and the declared tables (relay/db/tables.py) never drift apart."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from relay.db import migrate
from relay.db.engine import create_engine
from relay.db.tables import SCHEMA, metadata


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    return name == SCHEMA if type_ == "schema" else True


def _same_text_is_same_default(
    context: Any, inspected: Any, declared: Any, inspected_default: Any, _: Any, rendered: Any
) -> bool | None:
    """Equal text is an equal default. (alembic otherwise asks the database whether both
    give the same value, and two nextval() calls never do.)"""
    return False if inspected_default == rendered else None


def _not_a_partition(partitions: set[str]) -> Any:
    """The partitions of the history tables are made by the migration and at run time
    (relay.create_slice), not declared: the comparison covers their parents."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return not (type_ == "table" and name in partitions)

    return include


async def test_upgraded_database_matches_declared_tables(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            partitions = set(
                (
                    await conn.execute(
                        text(
                            "SELECT c.relname FROM pg_class c "
                            "WHERE c.relnamespace = 'relay'::regnamespace AND c.relispartition"
                        )
                    )
                ).scalars()
            )

            def diff(sync: Any) -> list[Any]:
                context = MigrationContext.configure(
                    sync,
                    opts={
                        "include_schemas": True,
                        "include_name": _include_name,
                        "include_object": _not_a_partition(partitions),
                        "version_table_schema": SCHEMA,
                        "compare_type": True,
                        "compare_server_default": _same_text_is_same_default,
                    },
                )
                return compare_metadata(context, metadata)

            differences = await conn.run_sync(diff)
            assert differences == []
            assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


async def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    from alembic import command

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(
                lambda sync: command.downgrade(migrate.alembic_config(sync), "base")
            )
            tables = await conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'relay'")
            )
            # Only alembic's own version table is left.
            assert tables.scalar_one() == 1
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


async def test_0009_api_destinations_follow_the_global_webhook_mode(database_url: str) -> None:
    from alembic import command

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(
                lambda sync: command.downgrade(migrate.alembic_config(sync), "0008")
            )
            await conn.execute(text("INSERT INTO relay.tenants (id) VALUES ('t')"))
            await conn.execute(
                text(
                    "INSERT INTO relay.destinations (tenant_id, id, topics, url, secret, origin,"
                    " signature_mode) VALUES"
                    " ('t', 'api', '{*}', 'https://x', 's', 'api', DEFAULT),"
                    " ('t', 'file', '{*}', 'https://x', 's', 'config', 'outpost')"
                )
            )
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, signature_mode FROM relay.destinations"))
            modes = {row.id: row.signature_mode for row in rows}
        # An API destination could not choose before: its 'standard' was the default.
        assert modes == {"api": None, "file": "outpost"}
    finally:
        await engine.dispose()
