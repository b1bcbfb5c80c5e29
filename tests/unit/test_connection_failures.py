"""Which database errors mean "the connection is unusable" (a 503 to retry), and which not.

The protocol race behind asyncpg's "cannot switch to state 12" (PostgreSQL's FATAL error
read from an idle connection just before its close) cannot be timed from outside, so these
tests build the exceptions as asyncpg raises them and as SQLAlchemy wraps them.
tests/integration/test_http_edge.py feeds the server's FATAL message to a pooled
connection and sees the 503 end to end.
"""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    PGDialect_asyncpg,
)
from sqlalchemy.exc import DBAPIError, InternalError

from relay.db.engine import is_connection_failure

STATE_SWITCH = "cannot switch to state 12; another operation (2) is in progress"
FAILED_STATE = 'cannot switch to state 15; protocol is in the "failed" state'


def wrapped(bare: Exception) -> DBAPIError:
    """``bare`` as SQLAlchemy's asyncpg dialect hands it to relay."""
    dbapi = PGDialect_asyncpg.import_dbapi()
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(dbapi, bare)
    except Exception as translated:
        return DBAPIError.instance("SELECT 1", (), translated, dbapi.Error)
    raise AssertionError("the dialect did not translate the error")


@pytest.mark.parametrize(
    "bare",
    [
        pytest.param(asyncpg.InternalClientError(STATE_SWITCH), id="state-switch"),
        pytest.param(asyncpg.InternalClientError(FAILED_STATE), id="failed-state"),
        pytest.param(asyncpg.InternalClientError("not connected"), id="not-connected"),
        pytest.param(
            asyncpg.TargetServerAttributeNotMatched("none of the hosts match primary"),
            id="no-primary",
        ),
        pytest.param(
            asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
            id="closed",
        ),
        pytest.param(
            asyncpg.AdminShutdownError("terminating connection due to administrator command"),
            id="admin-shutdown",
        ),
    ],
)
def test_a_lost_connection_is_one_bare_and_wrapped(bare: Exception) -> None:
    assert is_connection_failure(bare)
    assert is_connection_failure(wrapped(bare))


def test_the_state_switch_error_arrives_wrapped_as_an_internal_error() -> None:
    # What the pod and Outpost handlers see through the engine: not an InterfaceError,
    # so only the cause says that the connection is gone.
    error = wrapped(asyncpg.InternalClientError(STATE_SWITCH))
    assert isinstance(error, InternalError)
    assert not error.connection_invalidated
    assert is_connection_failure(error)


@pytest.mark.parametrize(
    "bare",
    [
        asyncpg.ProtocolError("unexpected array dimensions"),
        asyncpg.OutdatedSchemaCacheError("cache lookup failed for type 16385"),
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_failing_result_on_a_working_connection_is_not_one(bare: Exception) -> None:
    assert not is_connection_failure(bare)
    assert not is_connection_failure(wrapped(bare))


def test_an_argument_asyncpg_cannot_encode_is_not_a_lost_connection() -> None:
    # asyncpg's client-side DataError subclasses its InterfaceError; the connection is
    # fine, so retrying (a 503) would only fail again.
    bare = asyncpg.exceptions._base.DataError("invalid input for query argument $1")
    assert not is_connection_failure(bare)
    assert not is_connection_failure(wrapped(bare))
