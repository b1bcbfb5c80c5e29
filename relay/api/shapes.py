"""relay's rows in the JSON shapes Outpost's API (and so its SDKs) use.

Maps of strings (``metadata``, ``delivery_metadata``) are always objects, ``{}`` when
empty: Outpost leaves an empty one out, which its clients read as no entries, and ``{}``
reads the same without a check for absence (null would not)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from relay.db.admin import Destination, Tenant
from relay.db.history import AttemptRow, EventRow
from relay.delivery import registry, webhook
from relay.delivery.base import Target, attempt_code


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tenant_json(t: Tenant) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": t.id,
        "destinations_count": t.destinations_count,
        "topics": t.topics,
        "metadata": t.metadata or {},
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
    }
    limits = {
        "rate_limit_per_second": t.rate_limit_per_second,
        "rate_limit_burst": t.rate_limit_burst,
        "max_in_flight": t.max_in_flight,
    }
    shown = {k: v for k, v in limits.items() if v is not None}
    if shown:
        # relay's extension, as on destinations (README, "Delivery control").
        body["delivery_control"] = shown
    return body


def destination_json(d: Destination, *, credentials: bool = True) -> dict[str, Any]:
    """A destination as Outpost's API shows it: credentials obfuscated where Outpost hides
    them (a webhook's secrets are shown, as Outpost shows them), ``target`` and
    ``target_url`` as the type computes them."""
    if d.type == "webhook":
        config, creds, target = _webhook(d)
    else:
        provider = registry.describer(d.type)
        config, creds = provider.shown(d.config, d.credentials)
        target = provider.target(d.config, d.credentials, d.topics)
    body: dict[str, Any] = {
        "id": d.id,
        "tenant_id": d.tenant_id,
        "type": d.type,
        "topics": d.topics,
        "filter": d.filter,
        "config": config,
        "delivery_metadata": d.delivery_metadata or {},
        "metadata": d.metadata or {},
        "disabled_at": iso(d.disabled_at),
        "created_at": iso(d.created_at),
        "updated_at": iso(d.updated_at),
        "target": target.target,
    }
    if target.target_url is not None or d.type == "webhook":
        # Outpost leaves it out when the type has none.
        body["target_url"] = target.target_url
    control = delivery_control_json(d)
    if control:
        body["delivery_control"] = control
    if credentials:
        body["credentials"] = creds
    return body


def _webhook(d: Destination) -> tuple[dict[str, str], dict[str, str], Target]:
    """A webhook's config and credentials, from its own columns."""
    url = d.url or ""
    config: dict[str, str] = {"url": url}
    if d.custom_headers:
        # Outpost carries custom headers as a JSON string inside config.
        config["custom_headers"] = orjson.dumps(d.custom_headers).decode()
    if d.webhook_mode:
        # relay's addition, shown only when the destination chose its own format (else
        # delivery.webhook_mode applies): Outpost's SDKs ignore keys they do not know.
        config["webhook_mode"] = d.webhook_mode
    creds: dict[str, str] = {"secret": d.secret or ""}
    if d.previous_secret:
        creds["previous_secret"] = d.previous_secret
        invalid_at = iso(d.previous_secret_invalid_at)
        if invalid_at:
            creds["previous_secret_invalid_at"] = invalid_at
    return config, creds, webhook.target(url)


def delivery_control_json(d: Destination) -> dict[str, Any]:
    """relay's extension (README, "Delivery control"): the destination's own limits and
    adaptive backoff's state, shown when there is any (Outpost's SDKs ignore the key)."""
    limits = {
        "rate_limit_per_second": d.rate_limit_per_second,
        "rate_limit_burst": d.rate_limit_burst,
        "max_in_flight": d.max_in_flight,
    }
    shown: dict[str, Any] = {k: v for k, v in limits.items() if v is not None}
    if d.ordering_key is not None:
        shown |= {"ordering_key": d.ordering_key, "ordering_on_failure": d.ordering_on_failure}
    if d.throttle < 1 or d.throttled_until is not None:
        shown |= {
            "throttle": d.throttle,
            "throttled_until": iso(d.throttled_until),
            "throttle_reason": d.throttle_reason,
        }
    return shown


def event_json(e: EventRow) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": e.id,
        "tenant_id": e.tenant_id,
        "topic": e.topic,
        "time": iso(e.time),
        "eligible_for_retry": e.eligible_for_retry,
        "metadata": e.metadata or {},
        "data": e.data,
        "matched_destination_ids": e.matched_destination_ids,
    }
    if e.destination_id is not None:
        body["destination_id"] = e.destination_id
    return body


def attempt_json(
    a: AttemptRow, include: set[str], destination: Destination | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(a.id),
        "tenant_id": a.tenant_id,
        "status": a.status,
        "time": iso(a.started_at),
        # The HTTP status when the receiver answered, else why there was no answer, or
        # "OK" for a broker's success (as Outpost's broker types say).
        "code": attempt_code(a.status, a.http_status, a.error_code),
        "attempt_number": a.number,
        "manual": a.manual,
        "latency_ms": a.latency_ms,
        "event_id": a.event_id,
        "destination_id": a.destination_id,
    }
    if "response_data" in include:
        response: dict[str, Any] = {
            "status_code": a.http_status,
            "body": a.response_body,
            "headers": a.response_headers or {},
        }
        if a.error_code is not None:
            response["error"] = {"code": a.error_code, "detail": a.error_detail}
        body["response_data"] = response
    if include & {"event", "event.data"}:
        event: dict[str, Any] = {
            "id": a.event_id,
            "tenant_id": a.tenant_id,
            "destination_id": a.destination_id,
            "topic": a.topic,
            "time": iso(a.event_time),
            "eligible_for_retry": a.eligible_for_retry,
            "metadata": a.event_metadata or {},
        }
        if "event.data" in include:
            event["data"] = a.event_data
        body["event"] = event
    if "destination" in include and destination is not None:
        body["destination"] = destination_json(destination, credentials=False)
    return body
