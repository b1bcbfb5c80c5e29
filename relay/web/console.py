"""The operator console under /console, behind the admin key.

What `relay stats`, `relay events show` and `relay replay` tell on a terminal, as pages:
every tenant, the outbox backlog and its oldest pending delivery, failing and disabled
destinations, an event's whole story, and bulk replay (a dry-run count first, then the
replay in batches, with its progress and the new attempts shown as they are recorded).
The SQL is relay/db/ops.py's and relay/db/web.py's; the replay loop is relay/ops.py's.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

from aiohttp import web

from relay import ops as operator
from relay.api.auth import issue_tenant_token
from relay.api.params import parse_time
from relay.appkeys import ENGINE, SETTINGS
from relay.db import admin, ops
from relay.db import web as web_db
from relay.db.history import Position
from relay.errors import BadRequest, Forbidden, NotFound, Unauthorized
from relay.web import sessions
from relay.web.pages import Handler, base_context, form, json_page, render, state

log = logging.getLogger(__name__)

routes = web.RouteTableDef()
LOGIN_COOKIE = "relay_console_login"
TENANT_PAGE = 100


# The replays this process runs (a replay's progress is in relay.replay_jobs, which
# every process reads).
JOBS = web.AppKey("replay_jobs", dict[str, asyncio.Task[None]])


async def replay_jobs(app: web.Application) -> AsyncIterator[None]:
    app[JOBS] = {}
    yield
    await stop_replays(app)


async def stop_replays(app: web.Application) -> None:
    """The console's replays run in the process that started them. Stopping it (at
    shutdown, while the database is still there) cancels them between batches: each
    batch is its own transaction, so nothing is left half done, and each replay's row
    says it stopped."""
    tasks = list(app[JOBS].values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    return render(request, template, base_context(request) | context, status=status)


@web.middleware
async def console_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    page = state(request)
    page.area = "console"
    path = request.path
    if path.startswith("/console/static/") or path == "/console/login":
        return await handler(request)
    token = request.cookies.get(sessions.CONSOLE_COOKIE)
    if not token:
        raise Unauthorized("the console needs the admin key: sign in")
    settings = request.config_dict[SETTINGS]
    session = sessions.read_console_session(settings, token)
    page.session = session
    page.csrf = session.csrf(settings)
    if request.method not in ("GET", "HEAD"):
        sent = request.headers.get(sessions.CSRF_HEADER)
        if sent is None:
            sent = (await form(request)).get(sessions.CSRF_FIELD)
        sessions.check_csrf(settings, request, session, sent)
    return await handler(request)


# --- signing in ----------------------------------------------------------------------------


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    response = _page(request, "console/login.html", page="login", login_nonce=nonce, problem=None)
    sessions.set_cookie(request, response, LOGIN_COOKIE, nonce, 600)
    return response


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    fields = await form(request)
    settings = request.config_dict[SETTINGS]
    # Login CSRF: the form's nonce must be the one this browser was given with it.
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if (
        not sessions.same_origin(request)
        or not nonce
        or not hmac.compare_digest(nonce, fields.get("login_nonce", ""))
    ):
        raise Forbidden("the sign-in form expired or came from another site; reload it")
    key = settings.admin_api_key
    given = fields.get("admin_key", "")
    if not key or not hmac.compare_digest(given.encode(), key.encode()):
        response = _page(
            request,
            "console/login.html",
            status=401,
            page="login",
            login_nonce=nonce,
            problem="admin_key: that is not the admin API key",
        )
        return response
    response = web.HTTPSeeOther("/console/")
    sessions.set_cookie(
        request,
        response,
        sessions.CONSOLE_COOKIE,
        sessions.console_session(settings),
        sessions.CONSOLE_SESSION_SECONDS,
    )
    sessions.clear_cookie(response, LOGIN_COOKIE)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/console/login")
    sessions.clear_cookie(response, sessions.CONSOLE_COOKIE)
    raise response


# --- overview ------------------------------------------------------------------------------


@routes.get("")
@routes.get("/")
async def overview(request: web.Request) -> web.Response:
    async with request.config_dict[ENGINE].connect() as conn:
        backlog = await ops.backlog(conn)
        troubled = await web_db.troubled_destinations(conn)
        tenants = await admin.list_tenants(
            conn, ids=None, after=None, descending=False, limit=TENANT_PAGE + 1
        )
        tenant_count = await admin.count_tenants(conn, None)
        last = await web_db.last_attempt_id(conn)
        recent = await web_db.attempts_after(conn, max(last - 20, 0))
    oldest = min(
        (row["oldest_created_at"] for row in backlog if row["status"] == "pending"),
        default=None,
    )
    return _page(
        request,
        "console/overview.html",
        page="overview",
        backlog=backlog,
        oldest_pending=oldest,
        troubled=troubled,
        tenants=tenants[:TENANT_PAGE],
        more_tenants=len(tenants) > TENANT_PAGE,
        tenant_count=tenant_count,
        recent=list(reversed(recent)),
        last_attempt=last,
    )


@routes.get("/tenants")
async def tenant_list(request: web.Request) -> web.Response:
    after_id = request.query.get("after_id")
    after_time = request.query.get("after_time")
    after = None
    if after_id and after_time:
        try:
            after = Position(parse_time(after_time), after_id)
        except ValueError:
            raise BadRequest("after_time must be a time (it comes from a Next link)") from None
    async with request.config_dict[ENGINE].connect() as conn:
        rows = await admin.list_tenants(
            conn, ids=None, after=after, descending=False, limit=TENANT_PAGE + 1
        )
        count = await admin.count_tenants(conn, None)
    return _page(
        request,
        "console/tenants.html",
        page="tenants",
        tenants=rows[:TENANT_PAGE],
        more=rows[TENANT_PAGE - 1] if len(rows) > TENANT_PAGE else None,
        count=count,
    )


@routes.get("/tenants/{tenant_id:[^/]+}")
async def tenant_detail(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant_id"]
    async with request.config_dict[ENGINE].connect() as conn:
        tenant = await admin.get_tenant(conn, tenant_id)
        if tenant is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        health = await web_db.tenant_health(conn, tenant_id)
    return _page(
        request,
        "console/tenant.html",
        page="tenants",
        tenant=tenant,
        health=health,
        recent=web_db.RECENT,
    )


@routes.post("/tenants/{tenant_id:[^/]+}/portal")
async def open_portal(request: web.Request) -> web.StreamResponse:
    """Open the tenant's portal as the tenant sees it (a fresh link, used at once)."""
    tenant_id = request.match_info["tenant_id"]
    settings = request.config_dict[SETTINGS]
    async with request.config_dict[ENGINE].connect() as conn:
        created = await admin.live_tenant_created_at(conn, tenant_id)
    if created is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    issue_tenant_token(settings, tenant_id, created)  # 401 when no key is configured
    token = sessions.issue_link_token(settings, tenant_id, created)
    raise web.HTTPSeeOther(f"/portal?token={token}")


