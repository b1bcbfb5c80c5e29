"""The tenant portal under /portal: what Outpost's portal shows, served by relay.

A session is one tenant's (relay/web/sessions.py); every handler passes that tenant as
the API's ``Caller``, and the work is done by the API's own functions (relay/api/), so
the portal can do nothing the tenant's token could not. Forms post back here with the
session's CSRF token and are answered with a redirect (or the form again, with the
API's validation messages, naming each field).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from relay import routing, webhook_formats
from relay.api import destinations as destinations_api
from relay.api import retry as retry_api
from relay.api.auth import Caller
from relay.appkeys import ENGINE, SETTINGS
from relay.config import Settings
from relay.db import admin, aggregates, history, outbox
from relay.db import web as web_db
from relay.delivery import webhook
from relay.errors import BadRequest, NotFound, RelayError, Unauthorized, ValidationFailed
from relay.web import charts, sessions
from relay.web.pages import Handler, base_context, form, json_page, render, state

routes = web.RouteTableDef()
PAGE_SIZE = 50


def _caller(request: web.Request) -> Caller:
    session = state(request).session
    assert session is not None and session.tenant_id is not None
    return Caller(session.tenant_id)


def _tenant(request: web.Request) -> str:
    tenant = _caller(request).tenant_id
    assert tenant is not None
    return tenant


def _page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    return render(
        request,
        template,
        base_context(request) | {"tenant_id": _tenant(request)} | context,
        status=status,
    )


@web.middleware
async def portal_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every page but the link's landing and /static needs a session; posts need CSRF."""
    page = state(request)
    page.area = "portal"
    page.theme = "dark" if request.cookies.get("relay_theme") == "dark" else "light"
    path = request.path
    if path in ("/portal", "/portal/") and "token" in request.query:
        return await handler(request)
    if path.startswith("/portal/static/") or path == "/portal/signed-out":
        return await handler(request)
    token = request.cookies.get(sessions.PORTAL_COOKIE)
    if not token:
        raise Unauthorized(
            "no portal session: open the portal through a fresh link from your provider"
        )
    settings = request.config_dict[SETTINGS]
    async with request.config_dict[ENGINE].connect() as conn:
        session = await sessions.read_portal_session(settings, conn, token)
    page.session = session
    page.csrf = session.csrf(settings)
    if request.method not in ("GET", "HEAD"):
        sent = request.headers.get(sessions.CSRF_HEADER)
        if sent is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            sent = (await form(request)).get(sessions.CSRF_FIELD)
        sessions.check_csrf(settings, request, session, sent)
    return await handler(request)


# --- the link ----------------------------------------------------------------------------


@routes.get("")
@routes.get("/")
async def landing(request: web.Request) -> web.StreamResponse:
    """The link's landing: exchange its token for a session cookie, then leave the URL."""
    token = request.query.get("token")
    # A HEAD (a link checker, a mail scanner) does not spend the link.
    if token is None or request.method == "HEAD":
        raise web.HTTPSeeOther("/portal/destinations")
    settings = request.config_dict[SETTINGS]
    async with request.config_dict[ENGINE].begin() as conn:
        tenant_id, created = await sessions.redeem_link(settings, conn, token)
    # A redirect, not a page: the address bar (and history) never keeps the token.
    response = web.HTTPSeeOther("/portal/destinations")
    sessions.set_cookie(
        request,
        response,
        sessions.PORTAL_COOKIE,
        sessions.portal_session(settings, tenant_id, created),
        sessions.PORTAL_SESSION_SECONDS,
    )
    theme = request.query.get("theme")
    if theme in ("light", "dark"):
        response.set_cookie("relay_theme", theme, path="/portal", samesite="Lax", httponly=True)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/portal/signed-out")
    sessions.clear_cookie(response, sessions.PORTAL_COOKIE)
    raise response


@routes.get("/signed-out")
async def signed_out(request: web.Request) -> web.Response:
    return render(request, "portal/signed_out.html", base_context(request))


# --- destinations --------------------------------------------------------------------------


@routes.get("/destinations")
async def destination_list(request: web.Request) -> web.Response:
    tenant_id = _tenant(request)
    async with request.config_dict[ENGINE].connect() as conn:
        found = await admin.list_destinations(conn, tenant_id)
        health = {h["destination_id"]: h for h in await web_db.tenant_health(conn, tenant_id)}
    rows = [{"d": d, "health": health.get(d.id)} for d in found]
    return _page(
        request,
        "portal/destinations.html",
        page="destinations",
        rows=rows,
        recent=web_db.RECENT,
        notice=_notice(request),
    )


