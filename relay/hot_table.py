"""Keeping the hot table small: relay vacuums relay.deliveries_active itself.

Autovacuum cannot keep a queue table clean at thousands of deliveries a second: it looks
at a database once a minute at most, and by then a minute of claimed and finished rows
lies dead in the claim's index (a one-hour soak at 2,000 deliveries/s saw up to 260,000
dead rows between its passes, claims that read from a destination's head slowed to
10 ms, and the dispatcher fell behind for good). Every relay process runs ``vacuum_loop``
(one at a time does the work): every few seconds it asks the statistics how many dead
rows the table holds and vacuums it once they pass ``needs_vacuum``'s threshold. A
snapshot held elsewhere still keeps what it can see (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from relay.db import hot_table as db
from relay.db.slices import raw
from relay.supervise import Loop

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0
# Vacuum once the dead rows pass this many, or a fifth of the live ones if more: a vacuum
# of the hot table reads all of it, so a large backlog is not vacuumed for a few dead rows.
MIN_DEAD = 20_000
DEAD_SHARE = 0.2


def needs_vacuum(dead: int, live: int) -> bool:
    return dead >= max(MIN_DEAD, DEAD_SHARE * live)


async def vacuum_once(engine: AsyncEngine) -> bool | None:
    """Vacuum if it is due; None if another process holds the turn."""
    async with engine.connect() as wrapper:
        conn = await raw(wrapper)
        if not await conn.fetchval(db.TRY_LOCK):
            return None
        try:
            dead, live = await db.dead_and_live(conn)
            if not needs_vacuum(dead, live):
                return False
            await db.vacuum(conn)
            return True
        finally:
            await conn.fetchval(db.UNLOCK)


async def vacuum_loop(engine: AsyncEngine, loop: Loop, interval: float = CHECK_SECONDS) -> None:
    while True:
        try:
            await vacuum_once(engine)
            loop.beat()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("vacuum of the hot table failed: %s", exc)
        with loop.idle():
            await asyncio.sleep(interval)
