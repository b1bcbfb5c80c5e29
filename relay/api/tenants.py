"""Tenants: PUT/GET/DELETE /tenants/{id}, GET /tenants, GET /tenants/{id}/token and
GET /tenants/{id}/portal."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncConnection
from yarl import URL

from relay.api import params
from relay.api.auth import Caller, authenticate, issue_tenant_token, require_admin
from relay.api.control import LIMIT_KEYS, check_control
from relay.api.errors import json_response
from relay.api.shapes import tenant_json
from relay.api.validation import StringMap, validate
from relay.appkeys import ENGINE, SETTINGS
from relay.config import Settings
from relay.db import admin
from relay.db.history import Position, paginate
from relay.errors import Conflict, NotFound, ValidationFailed
from relay.opevents import OPERATOR_TENANT
from relay.web import sessions

PREFIX = "/api/v1"
routes = web.RouteTableDef()

MAX_ID_LENGTH = 255


def config_conflict(settings: Settings, what: str) -> Conflict:
    source = settings.config_path or "relay's configuration"
    return Conflict(
        f"{what} is declared in the config file {source}, which is its source of truth; "
        f"change it there and restart relay (the API cannot change it)"
    )


def check_id(value: str, field: str) -> None:
    if len(value) > MAX_ID_LENGTH:
        raise ValidationFailed([f"{field} must be at most {MAX_ID_LENGTH} characters"])
    if any(c.isspace() or ord(c) < 32 or c == "/" for c in value):
        raise ValidationFailed([f"{field} must not contain spaces, control characters or '/'"])


def not_relays_own(caller: Caller, tenant_id: str) -> None:
    """relay/operator is reached through /operator-events only (relay/api/operator_events.py
    acts as it), never as a tenant: an id with '/' still reaches here spelled %2F."""
    if tenant_id == OPERATOR_TENANT and caller.tenant_id != OPERATOR_TENANT:
        raise NotFound(f"tenant {tenant_id!r} not found")


async def require_tenant(conn: AsyncConnection, caller: Caller, tenant_id: str) -> admin.Tenant:
    caller.check_tenant(tenant_id)
    not_relays_own(caller, tenant_id)
    tenant = await admin.get_tenant(conn, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return tenant


class TenantUpsertBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Values of other JSON types are converted to strings, as Outpost converts them.
    metadata: StringMap | None = None
    # relay's extension: the tenant's delivery control defaults (absent: kept; an object
    # replaces them all; null clears them). Checked by relay/api/control.py.
    delivery_control: Any = None


@routes.put(PREFIX + "/tenants/{tenant_id:[^/]+}")
async def upsert_tenant(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    tenant_id = request.match_info["tenant_id"]
    caller.check_tenant(tenant_id)
    check_id(tenant_id, "tenant_id")
    body = validate(TenantUpsertBody, await params.optional_json(request))
    # Absent: keep what is stored; null: clear it.
    metadata = (body.metadata or {}) if "metadata" in body.model_fields_set else None
    limits = None
    if "delivery_control" in body.model_fields_set:
        problems: list[str] = []
        limits = check_control(body.delivery_control, problems, {}, LIMIT_KEYS)
        if problems:
            raise ValidationFailed(problems)
    async with request.app[ENGINE].begin() as conn:
        created = await admin.upsert_tenant(conn, tenant_id, metadata, limits)
        if created is None:
            raise config_conflict(request.app[SETTINGS], f"tenant {tenant_id!r}")
        tenant = await admin.get_tenant(conn, tenant_id)
    assert tenant is not None
    return json_response(tenant_json(tenant), status=201 if created else 200)


@routes.get(PREFIX + "/tenants/{tenant_id:[^/]+}")
async def get_tenant(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    async with request.app[ENGINE].connect() as conn:
        tenant = await require_tenant(conn, caller, request.match_info["tenant_id"])
    return json_response(tenant_json(tenant))


@routes.delete(PREFIX + "/tenants/{tenant_id:[^/]+}")
async def delete_tenant(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    tenant_id = request.match_info["tenant_id"]
    caller.check_tenant(tenant_id)
    not_relays_own(caller, tenant_id)
    async with request.app[ENGINE].begin() as conn:
        origin = await admin.tenant_origin(conn, tenant_id)
        if origin is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        if origin != "api":
            raise config_conflict(request.app[SETTINGS], f"tenant {tenant_id!r}")
        await admin.delete_tenant(conn, tenant_id)
    return json_response({"success": True})


@routes.get(PREFIX + "/tenants")
async def list_tenants(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    ids = caller.tenant_filter(params.multi(request, "id"))
    limit = params.limit(request, default=20, maximum=100)
    desc = params.descending(request)
    cursor = params.cursor(request, kind="tenants", desc=desc)
    async with request.app[ENGINE].connect() as conn:

        async def fetch(after: Position | None, d: bool, n: int) -> list[admin.Tenant]:
            return await admin.list_tenants(conn, ids=ids, after=after, descending=d, limit=n)

        page = await paginate(
            fetch,
            lambda t: Position(t.created_at, t.id),
            kind="tenants",
            limit=limit,
            descending=desc,
            cursor=cursor,
        )
        count = await admin.count_tenants(conn, ids)
    return json_response(
        {
            "models": [tenant_json(t) for t in page.rows],
            "pagination": {
                "order_by": "created_at",
                "dir": "desc" if desc else "asc",
                "limit": limit,
                "next": page.next,
                "prev": page.prev,
            },
            "count": count,
        }
    )


@routes.get(PREFIX + "/tenants/{tenant_id:[^/]+}/token")
async def tenant_token(request: web.Request) -> web.Response:
    require_admin(request)
    tenant_id = request.match_info["tenant_id"]
    not_relays_own(Caller(), tenant_id)
    async with request.app[ENGINE].connect() as conn:
        tenant = await admin.get_tenant(conn, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    token = issue_tenant_token(request.app[SETTINGS], tenant_id, tenant.created_at)
    return json_response({"token": token, "tenant_id": tenant_id})


@routes.get(PREFIX + "/tenants/{tenant_id:[^/]+}/portal")
async def tenant_portal(request: web.Request) -> web.Response:
    """Outpost's portal link: ``{redirect_url, tenant_id}``, the URL carrying a token that
    is good for a few minutes and only for starting a portal session (relay/web/)."""
    require_admin(request)
    tenant_id = request.match_info["tenant_id"]
    theme = params.single(request, "theme")
    if theme is not None and theme not in ("light", "dark"):
        raise ValidationFailed(["theme must be light or dark"])
    async with request.app[ENGINE].connect() as conn:
        tenant = await admin.get_tenant(conn, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    settings = request.app[SETTINGS]
    token = sessions.issue_link_token(settings, tenant_id, tenant.created_at)
    base = settings.server.public_url or str(request.url.origin())
    query = {"token": token, "tenant_id": tenant_id} | ({"theme": theme} if theme else {})
    url = URL(base.rstrip("/") + "/portal").with_query(query)
    return json_response({"redirect_url": str(url), "tenant_id": tenant_id})