def _topics_field(request: web.Request, fields: dict[str, str], multi: list[str]) -> Any:
    if fields.get("all_topics") == "on":
        return "*"
    if request.config_dict[SETTINGS].topics:
        return multi
    return [t.strip() for t in fields.get("topics", "").split(",") if t.strip()]


def _json_field(fields: dict[str, str], name: str, problems: list[str]) -> Any:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        problems.append(f"{name} is not valid JSON: {exc}")
        return None


async def _destination_payload(request: web.Request, *, create: bool) -> dict[str, Any]:
    """The form as the API's JSON body (its validation then names the fields)."""
    data = await request.post()
    fields = {k: v for k, v in data.items() if isinstance(v, str)}
    multi = [v for v in data.getall("topic", []) if isinstance(v, str)]
    problems: list[str] = []
    rule = _json_field(fields, "filter", problems)
    if rule is not None and not isinstance(rule, dict):
        problems.append("filter must be a JSON object")
    headers = fields.get("custom_headers", "").strip()
    if problems:
        raise ValidationFailed(problems)
    config: dict[str, Any] = {
        "url": fields.get("url", "").strip(),
        "custom_headers": headers or None,
        "webhook_mode": fields.get("webhook_mode") or None,
    }
    payload: dict[str, Any] = {
        "topics": _topics_field(request, fields, multi),
        "filter": rule,
        "config": config,
    }
    if create:
        payload["type"] = "webhook"
        if fields.get("id", "").strip():
            payload["id"] = fields["id"].strip()
    return payload


def _form_context(request: web.Request, values: dict[str, Any]) -> dict[str, Any]:
    return {"catalogue": request.config_dict[SETTINGS].topics, "values": values}


def _values(d: admin.Destination | None) -> dict[str, Any]:
    if d is None:
        return {
            "id": "",
            "url": "",
            "topics": [],
            "all_topics": True,
            "filter": "",
            "custom_headers": "",
            "webhook_mode": "",
        }
    return {
        "id": d.id,
        "url": d.url,
        "topics": d.topics,
        "all_topics": d.topics == ["*"],
        "filter": orjson.dumps(d.filter, option=orjson.OPT_INDENT_2).decode() if d.filter else "",
        "custom_headers": orjson.dumps(d.custom_headers).decode() if d.custom_headers else "",
        "webhook_mode": d.webhook_mode or "",
    }


def _posted_values(fields: dict[str, str], multi: list[str]) -> dict[str, Any]:
    return {
        "id": fields.get("id", ""),
        "url": fields.get("url", ""),
        "topics": multi or [t.strip() for t in fields.get("topics", "").split(",") if t],
        "all_topics": fields.get("all_topics") == "on",
        "filter": fields.get("filter", ""),
        "custom_headers": fields.get("custom_headers", ""),
        "webhook_mode": fields.get("webhook_mode", ""),
    }


@routes.get("/destinations/new")
async def destination_new(request: web.Request) -> web.Response:
    return _page(
        request,
        "portal/destination_form.html",
        page="destinations",
        editing=None,
        problems=[],
        **_form_context(request, _values(None)),
    )


async def _form_again(
    request: web.Request, exc: ValidationFailed | RelayError, editing: str | None
) -> web.Response:
    data = await request.post()
    fields = {k: v for k, v in data.items() if isinstance(v, str)}
    multi = [v for v in data.getall("topic", []) if isinstance(v, str)]
    problems = exc.problems if isinstance(exc, ValidationFailed) else [exc.message]
    return _page(
        request,
        "portal/destination_form.html",
        status=exc.status,
        page="destinations",
        editing=editing,
        problems=problems,
        **_form_context(request, _posted_values(fields, multi)),
    )


@routes.post("/destinations")
async def destination_create(request: web.Request) -> web.StreamResponse:
    try:
        payload = await _destination_payload(request, create=True)
        created = await destinations_api.create(
            request.config_dict, _caller(request), _tenant(request), payload
        )
    except (ValidationFailed, BadRequest) as exc:
        return await _form_again(request, exc, None)
    raise web.HTTPSeeOther(f"/portal/destinations/{_quote(created.id)}?created=1")


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


async def _load(request: web.Request) -> admin.Destination:
    async with request.config_dict[ENGINE].connect() as conn:
        return await destinations_api.load(
            conn,
            _caller(request),
            _tenant(request),
            request.match_info["destination_id"],
            lock=False,
        )


