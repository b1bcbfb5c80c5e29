"""Turning failures into JSON answers: ``{"status", "message", "data"?}``.

relay's own errors carry their status. aiohttp's HTTP exceptions (404 for an unknown
route, 405, 413) are reshaped into the same body. A lost database connection is a 503
with Retry-After, and so is a statement the database cancelled (its statement timeout).
Anything else is logged and answered with a bare 500. (Here a ConnectionError cannot say
whose connection failed, so the client's own, lost while it sends its body, is told apart
where bodies are read: relay.api.validation.read_body.)

An API with its own error body (the pod API's ``{"error"}``) registers a shape for its
path prefix with ``use_error_shape``; everything else keeps Outpost's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web
from sqlalchemy.exc import DBAPIError

from relay.appkeys import SETTINGS
from relay.db.engine import is_connection_failure, statement_cancelled
from relay.errors import RelayError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (status, message, data) -> the JSON body of an error response.
ErrorShape = Callable[[int, str, object], Mapping[str, object]]

RETRY_AFTER_SECONDS = "2"


def json_response(
    payload: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers
    )


def outpost_error_shape(status: int, message: str, data: object) -> Mapping[str, object]:
    body: dict[str, object] = {"status": status, "message": message}
    if data is not None:
        body["data"] = data
    return body


# Path prefix -> error shape, for the APIs that do not answer in Outpost's shape.
ERROR_SHAPES = web.AppKey("error_shapes", dict[str, ErrorShape])


def use_error_shape(app: web.Application, prefix: str, shape: ErrorShape) -> None:
    """Answer errors for ``prefix`` and the paths under it in ``shape``."""
    app.setdefault(ERROR_SHAPES, {})[prefix.rstrip("/")] = shape


def _shape_for(request: web.Request) -> ErrorShape:
    for prefix, shape in request.app.get(ERROR_SHAPES, {}).items():
        if request.path == prefix or request.path.startswith(prefix + "/"):
            return shape
    return outpost_error_shape


def error_response(
    status: int, message: str, data: object = None, shape: ErrorShape = outpost_error_shape
) -> web.Response:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    return json_response(shape(status, message, data), status=status, headers=headers)


def unstorable_value(exc: BaseException) -> str | None:
    """PostgreSQL's complaint when a value the client sent cannot be stored or compared
    (a NUL character, an out-of-range number: SQLSTATE class 22), else None."""
    if not isinstance(exc, DBAPIError):
        return None
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None) or orig
    sqlstate = getattr(cause, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith("22"):
        return str(cause).splitlines()[0][:200]
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RelayError as exc:
        return error_response(exc.status, exc.message, exc.data, _shape_for(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Only on failure: the success path does not look the shape up.
        shape = _shape_for(request)
        message = {404: "not found", 405: "method not allowed"}.get(exc.status, exc.reason)
        if exc.status == 413:
            limit = request.app[SETTINGS].server.max_body_bytes
            message = f"request body too large (limit {limit} bytes)"
        if (
            exc.text
            and exc.status not in (404, 405, 413)
            and not exc.text.startswith(f"{exc.status}:")
        ):
            message = exc.text
        return error_response(exc.status, message.lower(), shape=shape)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        shape = _shape_for(request)
        if is_connection_failure(exc):
            log.warning("database unavailable: %s", type(exc).__name__)
            return error_response(503, "the database is unavailable; retry shortly", shape=shape)
        if statement_cancelled(exc):
            # database.statement_timeout_seconds (or an operator's pg_cancel_backend): the
            # database is slow or the request asks for too much; not a bug of relay's.
            log.warning("database statement cancelled in %s %s", request.method, request.path)
            return error_response(
                503,
                "the database did not answer within the statement timeout; retry shortly, "
                "or ask for less",
                shape=shape,
            )
        refused = unstorable_value(exc)
        if refused is not None:
            return error_response(
                400, f"the request holds a value PostgreSQL cannot take: {refused}", shape=shape
            )
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal server error", shape=shape)
