"""relay vacuums the hot table itself (relay/hot_table.py), on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from relay import hot_table
from relay.db.engine import create_engine


def test_a_vacuum_is_due_past_twenty_thousand_dead_rows_or_a_fifth_of_the_live() -> None:
    assert not hot_table.needs_vacuum(19_999, 0)
    assert hot_table.needs_vacuum(20_000, 1_000)
    assert not hot_table.needs_vacuum(150_000, 1_000_000)
    assert hot_table.needs_vacuum(200_000, 1_000_000)


async def dead_rows(db: Any) -> int:
    return await db.fetchval(
        "SELECT n_dead_tup FROM pg_stat_user_tables "
        "WHERE relid = 'relay.deliveries_active'::regclass"
    )


async def test_dead_rows_of_the_hot_table_are_vacuumed_away(database_url: str, db: Any) -> None:
    # Deliveries that came and went, as claims and records leave them.
    await db.execute(
        "INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id) "
        "SELECT g, 't', 'd' FROM generate_series(1, 30000) g"
    )
    await db.execute("DELETE FROM relay.deliveries_active")
    await db.execute("SELECT pg_stat_force_next_flush()")
    engine = create_engine(database_url, pool_size=1)
    try:
        async with asyncio.timeout(10):
            while await dead_rows(db) < 30_000:
                await asyncio.sleep(0.1)
        assert await hot_table.vacuum_once(engine) is True
        async with asyncio.timeout(10):
            while await dead_rows(db):
                await asyncio.sleep(0.1)
        # Nothing left to do: no vacuum.
        assert await hot_table.vacuum_once(engine) is False
    finally:
        await engine.dispose()
