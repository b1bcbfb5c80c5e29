"""Destinations: /tenants/{tenant_id}/destinations[/{destination_id}[/enable|/disable]].

PATCH follows RFC 7396 merge-patch: an absent field is left alone, ``null`` clears it,
``metadata``/``delivery_metadata`` (and a type's ``config`` and ``credentials``) merge key
by key. Config-declared destinations are shown but not changed here (409 naming the file).

Webhooks keep relay's own fields (url, custom_headers, webhook_mode, secret rotation) and
rules; every other type is its Provider's (relay/delivery/): its schema's fields, its
checks and defaults, and a 422 naming the extra to install when this relay cannot
deliver it. A host the SSRF guard refuses (relay/ssrf.py) is a 422 naming its field: a
webhook's url, and each host another type's values name (Provider.addresses).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from aiohttp.helpers import ChainMapProxy
from pydantic import BaseModel, ConfigDict, StrictStr
from yarl import URL

from relay import opevents, routing, ssrf, webhook_formats, webhooks
from relay.api import params
from relay.api.auth import Caller, authenticate
from relay.api.control import CONTROL_KEYS, check_control
from relay.api.errors import json_response
from relay.api.shapes import destination_json
from relay.api.tenants import check_id, config_conflict, require_tenant
from relay.api.validation import (
    StringMap,
    StringMapPatch,
    outpost_string,
    read_json,
    validate,
)
from relay.appkeys import ENGINE, OPERATOR_TOPICS, SETTINGS
from relay.config import DeliverySettings
from relay.db import admin
from relay.db import operator_events as opevents_db
from relay.db.outbox import Connection
from relay.delivery import registry
from relay.delivery.base import Provider
from relay.errors import Conflict, Forbidden, NotFound, ValidationFailed
from relay.signing import generate_secret

PREFIX = "/api/v1/tenants/{tenant_id:[^/]+}/destinations"
routes = web.RouteTableDef()

PREVIOUS_SECRET_GRACE = timedelta(hours=24)
# Headers relay sets itself; a destination may not override them.
CLOCK_SKEW = timedelta(minutes=1)


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: StrictStr
    custom_headers: StrictStr | None = None
    # relay's addition: "standard" or "outpost"; absent, "" or null: delivery.webhook_mode.
    webhook_mode: StrictStr | None = None


class WebhookCredentials(BaseModel):
    model_config = ConfigDict(extra="ignore")

    secret: StrictStr | None = None
    previous_secret: StrictStr | None = None
    previous_secret_invalid_at: datetime | None = None
    # Any JSON value, read as Outpost reads it (rotates()).
    rotate_secret: Any = None


class DestinationCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: StrictStr | None = None
    type: StrictStr
    topics: StrictStr | list[StrictStr]
    filter: dict[str, Any] | None = None
    config: WebhookConfig
    credentials: WebhookCredentials | None = None
    # Values of other JSON types are converted to strings, as Outpost converts them.
    delivery_metadata: StringMap | None = None
    metadata: StringMap | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    disabled_at: datetime | None = None
    delivery_control: Any = None


class TypedCreate(BaseModel):
    """A destination of any type but webhook: its config and credentials are maps of
    strings (other JSON values converted as Outpost converts them)."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr | None = None
    type: StrictStr
    topics: StrictStr | list[StrictStr]
    filter: dict[str, Any] | None = None
    config: StringMap | None = None
    credentials: StringMap | None = None
    delivery_metadata: StringMap | None = None
    metadata: StringMap | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    disabled_at: datetime | None = None
    delivery_control: Any = None


class WebhookConfigPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: StrictStr | None = None
    custom_headers: StrictStr | None = None
    webhook_mode: StrictStr | None = None


class DestinationPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: StrictStr | None = None
    topics: StrictStr | list[StrictStr] | None = None
    filter: dict[str, Any] | None = None
    config: WebhookConfigPatch | None = None
    credentials: WebhookCredentials | None = None
    delivery_metadata: StringMapPatch | None = None
    metadata: StringMapPatch | None = None
    disabled_at: datetime | None = None
    delivery_control: Any = None


class TypedPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: StrictStr | None = None
    topics: StrictStr | list[StrictStr] | None = None
    filter: dict[str, Any] | None = None
    config: StringMapPatch | None = None
    credentials: StringMapPatch | None = None
    delivery_metadata: StringMapPatch | None = None
    metadata: StringMapPatch | None = None
    disabled_at: datetime | None = None
    delivery_control: Any = None


