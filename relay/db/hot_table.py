"""The hot table's SQL: how many dead rows relay.deliveries_active holds, and its VACUUM.

Every delivery is inserted into relay.deliveries_active, claimed (an update) and moved out
when it ends (a delete): some three dead row versions per delivery, thousands a second
at full speed, in a table of a few thousand live rows. Autovacuum looks at each database
once a minute (autovacuum_naptime) at best; meanwhile the dead versions pile up in the
claim's index, and every claim that starts from a destination's head (after a wake-up
that names none, or the sweep) walks them. relay vacuums it itself (relay/hot_table.py).
"""

from __future__ import annotations

import asyncpg

# One process at a time (a session lock: VACUUM runs outside any transaction).
TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('relay.hot_table.vacuum'))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('relay.hot_table.vacuum'))"

# The statistics' count (sent by each backend at most once a second): cheap to ask.
DEAD_AND_LIVE = """
    SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables
    WHERE relid = 'relay.deliveries_active'::regclass
"""

# SKIP_LOCKED: if autovacuum (or an operator) is at it already, this round is done.
VACUUM = "VACUUM (SKIP_LOCKED) relay.deliveries_active"


async def dead_and_live(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow(DEAD_AND_LIVE)
    return (0, 0) if row is None else (row["n_dead_tup"], row["n_live_tup"])


async def vacuum(conn: asyncpg.Connection) -> None:
    await conn.execute(VACUUM)
