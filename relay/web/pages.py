"""What every page shares: the template environment, security headers, error pages.

Templates autoescape: whatever a producer or receiver sent (payloads, headers, bodies,
URLs, metadata) is written as text. The Content-Security-Policy allows scripts and
styles from relay's own /static only, so a missed escape still could not run a script.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
import orjson
from aiohttp import web

from relay.api.errors import unstorable_value
from relay.db.admin import Destination
from relay.db.engine import is_connection_failure, statement_cancelled
from relay.delivery import registry
from relay.errors import BadRequest, RelayError, Unauthorized, ValidationFailed
from relay.web.sessions import Session

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # No Referer leaves relay (a portal link's token never reaches another site); within
    # it, browsers then send Origin on form posts (with no-referrer they send "null").
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# What the templates show for a page section a request can ask about.
ON_LOGIN = web.AppKey("on_unauthorized", str)


def when(value: datetime | None) -> str:
    """A time with its zone, to the second: 2026-12-07 10:53:55 UTC."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def age(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def percent(value: Decimal | float | None) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def pretty_json(value: Any) -> str:
    """Indented JSON text (still escaped by the template, as any text)."""
    if isinstance(value, orjson.Fragment):
        value = orjson.loads(orjson.dumps(value))
    elif isinstance(value, bytes | str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def segment(value: object) -> str:
    """Quoted for a URL path segment or query value: "/" too (ids may hold one)."""
    return quote(str(value), safe="")


def target(d: Destination) -> str:
    """Where a destination delivers: a webhook's URL, another type's target."""
    if d.type == "webhook":
        return d.url or ""
    return registry.describer(d.type).target(d.config, d.credentials, d.topics).target


def environment(app: web.Application) -> jinja2.Environment:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("relay.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        when=when,
        iso=iso,
        age=age,
        percent=percent,
        pretty_json=pretty_json,
        urlencode=segment,
        target=target,
    )
    return env


def render(
    request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, dict(context), status=status)
    return response


def error_page(
    request: web.Request, status: int, message: str, problems: list[str]
) -> web.Response:
    context = {"status": status, "message": message, "problems": problems, "page": "error"}
    return render(request, "error.html", context | base_context(request), status=status)


@dataclass
class PageState:
    """Set by the portal's and the console's middleware for every request."""

    area: str = ""
    theme: str = "light"
    session: Session | None = None
    csrf: str = ""


STATE = web.RequestKey("relay_web", PageState)


def state(request: web.Request) -> PageState:
    found = request.get(STATE)
    if found is None:
        found = request[STATE] = PageState()
    return found


def base_context(request: web.Request) -> dict[str, Any]:
    s = state(request)
    return {"session": s.session, "csrf": s.csrf, "theme": s.theme, "area": s.area}


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as pages (JSON for the few script endpoints), never a bare 500 with detail."""
    try:
        return await handler(request)
    except Unauthorized as exc:
        login = request.app.get(ON_LOGIN)
        if login and request.method == "GET" and not _wants_json(request):
            raise web.HTTPSeeOther(login) from None
        return _error(request, exc.status, exc.message, [])
    except ValidationFailed as exc:
        return _error(request, exc.status, "validation error", exc.problems)
    except RelayError as exc:
        return _error(request, exc.status, exc.message, [])
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(request, exc.status, exc.reason.lower(), [])
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if is_connection_failure(exc) or statement_cancelled(exc):
            return _error(request, 503, "the database is unavailable; retry shortly", [])
        refused = unstorable_value(exc)
        if refused is not None:
            message = f"the request holds a value PostgreSQL cannot take: {refused}"
            return _error(request, 400, message, [])
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(request, 500, "internal server error", [])


@web.middleware
async def refuse_nul(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A NUL character in a path, a query or a form field is a 400 naming it: PostgreSQL
    text cannot hold one, and no id, topic or URL relay keeps has one."""
    fields: list[tuple[str, str]] = [*request.match_info.items(), *request.query.items()]
    if request.method == "POST" and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        fields += [(k, v) for k, v in (await request.post()).items() if isinstance(v, str)]
    for name, value in fields:
        if "\x00" in value:
            raise BadRequest(f"{name} must not contain NUL (\\u0000)", data=[name])
    return await handler(request)


def _wants_json(request: web.Request) -> bool:
    return request.path.endswith(".json") or "application/json" in request.headers.get("Accept", "")


def _error(request: web.Request, status: int, message: str, problems: list[str]) -> web.Response:
    if _wants_json(request):
        body = {"status": status, "message": message, "data": problems or None}
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
    return error_page(request, status, message, problems)


def json_page(payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def form(request: web.Request) -> dict[str, str]:
    """A posted form's fields (the last value of each), as text."""
    data = await request.post()
    return {k: v for k, v in data.items() if isinstance(v, str)}