# --- checks --------------------------------------------------------------------------


def rotates(value: object) -> bool:
    """``rotate_secret`` as Outpost reads it: true, or "true", "1", "on" or "yes" in any
    case (a number as its text); anything else does not rotate."""
    return outpost_string(value).lower() in ("true", "1", "on", "yes")


def check_type(value: str) -> None:
    if not registry.known(value):
        raise ValidationFailed([registry.unknown_type(value)])


def topic_list(value: str | list[str], catalogue: list[str], problems: list[str]) -> list[str]:
    if isinstance(value, str):
        if value != "*":
            problems.append('topics must be "*" or a list of topics')
        return ["*"]
    if not value:
        problems.append('topics must not be empty; use "*" for every topic')
    for index, topic in enumerate(value):
        if not topic:
            problems.append(f"topics[{index}] must not be empty")
        elif (
            catalogue
            and topic != "*"
            and not any(routing.topic_matches(topic, known) for known in catalogue)
        ):
            problems.append(
                f"topics[{index}] {topic!r} matches none of the configured topics: "
                + ", ".join(catalogue)
            )
    return list(dict.fromkeys(value))


def check_url(url: str, allowed: Sequence[ssrf.Network], problems: list[str]) -> None:
    problem = webhooks.url_problem(url)
    if problem:
        problems.append(f"config.url {problem}")
        return
    # Every delivery to it would be refused, so say so now rather than at delivery time.
    blocked = ssrf.why_refused_url(url, allowed)
    if blocked:
        problems.append(ssrf.refused("config.url", blocked))


async def check_resolved(url: str, allowed: Sequence[ssrf.Network], problems: list[str]) -> None:
    """A host name whose every address the guard refuses now is refused now too, rather
    than failing every delivery (one that resolves later to a refused address fails its
    deliveries at once, with a ``blocked_address`` attempt saying why)."""
    host = URL(url).host
    blocked = await ssrf.why_refused_host(host, allowed) if host else None
    if blocked:
        problems.append(ssrf.refused("config.url", blocked))


async def check_addresses(
    provider: Provider,
    config: Mapping[str, str],
    credentials: Mapping[str, str],
    allowed: Sequence[ssrf.Network],
) -> None:
    """A 422 naming each field whose host the guard refuses now (an IP literal, or a name
    whose every address is refused), as for a webhook's url: a broker's, for one."""
    problems = []
    for field, host, _ in provider.addresses(config, credentials):
        blocked = await ssrf.why_refused_host(host, allowed)
        if blocked:
            problems.append(ssrf.refused(field, blocked))
    if problems:
        raise ValidationFailed(problems)


def allowed_networks(config: ChainMapProxy) -> tuple[ssrf.Network, ...]:
    return ssrf.parse_networks(config[SETTINGS].delivery.allow_private_networks)


def parse_custom_headers(raw: str | None, problems: list[str]) -> dict[str, str]:
    if raw is None or not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        problems.append(
            'config.custom_headers must be a JSON object of strings, e.g. {"x-api-key":"..."}'
        )
        return {}
    problems.extend(f"config.custom_headers: {p}" for p in webhooks.header_problems(value))
    return dict(value)


def check_mode(value: str | None, problems: list[str]) -> str | None:
    """A destination's own webhook format, or None to follow delivery.webhook_mode."""
    if not value:
        return None
    if value not in webhook_formats.MODES:
        problems.append(
            'config.webhook_mode must be "standard" or "outpost" '
            "(or empty, for the global delivery.webhook_mode)"
        )
        return None
    return value


def check_filter(value: dict[str, Any] | None, problems: list[str]) -> dict[str, Any] | None:
    if not value:
        return None
    problems.extend(routing.filter_problems(value))
    return value


def check_past(value: datetime | None, field: str, problems: list[str]) -> datetime | None:
    value = _aware(value)
    if value is None:
        return None
    if value > datetime.now(UTC) + CLOCK_SKEW:
        problems.append(f"{field} must not be in the future")
    return value


def admin_only(caller: Caller, fields: list[str]) -> None:
    if fields and not caller.is_admin:
        raise Forbidden(f"{', '.join(fields)} can only be set with the admin API key")


