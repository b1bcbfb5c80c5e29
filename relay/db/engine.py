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


def create_engine(
    url: str, *, pool_size: int = 10, command_timeout: float | None = 30, **kwargs: Any
) -> AsyncEngine:
    """The pool for relay's SQL. ``command_timeout=None`` for migrations, whose index
    builds on a large table may rightly take minutes."""
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # A connection that died with a server restart is replaced, not handed out.
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={"timeout": 5, "command_timeout": command_timeout},
        **kwargs,
    )


async def connect_raw(url: str, **kwargs: Any) -> asyncpg.Connection:
    """A plain asyncpg connection (LISTEN needs its own, outside the pool)."""
    return await asyncpg.connect(asyncpg_url(url), timeout=5, **kwargs)


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
