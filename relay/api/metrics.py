"""GET /metrics: Prometheus text format. Not authenticated, like most exporters: expose
relay's port only where your scraper can reach it."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from relay.appkeys import ENGINE, METRICS
from relay.db import ops
from relay.metrics import BacklogRow, ControlRow


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    async with request.app[ENGINE].connect() as conn:
        rows = await ops.backlog(conn)
        control = await ops.control(conn)
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
    response = web.Response(body=registry.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