def new_destination_id() -> str:
    return "des_" + secrets.token_hex(12)


# --- tenant.subscription.updated ------------------------------------------------------


async def subscription_before(
    config: ChainMapProxy, conn: Connection, tenant_id: str
) -> tuple[list[str], int] | None:
    """A tenant's topics and count of destinations before a change, if an operator sink
    wants tenant.subscription.updated (else None, and no statement is spent)."""
    if tenant_id == opevents.OPERATOR_TENANT:
        return None
    topics = await config[OPERATOR_TOPICS].topics(conn)
    if not opevents.wants(topics, opevents.SUBSCRIPTION_UPDATED):
        return None
    return await opevents_db.tenant_subscription(conn, tenant_id)


async def subscription_after(
    config: ChainMapProxy, conn: Connection, tenant_id: str, before: tuple[list[str], int] | None
) -> None:
    """After the change, in its transaction: tenant.subscription.updated, if the topics
    or the count moved (as Outpost emits it, from the destination routes only)."""
    if before is None:
        return
    after = await opevents_db.tenant_subscription(conn, tenant_id)
    event = opevents.subscription_updated(
        tenant_id,
        before,
        after,
        now=datetime.now(UTC),
        deployment_id=config[SETTINGS].operator_events.deployment_id,
    )
    if event is not None:
        await opevents_db.write(conn, [event])


# --- handlers ------------------------------------------------------------------------


