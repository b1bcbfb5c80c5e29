"""create_app(): the aiohttp application, its routes, and what it owns.

Everything with a lifetime (engine, dispatcher) is a cleanup_ctx, so shutdown runs in
reverse order even when startup fails halfway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relay import hot_table, opevents, retention
from relay.api import metrics as metrics_api
from relay.api import outpost, pod
from relay.api.errors import error_middleware
from relay.appkeys import (
    DATABASE_URL,
    DISPATCHER,
    ENGINE,
    HEAD_REVISION,
    HORIZON,
    METRICS,
    OPERATOR_TOPICS,
    PUBLISHER,
    SETTINGS,
)
from relay.config import Settings
from relay.db import migrate, operator_events
from relay.db.engine import create_engine, is_connection_failure
from relay.db.sync import sync_config
from relay.dispatcher import Dispatcher
from relay.groupcommit import GroupCommit
from relay.horizon import HorizonWatch
from relay.metrics import Metrics
from relay.ops import housekeeping_loop
from relay.router import Router
from relay.supervise import Supervisor

log = logging.getLogger(__name__)


class NotMigrated(RuntimeError):
    """The database schema is not at relay's current revision."""


class DatabaseUnreachable(RuntimeError):
    """The database could not be reached within database.startup_wait_seconds."""


async def prepare_database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    engine = create_engine(
        app[DATABASE_URL],
        pool_size=settings.database.pool_size,
        statement_timeout=settings.database.statement_timeout_seconds,
    )
    app[ENGINE] = engine
    try:
        head = migrate.head_revision()
        assert head is not None
        app[HEAD_REVISION] = head
        await wait_until_reachable(engine, settings.database.startup_wait_seconds)
        # Migrations get an engine of their own with no statement timeout: building an
        # index on a large table may rightly take minutes.
        migrations = create_engine(app[DATABASE_URL], pool_size=1, statement_timeout=0)
        try:
            if settings.database.migrate_on_start:
                await migrate.upgrade(migrations)
            else:
                current = await migrate.current_revision(migrations)
                if current != head:
                    raise NotMigrated(
                        f"database is at revision {current}, relay needs {head}: "
                        "run `relay migrate`"
                    )
        finally:
            await migrations.dispose()
        async with engine.begin() as conn:
            await sync_config(conn, settings)
        # History slices ahead of now before anything is written (retiring old ones is
        # the slices loop's: it may wait on other sessions).
        await retention.maintain(engine, settings.retention, retire=False)
        yield
    finally:
        await engine.dispose()


async def wait_until_reachable(engine: AsyncEngine, wait_seconds: float) -> None:
    """Return once the database answers; retry while it cannot be reached.

    Processes are often started together with (or before) PostgreSQL, and a managed
    server may be failing over: waiting a while beats a crash loop. Only reaching the
    server is retried here; what comes after (migrations, config sync) fails at once."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            reason = str(exc) or type(exc).__name__
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnreachable(
                    f"database unreachable for {wait_seconds:g}s at start ({reason}); "
                    "check database.url / RELAY_DATABASE_URL, or raise "
                    "database.startup_wait_seconds"
                ) from exc
            log.warning("database unreachable (%s); retrying in %.1fs", reason, min(delay, left))
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


async def run_dispatcher(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    dispatcher = Dispatcher(
        app[ENGINE],
        app[DATABASE_URL],
        settings.delivery,
        metrics=app[METRICS],
        after_record=operator_events.Recorder(
            opevents.policy(settings), settings.operator_events.refresh_seconds
        ),
    )
    app[DISPATCHER] = dispatcher
    app[METRICS].supervisors.append(dispatcher.supervisor)
    await dispatcher.start()
    try:
        yield
    finally:
        await dispatcher.stop()


async def run_router(app: web.Application) -> AsyncIterator[None]:
    """Route what the relay.publish() SQL function wrote (relay/router.py)."""
    router = Router(app[DATABASE_URL], poll_interval=app[SETTINGS].delivery.poll_interval_seconds)
    app[METRICS].supervisors.append(router.supervisor)
    await router.start()
    try:
        yield
    finally:
        await router.stop()


async def run_group_commit(app: web.Application) -> AsyncIterator[None]:
    """The publish handlers' writer (relay/groupcommit.py), with its own small pool."""
    publisher = GroupCommit(app[DATABASE_URL])
    app[METRICS].supervisors.append(publisher.supervisor)
    await publisher.start()
    app[PUBLISHER] = publisher
    try:
        yield
    finally:
        await publisher.stop()


async def run_housekeeping(app: web.Application) -> AsyncIterator[None]:
    """In every process: the xmin horizon watch (relay/horizon.py), the history slices
    (relay/retention.py) and the hot table's vacuum (relay/hot_table.py); in dispatchers
    also strays on deleted destinations."""
    supervisor = Supervisor("housekeeping")
    app[METRICS].supervisors.append(supervisor)
    engine, settings = app[ENGINE], app[SETTINGS]
    watch = HorizonWatch(
        engine, settings.database.xmin_horizon_warning_seconds, app[METRICS].horizon
    )
    app[HORIZON] = watch
    supervisor.start("horizon", watch.run)
    supervisor.start("slices", lambda loop: retention.slices_loop(engine, settings.retention, loop))
    supervisor.start("vacuum", lambda loop: hot_table.vacuum_loop(engine, loop))
    if app[DISPATCHER] is not None:
        supervisor.start("rounds", lambda loop: housekeeping_loop(engine, loop))
    try:
        yield
    finally:
        await supervisor.stop()


def create_app(
    settings: Settings, database_url: str, *, api: bool = True, dispatcher: bool = True
) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.server.max_body_bytes
    )
    app[SETTINGS] = settings
    app[DATABASE_URL] = database_url
    app[DISPATCHER] = None
    app[METRICS] = Metrics()
    app[OPERATOR_TOPICS] = operator_events.Subscriptions(settings.operator_events.refresh_seconds)
    metrics_api.setup(app)
    app.cleanup_ctx.append(prepare_database)
    if dispatcher:
        app.cleanup_ctx.append(run_dispatcher)
        app.cleanup_ctx.append(run_router)
    app.cleanup_ctx.append(run_housekeeping)
    if api:
        app.cleanup_ctx.append(run_group_commit)
        outpost.setup(app)
        pod.setup(app)
    else:
        app.router.add_get("/healthz", outpost.healthz)
    return app
