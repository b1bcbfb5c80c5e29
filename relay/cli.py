"""relay's command line: serve | api | dispatch | migrate | check-config | psql, and the
operator commands events show | replay | stats | prune."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from relay import logs
from relay.config import ConfigError, Settings, load_settings
from relay.db.engine import IDLE_IN_TRANSACTION_TIMEOUT, asyncpg_url, redacted

log = logging.getLogger("relay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="Webhook relay with a PostgreSQL outbox."
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config file (default: $RELAY_CONFIG or config/relay.toml)",
    )
    parser.add_argument("--log-level", help="override logging.level (DEBUG, INFO, ...)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run the API and a dispatcher in one process")
    sub.add_parser("api", help="run the HTTP API only")
    sub.add_parser("dispatch", help="run a dispatcher only (any number may run)")
    sub.add_parser("migrate", help="bring the database schema up to date")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("path", nargs="?", help="file to check (default: as --config)")
    psql = sub.add_parser("psql", help="open psql on relay's database (embedded or configured)")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed on to psql")

    events = sub.add_parser("events", help="look at events")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    show = events_sub.add_parser("show", help="an event and the story of its deliveries")
    show.add_argument("event_id")
    show.add_argument("--tenant", help="the tenant (event ids are unique per tenant)")

    replay = sub.add_parser("replay", help="deliver matching deliveries again (manual)")
    replay.add_argument("--tenant", help="only this tenant")
    replay.add_argument("--destination", help="only this destination id")
    replay.add_argument(
        "--status",
        action="append",
        choices=["failed", "delivered", "pending"],
        help="deliveries in this state (repeatable; default: failed)",
    )
    replay.add_argument("--since", type=_timestamp, help="published at or after (ISO 8601)")
    replay.add_argument("--until", type=_timestamp, help="published before (ISO 8601)")
    replay.add_argument("--dry-run", action="store_true", help="only say how many")
    replay.add_argument("--batch-size", type=_positive_int, default=1000)

    sub.add_parser("stats", help="backlog and destination health at a glance")

    prune = sub.add_parser(
        "prune", help="drop the slices of history older than the retention age, now"
    )
    prune.add_argument(
        "--older-than-days",
        type=_positive_float,
        help="age to keep (default: retention.max_age_days from the config)",
    )
    return parser


def _positive_int(value: str) -> int:
    number = int(_positive_float(value))
    if str(number) != value.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be greater than 0")
    return number


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 time such as 2026-11-23T10:00:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logs.setup(args.log_level or "INFO")
    try:
        if args.command == "check-config":
            return _check_config(args.path or args.config)
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"relay: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    logs.setup(args.log_level or settings.logging.level, settings.logging.format)

    if args.command in ("serve", "api") and not settings.admin_api_key:
        print(
            f"relay: invalid configuration\n{settings.source}: server.admin_api_key: "
            "no admin API key is configured\n  fix: set server.admin_api_key (or "
            "server.admin_api_key_env) in the file, or export RELAY_ADMIN_API_KEY",
            file=sys.stderr,
        )
        return 2

    database_url, _server = _database(settings)
    command = args.command
    if command == "migrate":
        asyncio.run(_migrate(database_url))
        print("relay: database is up to date")
        return 0
    if command == "psql":
        return _psql(database_url, args.psql_args)
    if command in ("events", "replay", "stats", "prune"):
        return asyncio.run(_operate(args, settings, database_url))
    from relay.app import DatabaseUnreachable, NotMigrated

    try:
        if command == "dispatch":
            return _run(_dispatch_only(settings, database_url))
        return _serve(settings, database_url, command, argv)
    except (DatabaseUnreachable, NotMigrated, HealthPortTaken) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:
        # Reached the server but it refused us (unknown database or role, no rights).
        print(f"relay: the database refused relay at start: {exc.orig}", file=sys.stderr)
        return 1


def _serve(settings: Settings, database_url: str, command: str, argv: Sequence[str]) -> int:
    from relay import workers
    from relay.app import create_app

    app = create_app(settings, database_url, api=True, dispatcher=command == "serve")
    copies = 0 if workers.is_copy() else settings.server.workers - 1
    if copies:
        grace = settings.delivery.shutdown_grace_seconds + 10
        app.cleanup_ctx.append(workers.Workers(copies, argv, database_url, grace).run)
    if workers.is_copy():
        app.cleanup_ctx.append(workers.orphan_guard)
    log.info(
        "relay %s on http://%s:%d (database %s)%s",
        command,
        settings.server.host,
        settings.server.port,
        redacted(database_url),
        f", {copies + 1} processes" if copies else "",
    )
    _install_uvloop()
    _tune_gc()
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        # Several processes on one port: the kernel spreads the connections.
        reuse_port=True if copies or workers.is_copy() else None,
        print=None,
        access_log=None,
        shutdown_timeout=settings.delivery.shutdown_grace_seconds + 5,
        # aiohttp has no header-read timeout of its own, but its keep-alive timer runs
        # from when a connection opens or its last response went out until the next
        # request's headers are complete: a client trickling headers is closed then.
        keepalive_timeout=settings.server.header_timeout_seconds,
    )
    return 0


def _check_config(path: str | None) -> int:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"relay: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    tenants = len(settings.tenants)
    destinations = sum(len(t.destinations) for t in settings.tenants)
    print(f"{settings.source}: ok ({tenants} tenants, {destinations} destinations)")
    return 0


def _database(settings: Settings) -> tuple[str, Any]:
    """The configured server, or the embedded one started in the data directory."""
    if settings.database.url:
        return settings.database.url, None
    from relay.embedded import start_embedded

    data_dir = settings.database.data_dir
    log.info("no database configured: starting embedded PostgreSQL in %s", data_dir)
    server, url = start_embedded(data_dir)
    return url, server


async def _operate(args: argparse.Namespace, settings: Settings, database_url: str) -> int:
    from relay import ops, retention
    from relay.db.engine import create_engine
    from relay.db.migrate import upgrade
    from relay.db.ops import ReplayFilter

    engine = create_engine(
        database_url, pool_size=2, statement_timeout=settings.database.statement_timeout_seconds
    )
    try:
        if settings.database.migrate_on_start:
            await upgrade(engine)
        if args.command == "events":
            return await ops.show_event(engine, args.event_id, args.tenant, sys.stdout)
        if args.command == "replay":
            selection = ReplayFilter(
                statuses=tuple(args.status or ["failed"]),
                tenant_id=args.tenant,
                destination_id=args.destination,
                since=args.since,
                until=args.until,
            )
            await ops.replay(
                engine, selection, sys.stdout, dry_run=args.dry_run, batch_size=args.batch_size
            )
            return 0
        if args.command == "stats":
            warn_after = settings.database.xmin_horizon_warning_seconds
            await ops.stats(engine, sys.stdout, warn_after=warn_after)
            return 0
        days = args.older_than_days
        if days is None:
            days = settings.retention.max_age_days
        if not days:
            print(
                "relay: nothing to prune: retention.max_age_days is 0 (keep everything); "
                "pass --older-than-days N",
                file=sys.stderr,
            )
            return 2
        done = await retention.prune(engine, settings.retention, timedelta(days=days), sys.stdout)
        return 0 if done is not None else 1
    finally:
        await engine.dispose()


async def _migrate(database_url: str) -> None:
    from relay.db.engine import create_engine
    from relay.db.migrate import upgrade

    engine = create_engine(database_url, pool_size=1, statement_timeout=0)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def _psql(database_url: str, extra: Sequence[str]) -> int:
    from relay.embedded import psql_path

    executable = shutil.which("psql") or psql_path()
    # A child, not exec: this process must exit normally so the embedded server's
    # reference count drops (exec would leave it running forever).
    extra = list(extra[1:] if extra[:1] == ["--"] else extra)
    # The password goes by environment, not argv, where `ps` would show it to every user.
    url = make_url(asyncpg_url(database_url))
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    # A session left open in BEGIN pins the xmin horizon for everyone (docs/operations.md):
    # psql sessions get relay's idle-in-transaction timeout too. Yours come after it in
    # PGOPTIONS, so they win (or SET it to 0 in the session for a long manual change).
    ours = f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT:g}s"
    env["PGOPTIONS"] = f"{ours} {env.get('PGOPTIONS', '')}".strip()
    dsn = url.set(password=None).render_as_string(hide_password=False)
    return subprocess.run([executable, dsn, *extra], check=False, env=env).returncode


async def _dispatch_only(settings: Settings, database_url: str) -> None:
    from relay.app import create_app

    app = create_app(settings, database_url, api=False, dispatcher=True)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    try:
        health = await _health_site(runner, settings)
    except OSError as exc:
        await runner.cleanup()
        raise HealthPortTaken(
            f"cannot serve /healthz on {settings.server.host}:{settings.server.health_port} "
            f"({exc.strerror or exc}); give each dispatcher on this machine its own "
            "server.health_port (or RELAY_HEALTH_PORT), or 0 to turn the endpoint off"
        ) from exc
    _tune_gc()
    log.info(
        "relay dispatch running (database %s)%s",
        redacted(database_url),
        f"; /healthz and /metrics on http://{health}" if health else "",
    )
    try:
        await stop.wait()
        log.info("stopping: finishing in-flight deliveries")
    finally:
        await runner.cleanup()


class HealthPortTaken(RuntimeError):
    """`relay dispatch` could not listen on its health port."""


async def _health_site(runner: web.AppRunner, settings: Settings) -> str | None:
    """Serve the dispatcher's /healthz and /metrics (liveness for systemd, Kubernetes,
    ...); where, as host:port, or None when turned off."""
    port = settings.server.health_port
    if not port:
        return None
    site = web.TCPSite(runner, settings.server.host, port)
    await site.start()
    return f"{settings.server.host}:{port}"


# Young-generation size for the cyclic garbage collector in long-running servers (the
# default is 700). Every HTTP request and delivery leaves a few reference cycles (aiohttp's
# request/response objects), and with hundreds of deliveries in flight each collection of
# a 700-object generation finds mostly live objects, scans them and promotes them, so
# older generations fill and full collections follow: with the default, the collector
# took a quarter of a dispatcher's CPU time (~35 of ~150 us per delivery). Collections
# still run; only less often, each reclaiming more garbage for the same fixed cost. The
# garbage waiting for one is bounded by this count (a few MB at most).
GC_YOUNG_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Before serving: move everything allocated so far (modules, config, the app) out of
    the collector's sight, since it lives as long as the process, and collect young
    objects less often (see GC_YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run(coro: Any) -> int:
    _install_uvloop()
    asyncio.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
