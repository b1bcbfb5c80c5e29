"""Connecting to PostgreSQL: URL forms, the SQLAlchemy engine, raw asyncpg connections."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` (what users write) -> the asyncpg dialect URL SQLAlchemy wants."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string()}")


def asyncpg_url(url: str) -> str:
    """The same server as a plain libpq-style URL, for raw asyncpg connections."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# --- session timeouts ----------------------------------------------------------------------
#
# A snapshot held by any session pins PostgreSQL's xmin horizon: no dead row newer than it
# can be removed, and the outbox, whose rows die at the rate deliveries finish, slows
# (docs/operations.md). relay's own sessions must never be that session.

# Every connection relay opens ends, on the server's side, once it has sat idle inside a
# transaction this long. relay never waits for anything inside a transaction (no HTTP
# call, no user input): between two statements of one there is only Python work,
# microseconds to milliseconds. A minute idle is a process that froze (SIGSTOP, a
# debugger, a host swapping) or a bug, and its snapshot would hold the horizon back for
# everyone meanwhile. PostgreSQL then ends the session (FATAL); relay sees a lost
# connection, reconnects, and retries, as after any lost connection (every write of
# relay's is safe to retry or was never acknowledged). Not a setting: nothing a user
# configures changes how long relay idles in a transaction.
IDLE_IN_TRANSACTION_TIMEOUT = 60.0

# The server-side statement timeout of the SQLAlchemy pool: the API's reads and writes,
# lease upkeep, housekeeping and retention, the config sync, the operator commands
# (database.statement_timeout_seconds). A cut statement there is an error that is logged
# and retried, or answered 503: nothing is lost. It also bounds how long one of those
# statements can hold a snapshot.
DEFAULT_STATEMENT_TIMEOUT = 30.0

# The client's own timeout (asyncpg's command_timeout) sits this much above the server's:
# the server's cancel (a clean error, the connection stays usable) normally comes first;
# the client's is the backstop for a server or network that stopped answering, and is
# counted as a lost connection (see is_connection_failure).
CLIENT_TIMEOUT_MARGIN = 5.0


def session_settings(statement_timeout: float) -> dict[str, str]:
    """Startup parameters for a relay connection (asyncpg ``server_settings``).

    Both timeouts are always sent, 0 included: a default set on the role or the database
    (``ALTER ROLE relay SET statement_timeout``) must not reach the connections where
    relay chose none. JIT is off: a plan over the partitions of history passes
    jit_above_cost by its estimate alone, and compiling it then costs far more than
    running it (hundreds of ms against one, measured for migration 0008)."""
    return {
        "statement_timeout": _milliseconds(statement_timeout),
        "idle_in_transaction_session_timeout": _milliseconds(IDLE_IN_TRANSACTION_TIMEOUT),
        "jit": "off",
    }


def _milliseconds(seconds: float) -> str:
    if seconds <= 0:
        return "0"
    return str(max(1, round(seconds * 1000)))


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    **kwargs: Any,
) -> AsyncEngine:
    """The pool for relay's SQL. ``statement_timeout=0`` (no timeout, neither the
    server's nor the client's) for migrations, whose index builds on a large table may
    rightly take minutes."""
    command_timeout = statement_timeout + CLIENT_TIMEOUT_MARGIN if statement_timeout > 0 else None
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # A connection that died with a server restart is replaced, not handed out.
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={
            "timeout": 5,
            "command_timeout": command_timeout,
            "server_settings": session_settings(statement_timeout),
        },
        **kwargs,
    )


async def connect_raw(url: str, **kwargs: Any) -> asyncpg.Connection:
    """A plain asyncpg connection: the dispatcher's claim, recorder and LISTEN
    connections, the router's.

    No server-side statement timeout here, on purpose. These run the hot path, where a
    statement the server cancels is an ordinary SQL error, and an SQL error means
    something else: the claim loop takes it for a row it cannot read, looks at the rows
    one at a time and quarantines the ones that fail again (ending them ``failed``); the
    recorder takes it for an outcome PostgreSQL refuses, writes it again without the
    receiver's answer, and then drops it. A slow database would turn into lost outcomes
    and failed deliveries. Their bound is the client's ``command_timeout`` (the
    dispatcher sets 30 s), whose expiry relay counts as a lost connection: the connection
    is dropped and the same work is retried. The idle-in-transaction timeout applies."""
    kwargs["server_settings"] = session_settings(0) | kwargs.get("server_settings", {})
    return await asyncpg.connect(asyncpg_url(url), timeout=5, **kwargs)


def statement_cancelled(exc: BaseException) -> bool:
    """Did the server cancel the statement (statement_timeout, pg_cancel_backend)?"""
    for candidate in (exc, getattr(exc, "orig", None)):
        while candidate is not None:
            if getattr(candidate, "sqlstate", None) == "57014":
                return True
            candidate = candidate.__cause__
    return False


def is_connection_failure(exc: BaseException) -> bool:
    """Did this fail because the database could not be reached (not because of the query)?

    Covers a refused or timed-out connect, a connection the server closed (restart,
    ``pg_terminate_backend``), a server still starting up or shutting down, and an
    exhausted pool. Both forms count: asyncpg's own exception (relay's raw asyncpg pools)
    and SQLAlchemy's wrapping of it (``orig`` is the dialect's, whose cause is asyncpg's)."""
    if isinstance(exc, PoolTimeout | ConnectionError | OSError | asyncio.TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        orig = getattr(exc, "orig", None)
        causes = [c for c in (orig, getattr(orig, "__cause__", None)) if c is not None]
        if any(isinstance(c, _BAD_ARGUMENT) for c in causes):
            return False
        if exc.connection_invalidated or isinstance(exc, InterfaceError):
            return True
        return any(_lost_connection(c) for c in causes)
    return _lost_connection(exc)


def _lost_connection(exc: BaseException) -> bool:
    if isinstance(exc, _BAD_ARGUMENT):
        return False
    if isinstance(exc, _DISCONNECTS):
        return True
    # asyncpg's protocol state machine refusing a step, such as "cannot switch to state
    # 12; another operation (2) is in progress": the server's FATAL error (a shutdown,
    # pg_terminate_backend) was read while the connection sat idle, but not yet its
    # close, and asyncpg aborts the connection on the spot. Its subclasses are another
    # matter: ProtocolError and OutdatedSchemaCacheError concern decoding one result on
    # a connection that still works; TargetServerAttributeNotMatched is a connect that
    # found no server of the wanted kind (target_session_attrs, during a failover).
    if type(exc) is asyncpg.InternalClientError:
        return True
    return isinstance(exc, asyncpg.TargetServerAttributeNotMatched)


# asyncpg's client-side DataError (an argument it cannot encode) subclasses its
# InterfaceError, but the connection is fine: a bad value, not something to retry.
_BAD_ARGUMENT = asyncpg.exceptions._base.DataError

_DISCONNECTS = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