# --- an event's story ----------------------------------------------------------------------


@routes.get("/events")
async def event_lookup(request: web.Request) -> web.Response:
    event_id = (request.query.get("id") or "").strip()
    tenant_id = (request.query.get("tenant_id") or "").strip() or None
    stories: list[ops.EventStory] = []
    if event_id:
        async with request.config_dict[ENGINE].connect() as conn:
            stories = await ops.event_stories(conn, event_id, tenant_id)
    return _page(
        request,
        "console/event.html",
        page="events",
        event_id=event_id,
        tenant_id=tenant_id or "",
        stories=stories,
        searched=bool(event_id),
    )


# --- replay --------------------------------------------------------------------------------

STATUSES = ("failed", "delivered", "pending")


def _selection(fields: dict[str, str], statuses: list[str]) -> ops.ReplayFilter:
    problems = []
    chosen = [s for s in statuses if s]
    for status in chosen:
        if status not in STATUSES:
            problems.append(f"status must be one of {', '.join(STATUSES)} (got {status!r})")
    since = until = None
    for name in ("since", "until"):
        raw = fields.get(name, "").strip()
        if raw:
            try:
                value = parse_time(raw)
            except Exception:
                problems.append(f"{name} must be a time such as 2026-12-07T10:00:00Z")
                continue
            if name == "since":
                since = value
            else:
                until = value
    if problems:
        raise BadRequest("; ".join(problems), data=problems)
    return ops.ReplayFilter(
        statuses=tuple(chosen or ["failed"]),
        tenant_id=fields.get("tenant_id", "").strip() or None,
        destination_id=fields.get("destination_id", "").strip() or None,
        since=since,
        until=until,
    )