@routes.get("/destinations/{destination_id:[^/]+}")
async def destination_detail(request: web.Request) -> web.Response:
    return await _detail(request, revealed=False)


@routes.post("/destinations/{destination_id:[^/]+}/reveal")
async def destination_reveal(request: web.Request) -> web.Response:
    """The secret, shown only on this explicit action (pages are never cached)."""
    return await _detail(request, revealed=True)


async def _detail(request: web.Request, *, revealed: bool) -> web.Response:
    d = await _load(request)
    tenant_id = _tenant(request)
    async with request.config_dict[ENGINE].connect() as conn:
        health = await web_db.destination_health(conn, tenant_id, d.id)
        page = await history.list_attempts(
            conn,
            history.AttemptFilter(tenant_ids=[tenant_id], destination_ids=[d.id]),
            limit=10,
            descending=True,
            cursor=None,
        )
        chart = await _attempt_chart(conn, tenant_id, [d.id])
    return _page(
        request,
        "portal/destination.html",
        page="destinations",
        d=d,
        health=health,
        attempts=page.rows,
        chart=chart,
        revealed=d.secret if revealed else None,
        notice=None if revealed else _notice(request),
    )


def _notice(request: web.Request) -> str | None:
    for key, text in (
        ("created", "Destination created."),
        ("saved", "Changes saved."),
        ("enabled", "Destination enabled."),
        ("disabled", "Destination disabled."),
        ("rotated", "Secret rotated: the previous secret keeps signing for 24 hours."),
        ("retried", "Retry queued: a new attempt appears below shortly."),
        ("deleted", "Destination deleted."),
    ):
        if key in request.query:
            return text
    return None


@routes.get("/destinations/{destination_id:[^/]+}/edit")
async def destination_edit(request: web.Request) -> web.Response:
    d = await _load(request)
    if d.type != "webhook":
        # The form is a webhook's; other types are changed through the API.
        raise BadRequest(f"the portal edits webhook destinations; {d.id!r} is {d.type}")
    return _page(
        request,
        "portal/destination_form.html",
        page="destinations",
        editing=d.id,
        problems=[],
        **_form_context(request, _values(d)),
    )


@routes.post("/destinations/{destination_id:[^/]+}/edit")
async def destination_update(request: web.Request) -> web.StreamResponse:
    destination_id = request.match_info["destination_id"]
    try:
        payload = await _destination_payload(request, create=False)
        await destinations_api.update(
            request.config_dict, _caller(request), _tenant(request), destination_id, payload
        )
    except (ValidationFailed, BadRequest) as exc:
        return await _form_again(request, exc, destination_id)
    raise web.HTTPSeeOther(f"/portal/destinations/{_quote(destination_id)}?saved=1")


@routes.post("/destinations/{destination_id:[^/]+}/{action:enable|disable}")
async def destination_toggle(request: web.Request) -> web.StreamResponse:
    destination_id = request.match_info["destination_id"]
    action = request.match_info["action"]
    await destinations_api.set_enabled(
        request.config_dict, _caller(request), _tenant(request), destination_id, action == "enable"
    )
    raise web.HTTPSeeOther(f"/portal/destinations/{_quote(destination_id)}?{action}d=1")


@routes.post("/destinations/{destination_id:[^/]+}/rotate")
async def destination_rotate(request: web.Request) -> web.StreamResponse:
    destination_id = request.match_info["destination_id"]
    await destinations_api.update(
        request.config_dict,
        _caller(request),
        _tenant(request),
        destination_id,
        {"credentials": {"rotate_secret": True}},
    )
    raise web.HTTPSeeOther(f"/portal/destinations/{_quote(destination_id)}?rotated=1")


@routes.get("/destinations/{destination_id:[^/]+}/delete")
async def destination_delete_confirm(request: web.Request) -> web.Response:
    d = await _load(request)
    return _page(request, "portal/confirm_delete.html", page="destinations", d=d)


@routes.post("/destinations/{destination_id:[^/]+}/delete")
async def destination_delete(request: web.Request) -> web.StreamResponse:
    await destinations_api.delete(
        request.config_dict,
        _caller(request),
        _tenant(request),
        request.match_info["destination_id"],
    )
    raise web.HTTPSeeOther("/portal/destinations?deleted=1")


