"""GET /metrics: Prometheus text format. Not authenticated, like most exporters: expose
relay's port only where your scraper can reach it.

The database gauges (relay/metrics.py, BacklogCollector) cost a query; it runs at most
once per ``metrics.database_cache_seconds`` (5 s by default) however many scrapers ask,
and concurrent scrapes share it. Everything else is this process's own counters."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from relay.appkeys import ENGINE, METRICS, SETTINGS
from relay.db import ops
from relay.metrics import BacklogRow, ControlRow


class GaugeCache:
    """When the database gauges were last read, and one reader at a time."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.read_at: float | None = None
        self.lock = asyncio.Lock()
        # Database queries made for scrapes (for tests and curiosity).
        self.reads = 0

    def fresh(self) -> bool:
        return self.read_at is not None and time.monotonic() - self.read_at < self.max_age


GAUGE_CACHE = web.AppKey("gauge_cache", GaugeCache)


async def refresh_gauges(app: web.Application) -> None:
    """Read the backlog gauges from the database unless a recent read is still fresh."""
    cache = app[GAUGE_CACHE]
    if cache.fresh():
        return
    async with cache.lock:
        if cache.fresh():  # another scrape read them while this one waited
            return
        async with app[ENGINE].connect() as conn:
            rows = await ops.backlog(conn)
            control = await ops.control(conn)
        cache.reads += 1
        cache.read_at = time.monotonic()
    registry = app[METRICS]
    registry.backlog.control = [
        ControlRow(
            tenant_id=r["tenant_id"],
            destination_id=r["destination_id"],
            throttle=float(r["throttle"]),
            paused=r["throttled_until"] is not None and r["throttled_until"] > datetime.now(UTC),
            blocked_keys=int(r["blocked_keys"]),
        )
        for r in control
    ]
    registry.backlog.rows = [
        BacklogRow(
            status=str(r["status"]),
            deliveries=int(r["deliveries"]),
            due_now=int(r["due_now"]),
            oldest_age_seconds=r["oldest_age"].total_seconds() if r["oldest_age"] else 0.0,
            expired_leases=int(r["expired_leases"]),
        )
        for r in rows
    ]


async def metrics(request: web.Request) -> web.Response:
    await refresh_gauges(request.app)
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def setup(app: web.Application) -> None:
    app[GAUGE_CACHE] = GaugeCache(app[SETTINGS].metrics.database_cache_seconds)
    app.router.add_get("/metrics", metrics)