def _replay_values(fields: dict[str, str], statuses: list[str]) -> dict[str, Any]:
    return {
        "tenant_id": fields.get("tenant_id", ""),
        "destination_id": fields.get("destination_id", ""),
        "since": fields.get("since", ""),
        "until": fields.get("until", ""),
        "statuses": statuses or ["failed"],
    }


@routes.get("/replay")
async def replay_form(request: web.Request) -> web.Response:
    fields = {k: v for k, v in request.query.items()}
    statuses = request.query.getall("status", [])
    return _page(
        request,
        "console/replay.html",
        page="replay",
        values=_replay_values(fields, statuses),
        count=None,
        problems=[],
    )


@routes.post("/replay")
async def replay(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    fields = {k: v for k, v in data.items() if isinstance(v, str)}
    statuses = [v for v in data.getall("status", []) if isinstance(v, str)]
    values = _replay_values(fields, statuses)
    try:
        selection = _selection(fields, statuses)
    except BadRequest as exc:
        problems = exc.data if isinstance(exc.data, list) else [exc.message]
        return _page(
            request,
            "console/replay.html",
            status=400,
            page="replay",
            values=values,
            count=None,
            problems=problems,
        )
    engine = request.config_dict[ENGINE]
    async with engine.connect() as conn:
        count = await ops.replay_count(conn, selection)
        last = await web_db.last_attempt_id(conn)
    if fields.get("action") != "replay":
        return _page(
            request,
            "console/replay.html",
            page="replay",
            values=values,
            count=count,
            problems=[],
        )
    job_id = secrets.token_hex(8)
    async with engine.begin() as conn:
        await ops.start_replay_job(conn, job_id, selection, count, last)
    tasks = request.app[JOBS]
    task = asyncio.create_task(_run(engine, job_id, selection, count), name=f"replay {job_id}")
    tasks[job_id] = task
    task.add_done_callback(lambda _: tasks.pop(job_id, None))
    raise web.HTTPSeeOther(f"/console/replay/{job_id}")


async def _run(engine: Any, job_id: str, selection: ops.ReplayFilter, total: int) -> None:
    error: str | None = None
    try:
        async for _ in operator.replay_batches(engine, selection, total=total, job=job_id):
            pass
    except asyncio.CancelledError:
        error = "stopped: relay is shutting down"
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        try:
            async with engine.begin() as conn:
                await ops.finish_replay_job(conn, job_id, error)
        except Exception as exc:  # the row then shows it stalled
            log.warning("replay %s: its end could not be written: %s", job_id, exc)


async def _job(request: web.Request) -> tuple[ops.ReplayJob, Any]:
    async with request.config_dict[ENGINE].connect() as conn:
        job = await ops.replay_job(conn, request.match_info["job_id"])
        if job is None:
            raise NotFound("no such replay")
        attempts = await web_db.attempts_after(
            conn, job.after_attempt, job.selection.tenant_id, limit=200
        )
    return job, attempts


@routes.get("/replay/{job_id:[0-9a-f]+}")
async def replay_progress(request: web.Request) -> web.Response:
    job, attempts = await _job(request)
    return _page(
        request,
        "console/replay_progress.html",
        page="replay",
        job=job,
        progress=job.as_json(),
        attempts=list(reversed(attempts)),
    )


@routes.get("/replay/{job_id:[0-9a-f]+}.json")
async def replay_progress_json(request: web.Request) -> web.Response:
    async with request.config_dict[ENGINE].connect() as conn:
        job = await ops.replay_job(conn, request.match_info["job_id"])
    if job is None:
        raise NotFound("no such replay")
    return json_page(job.as_json())


# --- the live feed -------------------------------------------------------------------------


@routes.get("/attempts.json")
async def attempts_feed(request: web.Request) -> web.Response:
    """Attempts recorded after ``after`` (the newest id a page shows), oldest first."""
    raw = request.query.get("after", "0")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadRequest("after must be an attempt id (a whole number)")
    tenant_id = request.query.get("tenant_id") or None
    async with request.config_dict[ENGINE].connect() as conn:
        rows = await web_db.attempts_after(conn, int(raw), tenant_id)
    return json_page(
        [
            {
                "id": r["id"],
                "started_at": r["started_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "tenant_id": r["tenant_id"],
                "destination_id": r["destination_id"],
                "event_id": r["event_id"],
                "number": r["number"],
                "status": r["status"],
                "code": str(r["http_status"]) if r["http_status"] is not None else r["error_code"],
                "duration_ms": r["duration_ms"],
                "manual": r["manual"],
            }
            for r in rows
        ]
    )
