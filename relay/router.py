"""The router: routes the events the ``relay.publish()`` SQL function wrote.

The SQL function stores an event unrouted (``routed_at`` NULL) and notifies
``relay_route`` on commit. The router claims unrouted events (``FOR UPDATE SKIP LOCKED``,
so any number of relay processes may run it), routes each with ``relay.publish``'s
``route_event`` (the same rules as HTTP and Python publishes, destination filters
included), writes their outbox rows and marks them routed, in one transaction whose
commit wakes the dispatchers. A missed notification costs at most one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import orjson

from relay.db import publishing, slices
from relay.db.engine import connect_raw, is_connection_failure
from relay.publish import route_event
from relay.supervise import Loop, Supervisor

log = logging.getLogger(__name__)


async def route_pending(conn: asyncpg.Connection, limit: int = 500) -> int:
    """Route up to ``limit`` unrouted events in one transaction; how many were taken."""
    async with conn.transaction():
        # Routing makes deliveries active: an event whose slice of history is closing
        # must be kept (relay/db/slices.py).
        await slices.revive(conn)
        events = await publishing.claim_unrouted(conn, limit)
        if not events:
            return 0
        await slices.keep_revived(conn, [e.seq for e in events])
        routes = await publishing.tenant_routes(conn, sorted({e.tenant_id for e in events}))
        tenants = routes.tenants
        rows: list[tuple[int, str, str, str | None]] = []
        for e in events:
            destinations = tenants.get(e.tenant_id)
            if destinations is None:
                # Deleted since it was published: nowhere to deliver, the event stays.
                continue
            try:
                metadata = orjson.loads(e.metadata)
                chosen = route_event(
                    destinations, e.id, e.topic, e.destination_id, metadata, e.data, e.time
                )
            except Exception:
                # One event must not block the queue behind it; it stays, undelivered.
                log.exception("could not route event %s of tenant %s", e.id, e.tenant_id)
                continue
            keys = {d.id: d.key_of(metadata) for d in destinations if d.ordering_key}
            rows += [(e.seq, e.tenant_id, d, keys.get(d)) for d in chosen]
        await publishing.insert_deliveries(conn, sorted(rows, key=lambda r: (r[1], r[2])))
        await publishing.mark_routed(conn, [e.seq for e in events])
    return len(events)


class Router:
    def __init__(self, database_url: str, *, poll_interval: float, batch: int = 500) -> None:
        self._url = database_url
        self._poll_interval = poll_interval
        self._batch = batch
        self._wake = asyncio.Event()
        self.supervisor = Supervisor("router")
        self.routed = 0

    async def start(self) -> None:
        self.supervisor.start("route", self._run, stall_after=self._poll_interval * 5 + 30)

    async def stop(self) -> None:
        await self.supervisor.stop()

    async def _run(self, loop: Loop) -> None:
        """Hold one connection (LISTEN, and the routing transactions); reconnect on loss."""
        while True:
            conn = None
            try:
                conn = await connect_raw(self._url)
                await conn.add_listener(publishing.ROUTE_CHANNEL, lambda *_: self._wake.set())
                while True:
                    self._wake.clear()
                    while (taken := await route_pending(conn, self._batch)) > 0:
                        self.routed += taken
                        loop.beat()
                    loop.beat()
                    with contextlib.suppress(TimeoutError), loop.idle():
                        await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_connection_failure(exc):
                    raise  # not the database going away: the supervisor logs it
                log.info("router connection lost (%s); reconnecting", type(exc).__name__)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), timeout=2)
            await asyncio.sleep(self._poll_interval)
