"""relay's command line: serve | api | dispatch | migrate | check-config | psql, and the
operator commands events show | replay | stats | prune."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from relay import logs
from relay.config import ConfigError, Settings, load_settings
from relay.db.engine import IDLE_IN_TRANSACTION_TIMEOUT, asyncpg_url, redacted
from relay.groups import DispatchGroup

log = logging.getLogger("relay")


# Commands that serve; the others are operator commands: quiet unless asked (warnings and
# errors only), and they never create a database.
SERVING = ("serve", "api", "dispatch")


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (``relay stats --config f``
    as well as ``relay --config f stats``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="TOML config file (default: $RELAY_CONFIG, else $RELAY_HOME/config/relay.toml, "
        "else config/relay.toml)",
    )
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        help="override logging.level (DEBUG, INFO, ...); operator commands log warnings "
        "and errors only unless given",
    )
    return common


def _version() -> str:
    try:
        return version("relay")
    except PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="relay", description="Webhook relay with a PostgreSQL outbox.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"relay {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    add("serve", help="run the API and a dispatcher in one process")
    add("api", help="run the HTTP API only")
    dispatch = add("dispatch", help="run a dispatcher only (any number may run)")
    dispatch.add_argument(
        "--group",
        help="deliver only for the tenants of this group of delivery.groups "
        "(default: tenants in no group; env RELAY_DISPATCH_GROUP)",
    )
    add("migrate", help="bring the database schema up to date")
    check = add("check-config", help="validate a config file and exit")
    check.add_argument("path", nargs="?", help="file to check (default: as --config)")
    psql = add("psql", help="open psql on relay's database (embedded or configured)")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed on to psql")

    events = add("events", help="look at events")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    show = events_sub.add_parser(
        "show", help="an event and the story of its deliveries", parents=[common]
    )
    show.add_argument("event_id")
    show.add_argument("--tenant", help="the tenant (event ids are unique per tenant)")

    replay = add("replay", help="deliver matching deliveries again (manual)")
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

    add("stats", help="backlog and destination health at a glance")

    prune = add("prune", help="drop the slices of history older than the retention age, now")
    prune.add_argument(
        "--older-than-days",
        type=_positive_float,
        help="age to keep (default: retention.max_age_days from the config)",
    )

    listen = add(
        "listen",
        help="receive webhooks locally: verify each delivery's signature and print it",
    )
    listen.add_argument(
        "url",
        nargs="?",
        default="http://127.0.0.1:8000/webhooks",
        help="where to listen (default: http://127.0.0.1:8000/webhooks, the dev config's "
        "destination); a destination with this url supplies the secret",
    )
    listen.add_argument(
        "--secret",
        help="verify with this secret (default: the secret relay keeps for the destination "
        "whose url this is, read from relay's database)",
    )
    listen.add_argument(
        "--mode",
        choices=["standard", "outpost"],
        help="webhook format with --secret (default: the destination's, else "
        "delivery.webhook_mode)",
    )
    listen.add_argument(
        "--status", type=int, default=200, help="HTTP status to answer verified deliveries with"
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
    command: str = args.command
    config: str | None = getattr(args, "config", None)
    log_level: str | None = getattr(args, "log_level", None)
    serving = command in SERVING
    logs.setup(log_level or ("INFO" if serving else "WARNING"))
    try:
        if command == "check-config":
            return _check_config(args.path or config)
        settings = load_settings(config)
        if command == "dispatch" and args.group:
            settings = _in_group(settings, args.group)
        _refuse_to_start(settings, command)
    except ConfigError as exc:
        print(f"relay: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    logs.setup(
        log_level or (settings.logging.level if serving else "WARNING"), settings.logging.format
    )
    try:
        if command in ("serve", "api") and not _is_workers_copy():
            _check_port_free(settings)
        if command == "listen" and args.secret:
            database_url, _server = "", None  # verifies with the secret it was given
        elif command in SERVING or command == "migrate":
            database_url, _server = _database(settings)
        else:
            database_url, _server = _existing_database(settings)
    except CannotStart as exc:
        if command == "listen":
            print(
                f"relay: {exc}\n  relay listen reads the destination's secret there; "
                "start relay first, or pass --secret whsec_...",
                file=sys.stderr,
            )
        else:
            print(f"relay: {exc}", file=sys.stderr)
        return 1
    if command == "migrate":
        try:
            asyncio.run(_migrate(database_url))
        except DBAPIError as exc:
            print(f"relay: {_refused(exc, database_url)}", file=sys.stderr)
            return 1
        print("relay: database is up to date")
        return 0
    if command == "psql":
        return _psql(database_url, args.psql_args)
    if command == "listen":
        from relay import listen

        return listen.listen(args, settings, database_url or None)
    if command in ("events", "replay", "stats", "prune"):
        try:
            return asyncio.run(_operate(args, settings, database_url))
        except CannotStart as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return 1
    from relay.app import DatabaseUnreachable, NotMigrated

    try:
        if command == "dispatch":
            return _run(_dispatch_only(settings, database_url))
        return _serve(settings, database_url, command, argv)
    except (DatabaseUnreachable, NotMigrated, HealthPortTaken, CannotStart) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:
        # Reached the server but it refused us (unknown database or role, no rights).
        print(f"relay: {_refused(exc, database_url)}", file=sys.stderr)
        return 1


def _in_group(settings: Settings, group: str) -> Settings:
    """``settings`` for a dispatcher of ``group`` (`relay dispatch --group`)."""
    if group not in settings.delivery.groups:
        known = ", ".join(sorted(settings.delivery.groups)) or "none are declared"
        raise ConfigError(
            settings.source,
            "--group",
            f"{group!r} is not a group of delivery.groups ({known})",
            f'declare it under [delivery.groups] ({group} = ["tenant-id", ...]) or pass '
            "a declared group",
        )
    delivery = settings.delivery.model_copy(update={"group": group})
    return settings.model_copy(update={"delivery": delivery})


class CannotStart(RuntimeError):
    """A reason the command cannot run, said in one line (or a few) with the fix."""


def _is_workers_copy() -> bool:
    """A copy started by server.workers: its port is shared on purpose (SO_REUSEPORT)."""
    from relay import workers

    return workers.is_copy()


def _refuse_to_start(settings: Settings, command: str) -> None:
    """What `relay serve` refuses beyond the file's own validity (check-config checks the
    same)."""
    if command in ("serve", "api") and not settings.admin_api_key:
        raise ConfigError(
            settings.source,
            "server.admin_api_key",
            "no admin API key is configured (relay serve and relay api need one)",
            "set server.admin_api_key (or server.admin_api_key_env) in the file, or export "
            "RELAY_ADMIN_API_KEY",
        )


def _check_port_free(settings: Settings) -> None:
    """Fail fast, before a database or a dispatcher starts, when the port is taken."""
    port = settings.server.port
    if not port:
        return
    try:
        infos = socket.getaddrinfo(settings.server.host, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # the server's own bind reports it
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # As asyncio's server binds: SO_REUSEADDR, so only a listener makes it fail.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise CannotStart(_port_taken(settings, exc)) from None


def _port_taken(settings: Settings, exc: OSError) -> str:
    where = f"{settings.server.host}:{settings.server.port}"
    return (
        f"cannot listen on {where}: {exc.strerror or exc} (is another relay running?); "
        "stop it, or choose another port with server.port or RELAY_PORT"
    )


def _refused(exc: DBAPIError, database_url: str) -> str:
    """The server answered but refused relay; for a database that does not exist, the
    command that creates it."""
    orig = exc.orig
    cause = getattr(orig, "__cause__", None) or orig
    name = type(cause).__name__
    url = make_url(asyncpg_url(database_url))
    if name == "InvalidCatalogNameError" and url.database:
        host = url.host or str(url.query.get("host") or "localhost")  # or a socket dir
        create = f"createdb -h {host} -p {url.port or 5432}"
        create += f" -U {url.username}" if url.username else ""
        return (
            f"database {url.database!r} does not exist on {host}:{url.port or 5432} "
            f"(from {_url_source()}); create it: {create} {url.database}"
        )
    return f"the database refused relay at start: {cause}"


def _url_source() -> str:
    return "RELAY_DATABASE_URL" if "RELAY_DATABASE_URL" in os.environ else "database.url"


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

    def serving(_banner: str) -> None:
        # aiohttp calls this once every site listens: only then does relay say it serves.
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
    try:
        web.run_app(
            app,
            host=settings.server.host,
            port=settings.server.port,
            # Several processes on one port: the kernel spreads the connections.
            reuse_port=True if copies or workers.is_copy() else None,
            print=serving,
            access_log=None,
            shutdown_timeout=settings.delivery.shutdown_grace_seconds + 5,
            # aiohttp has no header-read timeout of its own, but its keep-alive timer runs
            # from when a connection opens or its last response went out until the next
            # request's headers are complete: a client trickling headers is closed then.
            keepalive_timeout=settings.server.header_timeout_seconds,
        )
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        raise CannotStart(_port_taken(settings, exc)) from None
    return 0


def _check_config(path: str | None) -> int:
    """Check what `relay serve` checks before it starts anything."""
    try:
        settings = load_settings(path)
        _refuse_to_start(settings, "serve")
    except ConfigError as exc:
        print(f"relay: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    tenants = len(settings.tenants)
    destinations = sum(len(t.destinations) for t in settings.tenants)
    database = (
        redacted(settings.database.url)
        if settings.database.url
        else (f"embedded in {settings.database.data_dir}")
    )
    print(
        f"{settings.source}: ok ({tenants} tenants, {destinations} destinations; "
        f"database {database})"
    )
    return 0


def _database(settings: Settings) -> tuple[str, Any]:
    """The configured server, or the embedded one started (and created if need be) in the
    data directory."""
    if settings.database.url:
        return settings.database.url, None
    from relay.embedded import start_embedded

    data_dir = settings.database.data_dir
    log.info("no database configured: starting embedded PostgreSQL in %s", data_dir)
    server, url = start_embedded(data_dir)
    return url, server


def _existing_database(settings: Settings) -> tuple[str, Any]:
    """For operator commands, which never create a database: the configured server, or
    the embedded one if its data directory holds one; else say where relay looked."""
    if settings.database.url:
        return settings.database.url, None
    from relay.embedded import has_cluster, start_embedded

    data_dir = settings.database.data_dir
    if not has_cluster(data_dir):
        raise CannotStart(_no_database(settings))
    try:
        server, url = start_embedded(data_dir, create=False)
    except LookupError:
        raise CannotStart(_no_database(settings)) from None
    return url, server


def _no_database(settings: Settings) -> str:
    from relay.embedded import has_cluster

    data_dir = settings.database.data_dir
    what = (
        f"the embedded PostgreSQL in {data_dir} has no relay database"
        if has_cluster(data_dir)
        else f"no embedded PostgreSQL in {data_dir}"
    )
    if settings.config_path:
        origin = f"database.data_dir of {settings.config_path}"
    else:
        looked = Path(os.environ.get("RELAY_HOME") or ".") / "config" / "relay.toml"
        origin = f"the default data directory; no config file at {looked}"
    return (
        f"no relay database here: {what} ({origin}), and "
        "RELAY_DATABASE_URL is not set\n"
        "  point relay at its database: run from the directory that holds "
        "config/relay.toml, or pass --config PATH, or set RELAY_HOME=DIR (the directory "
        "holding config/relay.toml) or RELAY_DATABASE_URL=postgresql://...\n"
        "  or create one there: relay serve (or relay migrate)"
    )


async def _operate(args: argparse.Namespace, settings: Settings, database_url: str) -> int:
    from relay import ops, retention
    from relay.db.engine import create_engine
    from relay.db.ops import ReplayFilter

    engine = create_engine(
        database_url, pool_size=2, statement_timeout=settings.database.statement_timeout_seconds
    )
    try:
        await _require_schema(engine, settings, database_url)
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


async def _require_schema(engine: Any, settings: Settings, database_url: str) -> None:
    """Operator commands read relay's schema; they never create it in a database that
    lacks it (a wrong RELAY_DATABASE_URL must not grow a relay schema)."""
    from relay.db import migrate
    from relay.db.engine import is_connection_failure

    where = redacted(database_url)
    try:
        current = await migrate.current_revision(engine)
    except DBAPIError as exc:
        if is_connection_failure(exc):
            raise CannotStart(
                f"cannot reach the database at {where} ({exc.orig}); is it running? "
                f"(check {_url_source()})"
            ) from None
        raise CannotStart(_refused(exc, database_url)) from None
    except OSError as exc:
        raise CannotStart(
            f"cannot reach the database at {where} ({exc}); is it running? (check {_url_source()})"
        ) from None
    if current is None:
        raise CannotStart(
            f"the database at {where} has no relay schema: is this relay's database? "
            f"(check {_url_source()}); to set it up: relay migrate"
        )
    if current != migrate.head_revision():
        if not settings.database.migrate_on_start:
            raise CannotStart(
                f"the database at {where} is at revision {current}, this relay needs "
                f"{migrate.head_revision()}: run relay migrate"
            )
        await migrate.upgrade(engine)


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
    d = settings.delivery
    log.info(
        "relay dispatch running (database %s; delivering for %s)%s",
        redacted(database_url),
        DispatchGroup.of(d.group, d.groups, d.group_takeover_seconds).describe(),
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
