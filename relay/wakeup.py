"""Waking the dispatchers after group commits, with at most one NOTIFY in flight.

A transaction that NOTIFYs takes a database-wide lock at commit and holds it until its
commit record is flushed (PostgreSQL keeps the notification queue in commit order). Had
every group's write notified, the group-commit writers of every relay process would
commit one at a time, each waiting out the others' flushes. So the writers commit
without notifying and poke a Waker instead; it sends one NOTIFY of its own for all the
commits that poked it since its last one.

The notification still follows the commit it announces, so a woken dispatcher finds the
rows. It is only a hint: should it be lost (a crash between the commit and the NOTIFY,
a failed connection), dispatchers find the rows at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from relay.db.publishing import NOTIFY

log = logging.getLogger(__name__)


class Waker:
    def __init__(self, pool: asyncpg.Pool, *, pause_seconds: float = 0.002) -> None:
        self._pool = pool
        # After each NOTIFY: under load, commits arrive far faster than dispatchers need
        # waking, and each NOTIFY is a commit of its own. At light load, pokes come further
        # apart than this, so a wake-up is never delayed.
        self._pause = pause_seconds
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # NOTIFYs sent (tests, and how well pokes coalesce).
        self.sent = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        """Outbox rows were committed: wake the dispatchers soon."""
        self._poked.set()

    async def _run(self) -> None:
        while True:
            await self._poked.wait()
            self._poked.clear()
            try:
                await self._pool.execute(NOTIFY)
                self.sent += 1
            except Exception as exc:
                # The dispatchers' polling finds the rows; the next poke tries again.
                log.warning("could not wake the dispatchers (%s); they will poll", exc)
            await asyncio.sleep(self._pause)