@routes.get(PREFIX)
async def list_destinations(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    tenant_id = request.match_info["tenant_id"]
    types = params.multi(request, "type")
    topics = params.multi(request, "topics")
    async with request.app[ENGINE].connect() as conn:
        await require_tenant(conn, caller, tenant_id)
        found = await admin.list_destinations(conn, tenant_id)
    chosen = [
        d
        for d in found
        if (not types or d.type in types)
        and (not topics or any(routing.any_topic_matches(d.topics, t) for t in topics))
    ]
    return json_response([destination_json(d) for d in chosen])


@routes.post(PREFIX)
async def create_destination(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    tenant_id = request.match_info["tenant_id"]
    caller.check_tenant(tenant_id)
    created = await create(request.config_dict, caller, tenant_id, await read_json(request))
    return json_response(destination_json(created), status=201)


async def create(
    config: ChainMapProxy, caller: Caller, tenant_id: str, payload: object
) -> admin.Destination:
    """Create a destination from an API-shaped JSON payload (the API and the portal)."""
    caller.check_tenant(tenant_id)
    if isinstance(payload, dict) and isinstance(payload.get("type"), str):
        check_type(payload["type"])
        if payload["type"] != "webhook":
            return await create_typed(config, caller, tenant_id, payload)
    body = validate(DestinationCreate, payload)
    check_type(body.type)
    settings = config[SETTINGS]
    problems: list[str] = []
    common = _common(body, settings.topics, problems)
    check_url(body.config.url, allowed_networks(config), problems)
    headers = parse_custom_headers(body.config.custom_headers, problems)
    mode = check_mode(body.config.webhook_mode, problems)
    secret = body.credentials.secret if body.credentials else None
    if secret is not None and not secret:
        problems.append("credentials.secret must not be empty")
    if body.credentials and rotates(body.credentials.rotate_secret):
        # As Outpost refuses it: a destination being created has no secret to rotate.
        problems.append("credentials.rotate_secret: a new destination has no secret to rotate")
    if not problems:
        await check_resolved(body.config.url, allowed_networks(config), problems)
    if problems:
        raise ValidationFailed(problems)
    _admin_only_fields(caller, common, ["credentials.secret"] if secret is not None else [])
    new = admin.NewDestination(
        tenant_id=tenant_id,
        type=body.type,
        url=body.config.url,
        custom_headers=headers,
        # Generated as Outpost generates secrets for the format the destination gets.
        secret=secret or generate_secret(mode or settings.delivery.webhook_mode),
        webhook_mode=mode,
        **common,
    )
    return await _insert(config, caller, new)


async def create_typed(
    config: ChainMapProxy, caller: Caller, tenant_id: str, payload: object
) -> admin.Destination:
    """Create a destination of any type but webhook, as its Provider says."""
    body = validate(TypedCreate, payload)
    settings = config[SETTINGS]
    problems: list[str] = []
    common = _common(body, settings.topics, problems)
    provider = registry.describer(body.type)
    values, secrets = body.config or {}, body.credentials or {}
    problems += provider.problems(values, secrets)
    if not problems:
        unavailable = registry.availability(body.type)
        if unavailable:
            problems.append(unavailable)
    if problems:
        raise ValidationFailed(problems)
    _admin_only_fields(caller, common)
    values, secrets = provider.normalise(values, secrets)
    await check_addresses(provider, values, secrets, allowed_networks(config))
    values |= await provider.verify(values, secrets, None, settings.delivery)
    new = admin.NewDestination(
        tenant_id=tenant_id,
        type=body.type,
        url=None,
        custom_headers={},
        secret=None,
        config=values,
        credentials=secrets,
        **common,
    )
    return await _insert(config, caller, new)


def _common(
    body: DestinationCreate | TypedCreate, catalogue: list[str], problems: list[str]
) -> dict[str, Any]:
    """What every type's creation takes alike: NewDestination's fields."""
    if body.id is not None:
        check_id(body.id, "id")
    topics = topic_list(body.topics, catalogue, problems)
    rule = check_filter(body.filter, problems)
    created_at = check_past(body.created_at, "created_at", problems)
    updated_at = check_past(body.updated_at, "updated_at", problems)
    disabled_at = check_past(body.disabled_at, "disabled_at", problems)
    control = (
        check_control(body.delivery_control, problems)
        if "delivery_control" in body.model_fields_set
        else {}
    )
    return {
        "id": body.id or new_destination_id(),
        "topics": topics,
        "metadata": body.metadata or {},
        "delivery_metadata": body.delivery_metadata or {},
        "filter": rule,
        "disabled_at": disabled_at,
        "created_at": created_at,
        "updated_at": updated_at,
        "rate_limit_per_second": control.get("rate_limit_per_second"),
        "rate_limit_burst": control.get("rate_limit_burst"),
        "max_in_flight": control.get("max_in_flight"),
        "ordering_key": control.get("ordering_key"),
        "ordering_on_failure": control.get("ordering_on_failure") or "block",
    }


def _admin_only_fields(caller: Caller, common: dict[str, Any], given: list[str] = []) -> None:  # noqa: B006
    """Fields only the admin key may set: the given ones, and the timestamps if set."""
    admin_only(caller, given + [n for n in ("created_at", "updated_at") if common[n] is not None])


async def _insert(
    config: ChainMapProxy, caller: Caller, new: admin.NewDestination
) -> admin.Destination:
    async with config[ENGINE].begin() as conn:
        await require_tenant(conn, caller, new.tenant_id)
        before = await subscription_before(config, conn, new.tenant_id)
        created = await admin.insert_destination(conn, new)
        if created is not None:
            await subscription_after(config, conn, new.tenant_id, before)
    if created is None:
        raise Conflict(f"destination {new.id!r} already exists for tenant {new.tenant_id!r}")
    return created


async def _load(request: web.Request, conn: Any, *, lock: bool) -> admin.Destination:
    caller = await authenticate(request)
    return await load(
        conn,
        caller,
        request.match_info["tenant_id"],
        request.match_info["destination_id"],
        lock=lock,
    )


async def load(
    conn: Any, caller: Caller, tenant_id: str, destination_id: str, *, lock: bool
) -> admin.Destination:
    """The caller's destination, or 403/404."""
    await require_tenant(conn, caller, tenant_id)
    found = await admin.get_destination(conn, tenant_id, destination_id, lock=lock)
    if found is None:
        raise NotFound(f"destination {destination_id!r} not found for tenant {tenant_id!r}")
    return found


def api_owned(config: ChainMapProxy, d: admin.Destination) -> None:
    if d.origin != "api":
        raise config_conflict(config[SETTINGS], f"destination {d.id!r} of tenant {d.tenant_id!r}")


@routes.get(PREFIX + "/{destination_id:[^/]+}")
async def get_destination(request: web.Request) -> web.Response:
    async with request.app[ENGINE].connect() as conn:
        found = await _load(request, conn, lock=False)
    return json_response(destination_json(found))


def _merge_map(current: dict[str, str], patch: dict[str, str | None] | None) -> dict[str, str]:
    if patch is None:
        return {}
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def apply_patch(
    current: admin.Destination,
    body: DestinationPatch | TypedPatch,
    caller: Caller,
    catalogue: list[str],
    allowed: Sequence[ssrf.Network],
    global_mode: str = "standard",
) -> admin.Destination:
    """The destination after a merge-patch (RFC 7396), or a 422 listing every problem.
    ``global_mode`` is delivery.webhook_mode (a rotated secret is made for the format).
    A body for a webhook is a DestinationPatch, for any other type a TypedPatch."""
    given = body.model_fields_set
    problems: list[str] = []
    changes: dict[str, Any] = {}
    if body.type is not None and body.type != current.type:
        problems.append(f"type cannot be changed (this destination is {current.type!r})")
    if "topics" in given:
        if body.topics is None:
            problems.append('topics must not be null; use "*" for every topic')
        else:
            changes["topics"] = topic_list(body.topics, catalogue, problems)
    if "filter" in given:
        changes["filter"] = check_filter(body.filter, problems)
    if isinstance(body, DestinationPatch):
        changes |= _webhook_changes(current, body, caller, allowed, global_mode, problems)
    else:
        changes |= _typed_changes(current, body, problems)
    for name in ("metadata", "delivery_metadata"):
        if name in given:
            changes[name] = _merge_map(getattr(current, name), getattr(body, name))
    if "disabled_at" in given:
        when = check_past(body.disabled_at, "disabled_at", problems)
        changes["disabled_at"] = when
    if "delivery_control" in given:
        current_control = {k: getattr(current, k) for k in CONTROL_KEYS}
        changes |= check_control(body.delivery_control, problems, current_control)
    if problems:
        raise ValidationFailed(problems)
    return replace(current, **changes)


def _webhook_changes(
    current: admin.Destination,
    body: DestinationPatch,
    caller: Caller,
    allowed: Sequence[ssrf.Network],
    global_mode: str,
    problems: list[str],
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if body.config is not None:
        config_given = body.config.model_fields_set
        if "url" in config_given:
            if body.config.url is None:
                problems.append("config.url must not be null")
            else:
                check_url(body.config.url, allowed, problems)
                changes["url"] = body.config.url
        if "custom_headers" in config_given:
            changes["custom_headers"] = parse_custom_headers(body.config.custom_headers, problems)
        if "webhook_mode" in config_given:
            changes["webhook_mode"] = check_mode(body.config.webhook_mode, problems)
    if body.credentials is not None:
        mode = changes.get("webhook_mode", current.webhook_mode) or global_mode
        changes |= _credentials(current, body.credentials, caller, problems, mode)
    return changes


def _typed_changes(
    current: admin.Destination, body: TypedPatch, problems: list[str]
) -> dict[str, Any]:
    """Config and credentials merged key by key (as Outpost merges them), checked again
    by the type's Provider when they change, and stored as it normalises them."""
    given = body.model_fields_set
    config = _merge_map(current.config, body.config) if "config" in given else current.config
    credentials = (
        _merge_map(current.credentials, body.credentials)
        if "credentials" in given
        else current.credentials
    )
    if (config, credentials) == (current.config, current.credentials):
        return {}
    provider = registry.describer(current.type)
    found = provider.problems(config, credentials)
    problems += found
    if found:
        return {}
    config, credentials = provider.normalise(config, credentials)
    return {"config": config, "credentials": credentials}


def _credentials(
    current: admin.Destination,
    patch: WebhookCredentials,
    caller: Caller,
    problems: list[str],
    mode: str,
) -> dict[str, Any]:
    given = patch.model_fields_set
    admin_only(
        caller,
        [
            f"credentials.{n}"
            for n in ("secret", "previous_secret", "previous_secret_invalid_at")
            if n in given
        ],
    )
    changes: dict[str, Any] = {}
    if rotates(patch.rotate_secret):
        # The old secret keeps signing (alongside the new one) until it expires.
        invalid_at = _aware(patch.previous_secret_invalid_at) or (
            datetime.now(UTC) + PREVIOUS_SECRET_GRACE
        )
        return {
            "secret": generate_secret(mode),
            "previous_secret": current.secret,
            "previous_secret_invalid_at": invalid_at,
        }
    if "secret" in given:
        if not patch.secret:
            problems.append("credentials.secret must not be empty")
        else:
            changes["secret"] = patch.secret
    if "previous_secret" in given:
        changes["previous_secret"] = patch.previous_secret or None
    if "previous_secret_invalid_at" in given:
        changes["previous_secret_invalid_at"] = _aware(patch.previous_secret_invalid_at)
    return changes


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@routes.patch(PREFIX + "/{destination_id:[^/]+}")
async def update_destination(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    payload = await read_json(request)
    updated = await update(
        request.config_dict,
        caller,
        request.match_info["tenant_id"],
        request.match_info["destination_id"],
        payload,
    )
    return json_response(destination_json(updated))


async def update(
    config: ChainMapProxy, caller: Caller, tenant_id: str, destination_id: str, payload: object
) -> admin.Destination:
    """Apply an API-shaped merge-patch payload (the API and the portal)."""
    typed = validate(TypedPatch, payload)
    settings = config[SETTINGS]
    async with config[ENGINE].begin() as conn:
        current = await load(conn, caller, tenant_id, destination_id, lock=True)
        api_owned(config, current)
        body = validate(DestinationPatch, payload) if current.type == "webhook" else typed
        before = await subscription_before(config, conn, current.tenant_id)
        patched = apply_patch(
            current,
            body,
            caller,
            settings.topics,
            allowed_networks(config),
            settings.delivery.webhook_mode,
        )
        if patched.url is not None and patched.url != current.url:
            problems: list[str] = []
            await check_resolved(patched.url, allowed_networks(config), problems)
            if problems:
                raise ValidationFailed(problems)
        if (patched.config, patched.credentials) != (current.config, current.credentials):
            provider = registry.describer(current.type)
            addresses = provider.addresses(patched.config, patched.credentials)
            if addresses != provider.addresses(current.config, current.credentials):
                await check_addresses(
                    provider, patched.config, patched.credentials, allowed_networks(config)
                )
            patched = await _verified(current, patched, settings.delivery)
        updated = await admin.update_destination(conn, patched)
        await subscription_after(config, conn, current.tenant_id, before)
    assert updated is not None
    return updated


async def _verified(
    current: admin.Destination, patched: admin.Destination, settings: DeliverySettings
) -> admin.Destination:
    """The type's checks that need the network (hookdeck's token), for changed values;
    none while this relay cannot deliver the type."""
    if registry.availability(current.type) is not None:
        return patched
    provider = registry.provider(current.type)
    added = await provider.verify(
        patched.config, patched.credentials, (current.config, current.credentials), settings
    )
    return replace(patched, config=patched.config | added) if added else patched


async def set_enabled(
    config: ChainMapProxy, caller: Caller, tenant_id: str, destination_id: str, enabled: bool
) -> admin.Destination:
    async with config[ENGINE].begin() as conn:
        current = await load(conn, caller, tenant_id, destination_id, lock=True)
        api_owned(config, current)
        disabled_at = None if enabled else (current.disabled_at or datetime.now(UTC))
        updated = await admin.update_destination(conn, replace(current, disabled_at=disabled_at))
    assert updated is not None
    return updated


async def _set_enabled(request: web.Request, enabled: bool) -> web.Response:
    caller = await authenticate(request)
    updated = await set_enabled(
        request.config_dict,
        caller,
        request.match_info["tenant_id"],
        request.match_info["destination_id"],
        enabled,
    )
    return json_response(destination_json(updated))


@routes.put(PREFIX + "/{destination_id:[^/]+}/enable")
async def enable_destination(request: web.Request) -> web.Response:
    return await _set_enabled(request, True)


@routes.put(PREFIX + "/{destination_id:[^/]+}/disable")
async def disable_destination(request: web.Request) -> web.Response:
    return await _set_enabled(request, False)


async def delete(
    config: ChainMapProxy, caller: Caller, tenant_id: str, destination_id: str
) -> None:
    async with config[ENGINE].begin() as conn:
        current = await load(conn, caller, tenant_id, destination_id, lock=True)
        api_owned(config, current)
        before = await subscription_before(config, conn, current.tenant_id)
        await admin.delete_destination(conn, current.tenant_id, current.id)
        await subscription_after(config, conn, current.tenant_id, before)


@routes.delete(PREFIX + "/{destination_id:[^/]+}")
async def delete_destination(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    await delete(
        request.config_dict,
        caller,
        request.match_info["tenant_id"],
        request.match_info["destination_id"],
    )
    return json_response({"success": True})