@routes.post("/filter-check")
async def filter_check(request: web.Request) -> web.Response:
    """The create form's live check: is the filter valid, and does the sample match?"""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("body must be JSON: {filter, sample}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object: {filter, sample}")
    problems: list[str] = []
    rule = _parse_text(body.get("filter"), "filter", problems)
    sample = _parse_text(body.get("sample"), "sample", problems)
    if rule is not None and not isinstance(rule, dict):
        problems.append("filter must be a JSON object")
    if sample is not None and not isinstance(sample, dict):
        problems.append("sample must be a JSON object: {topic, metadata, data}")
    if not problems and rule:
        problems.extend(routing.filter_problems(rule))
    if problems:
        return json_page({"valid": False, "problems": problems, "matches": None})
    matches = None
    if isinstance(sample, dict):
        subject = routing.filter_subject(
            str(sample.get("id", "evt_sample")),
            str(sample.get("topic", "")),
            {str(k): str(v) for k, v in (sample.get("metadata") or {}).items()},
            sample.get("data", {}),
            datetime.now(UTC),
        )
        matches = routing.filter_matches(rule, subject) if rule else True
    return json_page({"valid": True, "problems": [], "matches": matches})


def _parse_text(value: object, name: str, problems: list[str]) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        problems.append(f"{name} is not valid JSON: {exc}")
        return None


# --- events and attempts -------------------------------------------------------------------


def _cursor(request: web.Request, kind: str) -> history.Cursor | None:
    raw = request.query.get("cursor")
    if not raw:
        return None
    try:
        return history.decode_cursor(raw, kind=kind, descending=True)
    except history.BadCursor:
        raise BadRequest("cursor is not valid (it comes from a Next or Previous link)") from None


def _choice(request: web.Request, name: str) -> str | None:
    return request.query.get(name) or None


@routes.get("/events")
async def event_list(request: web.Request) -> web.Response:
    tenant_id = _tenant(request)
    destination = _choice(request, "destination_id")
    topic = _choice(request, "topic")
    event_id = (request.query.get("id") or "").strip()
    f = history.EventFilter(
        tenant_ids=[tenant_id],
        ids=[event_id] if event_id else [],
        topics=[topic] if topic else [],
        destination_ids=[destination] if destination else [],
    )
    async with request.config_dict[ENGINE].connect() as conn:
        page = await history.list_events(
            conn, f, limit=PAGE_SIZE, descending=True, cursor=_cursor(request, "events")
        )
        destinations = await admin.list_destinations(conn, tenant_id)
    return _page(
        request,
        "portal/events.html",
        page="events",
        events=page.rows,
        next=page.next,
        prev=page.prev,
        destinations=destinations,
        filters={"destination_id": destination or "", "topic": topic or "", "id": event_id},
    )


@routes.get("/events/{event_id:[^/]+}")
async def event_detail(request: web.Request) -> web.Response:
    tenant_id = _tenant(request)
    event_id = request.match_info["event_id"]
    async with request.config_dict[ENGINE].connect() as conn:
        event = await history.get_event(conn, event_id, [tenant_id])
        if event is None:
            raise NotFound(f"event {event_id!r} not found")
        page = await history.list_attempts(
            conn,
            history.AttemptFilter(tenant_ids=[tenant_id], event_ids=[event_id]),
            limit=100,
            descending=True,
            cursor=None,
        )
    return _page(
        request,
        "portal/event.html",
        page="events",
        event=event,
        attempts=page.rows,
        notice=_notice(request),
    )


@routes.get("/attempts")
async def attempt_list(request: web.Request) -> web.Response:
    tenant_id = _tenant(request)
    destination = _choice(request, "destination_id")
    status = _choice(request, "status")
    if status not in (None, "success", "failed"):
        raise BadRequest("status must be success or failed")
    f = history.AttemptFilter(
        tenant_ids=[tenant_id],
        destination_ids=[destination] if destination else [],
        status=status,
    )
    async with request.config_dict[ENGINE].connect() as conn:
        page = await history.list_attempts(
            conn, f, limit=PAGE_SIZE, descending=True, cursor=_cursor(request, "attempts")
        )
        destinations = await admin.list_destinations(conn, tenant_id)
    return _page(
        request,
        "portal/attempts.html",
        page="attempts",
        attempts=page.rows,
        next=page.next,
        prev=page.prev,
        destinations=destinations,
        filters={"destination_id": destination or "", "status": status or ""},
    )


