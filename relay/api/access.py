"""The access log and HTTP request metrics: one middleware, outermost, so it sees every
answer as the client gets it (errors included: a 413 or 422 leaves a trace).

Each request gets an id: the client's ``X-Request-Id`` when it is a sane token, else a
new one. It is echoed in the response's ``X-Request-Id`` and logged with the route
template (``/api/v1/tenants/{tenant_id}``, "unmatched" for none), method, path, status
and duration. The same route, method and status label relay_http_request_duration_seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay.appkeys import METRICS, SETTINGS, TRACING

log = logging.getLogger("relay.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
# A client's request id is kept when it is a plain token of sane length (it goes into
# logs and back into a header); anything else is replaced.
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Probes and scrapes: frequent and dull; logged at DEBUG.
QUIET_ROUTES = frozenset({"/healthz", "/metrics", "/api/v1/healthz"})
# What a client that went away before its answer is logged with (nginx's convention).
CLIENT_CLOSED = 499


# Ids made here: this process's random prefix and a counter (unique across processes in
# practice, ordered within one, and a tenth of uuid4's cost per request).
_PREFIX = secrets.token_hex(6)
_COUNTER = itertools.count(1)


def request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _SANE_ID.fullmatch(given):
        return given
    return f"{_PREFIX}-{next(_COUNTER):x}"


def route_of(request: web.Request) -> str:
    """The route template the request matched, or "unmatched" (404, 405)."""
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    rid = request_id(request)
    # Routing is done before the middlewares run.
    route = route_of(request)
    status = 500
    span = None
    tracer = request.app[TRACING]
    if tracer is not None and route not in QUIET_ROUTES:  # no trace per probe or scrape
        span = tracer.server_span(request, route)
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = rid
        return response
    except web.HTTPException as exc:  # the error middleware answers most; not a redirect
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        seconds = time.perf_counter() - started
        request.app[METRICS].http_request(route, request.method, status, seconds)
        trace_id = None
        if tracer is not None and span is not None:
            trace_id = tracer.end_server_span(span, status)
        if request.app[SETTINGS].logging.access_log:
            level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
            if log.isEnabledFor(level):
                # As sent (percent-encoded), without the query: a decoded %0A would forge
                # a log line, and a query string may hold what a log must not.
                path = request.rel_url.raw_path
                log.log(
                    level,
                    "%s %s -> %d in %.1f ms (route %s, request %s)",
                    request.method,
                    path,
                    status,
                    seconds * 1000,
                    route,
                    rid,
                    extra={
                        "request_id": rid,
                        "method": request.method,
                        "route": route,
                        "path": path,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "remote": request.remote,
                        **({"trace_id": trace_id} if trace_id else {}),
                    },
                )