@routes.get("/attempts/{attempt_id:[^/]+}")
async def attempt_detail(request: web.Request) -> web.Response:
    tenant_id = _tenant(request)
    raw = request.match_info["attempt_id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) < 19):
        raise NotFound(f"attempt {raw!r} not found")
    async with request.config_dict[ENGINE].connect() as conn:
        attempt = await history.get_attempt(
            conn, int(raw), history.AttemptFilter(tenant_ids=[tenant_id]), with_data=True
        )
        if attempt is None:
            raise NotFound(f"attempt {raw!r} not found")
        destination = await admin.get_destination(conn, tenant_id, attempt.destination_id)
    sent = None
    if destination is not None and destination.type == "webhook":
        sent = request_headers(request.config_dict[SETTINGS], attempt, destination)
    return _page(
        request,
        "portal/attempt.html",
        page="attempts",
        a=attempt,
        destination=destination,
        request_headers=sent,
        notice=_notice(request),
    )


def request_headers(
    settings: Settings, a: history.AttemptRow, d: admin.Destination
) -> dict[str, str]:
    """The headers of the attempt's request, rebuilt by the code that sent it
    (relay/delivery/webhook.py) from the event and the destination as it is now: relay keeps a
    response's headers, not a request's. Signatures are not shown (they depend on the
    secret at the time)."""
    claimed = outbox.Claimed(
        id=0,
        attempt=a.number,
        token=uuid.UUID(int=0),
        manual=a.manual,
        tenant_id=a.tenant_id,
        destination_id=a.destination_id,
        event_seq=0,
        event_id=a.event_id,
        topic=a.topic,
        body=orjson.dumps(a.event_data).decode() if a.event_data is not None else "{}",
        metadata=orjson.dumps(a.event_metadata).decode(),
        eligible_for_retry=a.eligible_for_retry,
        published_at=a.event_time,
        claimed_at=a.started_at,
        type="webhook",
        config="{}",
        credentials="{}",
        url=d.url,
        custom_headers=orjson.dumps(d.custom_headers).decode(),
        secret=d.secret,
        previous_secret=None,
        previous_secret_valid=False,
        signature_mode=d.webhook_mode,
        timeout_seconds=None,
        delivery_metadata=orjson.dumps(d.delivery_metadata).decode(),
    )
    formats = webhook_formats.from_settings(settings.delivery)
    headers, _ = webhook.build_request(claimed, a.started_at.timestamp(), formats)
    return {
        name: "(signed with the destination's secret)" if name.endswith("signature") else value
        for name, value in headers.items()
    }


@routes.post("/retry")
async def retry(request: web.Request) -> web.StreamResponse:
    fields = await form(request)
    event_id = fields.get("event_id", "")
    destination_id = fields.get("destination_id", "")
    await retry_api.retry_delivery(
        request.config_dict[ENGINE], _caller(request), event_id, destination_id
    )
    back = fields.get("back", "")
    if not back.startswith("/portal/") or "//" in back:
        back = f"/portal/events/{_quote(event_id)}"
    raise web.HTTPSeeOther(back + ("&" if "?" in back else "?") + "retried=1")


# --- metrics -------------------------------------------------------------------------------


async def _attempt_chart(
    conn: Any, tenant_id: str, destination_ids: list[str], hours: int = 24
) -> charts.Chart:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    filters: dict[str, list[str]] = {"tenant_id": [tenant_id]}
    if destination_ids:
        filters["destination_id"] = destination_ids
    result = await aggregates.attempt_metrics(
        conn,
        aggregates.Query(
            start,
            end,
            aggregates.parse_granularity("1h"),
            (),
            filters,
            ("count", "successful_count", "failed_count"),
        ),
    )
    return charts.hourly(result.buckets, start, hours)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    tenant_id = _tenant(request)
    hours = 24
    raw = request.query.get("hours")
    if raw is not None:
        if raw not in ("6", "24", "72", "168"):
            raise BadRequest("hours must be one of 6, 24, 72 or 168")
        hours = int(raw)
    destination = _choice(request, "destination_id")
    async with request.config_dict[ENGINE].connect() as conn:
        chart = await _attempt_chart(conn, tenant_id, [destination] if destination else [], hours)
        destinations = await admin.list_destinations(conn, tenant_id)
        latency = await web_db.latency(conn, tenant_id)
    return _page(
        request,
        "portal/metrics.html",
        page="metrics",
        chart=chart,
        hours=hours,
        destinations=destinations,
        filters={"destination_id": destination or ""},
        latency=latency,
        sample=web_db.LATENCY_SAMPLE,
    )
