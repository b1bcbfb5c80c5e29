"""Operator events: which of Outpost's operator events a batch of delivery outcomes causes.

Pure: no I/O. The recorder writes what this returns in the transaction that records the
outcomes (relay/db/operator_events.py), as events of the internal tenant
``relay/operator``, whose destinations are the operator sinks; their deliveries are
ordinary outbox deliveries. Topics and payloads are Outpost's (internal/opevents and
internal/alert in its repository): an envelope ``{id, topic, time, [deployment_id],
tenant_id, data}``, and in ``data`` the tenant, the event, the attempt and the
destination (which the database adds, as it is after the batch: see
relay/db/operator_events.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from relay.delivery.base import attempt_code

if TYPE_CHECKING:
    from relay.config import Settings
    from relay.db.outbox import HealthRow, Recorded

# The tenant whose destinations are the operator sinks. A '/' keeps it out of reach of
# the tenant API, whose ids cannot hold one.
OPERATOR_TENANT = "relay/operator"

CONSECUTIVE_FAILURE = "alert.destination.consecutive_failure"
DESTINATION_DISABLED = "alert.destination.disabled"
EXHAUSTED_RETRIES = "alert.attempt.exhausted_retries"
ATTEMPT_SUCCESS = "attempt.success"
ATTEMPT_FAILED = "attempt.failed"
SUBSCRIPTION_UPDATED = "tenant.subscription.updated"

TOPICS = (
    CONSECUTIVE_FAILURE,
    DESTINATION_DISABLED,
    EXHAUSTED_RETRIES,
    ATTEMPT_SUCCESS,
    ATTEMPT_FAILED,
    SUBSCRIPTION_UPDATED,
)

# Percentages of the consecutive-failure count at which Outpost alerts (its defaults).
ALERT_LEVELS = (50, 70, 90, 100)

# alert.destination.disabled's reason: Outpost's, and relay's own for a 410 Gone (which
# Outpost does not disable on).
REASON_CONSECUTIVE_FAILURE = "consecutive_failure"
REASON_GONE = "gone"


def topic_problem(topic: str) -> str | None:
    """Why a sink cannot subscribe to ``topic``, or None."""
    if topic == "*" or topic in TOPICS:
        return None
    return f"{topic!r} is not an operator event topic; use one of {', '.join(TOPICS)}, or *"


def wants(subscribed: Collection[str], topic: str) -> bool:
    return topic in subscribed or "*" in subscribed


def new_id() -> str:
    return "opev_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class OperatorEvent:
    """One operator event, ready to be written."""

    id: str
    topic: str
    # The envelope as JSON text. When ``destination`` is set, its ``data`` is its last
    # member and lacks "destination": the database adds the destination as it stands.
    body: str
    destination: tuple[str, str] | None


def envelope(
    topic: str,
    tenant_id: str,
    data: Mapping[str, Any],
    *,
    now: datetime,
    deployment_id: str = "",
    destination: tuple[str, str] | None = None,
) -> OperatorEvent:
    """Outpost's envelope around ``data`` (whose first member is ``tenant_id``)."""
    id = new_id()
    head: dict[str, Any] = {"id": id, "topic": topic, "time": now}
    if deployment_id:
        head["deployment_id"] = deployment_id
    head["tenant_id"] = tenant_id
    head["data"] = data
    body = orjson.dumps(head, option=orjson.OPT_UTC_Z).decode()
    return OperatorEvent(id, topic, body, destination)


def alert_thresholds(max_failures: int) -> list[tuple[int, int]]:
    """(failures, percentage) at which to alert, as Outpost computes them: a ceiling of
    each level's share of ``max_failures``, lowest first."""
    if max_failures <= 0:
        return []
    return [((max_failures * level + 99) // 100, level) for level in ALERT_LEVELS]


def crossed(failures: int, thresholds: Sequence[tuple[int, int]]) -> int | None:
    """The level an attempt whose failure made the count ``failures`` alerts at: an exact
    count for the lower levels, and any count from the 100% one up (Outpost's rule: a
    count that skips past it must still alert)."""
    for count, level in reversed(thresholds):
        if (failures >= count) if level == 100 else (failures == count):
            return level
    return None


def _event_json(r: Recorded) -> dict[str, Any]:
    c = r.claimed
    return {
        "id": c.event_id,
        "tenant_id": c.tenant_id,
        "destination_id": c.destination_id,
        "topic": c.topic,
        "eligible_for_retry": c.eligible_for_retry,
        "time": c.published_at,
        "metadata": orjson.Fragment(c.metadata or "{}"),
        "data": orjson.Fragment(c.body),
    }


def _attempt_json(r: Recorded, attempt_id: int | None, time: datetime) -> dict[str, Any]:
    c = r.claimed
    code = attempt_code(r.attempt_status, r.http_status, r.error_code)
    response: dict[str, Any] = {"status": r.http_status, "body": r.response_body}
    if r.error_code is not None:
        response["error"] = {"code": r.error_code, "detail": r.error_detail}
    return {
        "id": "" if attempt_id is None else str(attempt_id),
        "tenant_id": c.tenant_id,
        "event_id": c.event_id,
        "destination_id": c.destination_id,
        "destination_type": c.type,
        "attempt_number": c.attempt,
        "manual": c.manual,
        "status": r.attempt_status,
        "time": time,
        "code": code,
        "response_data": response,
    }


@dataclass(frozen=True, slots=True)
class Policy:
    """What decides the alerts: from config (operator_events, delivery)."""

    # The consecutive-failure count that is 100% (0: no consecutive-failure alerts).
    max_failures: int
    # Attempts a delivery gets before its retries are exhausted.
    max_attempts: int
    deployment_id: str = ""


def policy(settings: Settings) -> Policy:
    """The alerts' policy from the configuration."""
    from relay.retry import RetryPolicy  # relay.retry reads relay.config, which reads this

    delivery = settings.delivery
    return Policy(
        max_failures=delivery.auto_disable_after_failures
        or settings.operator_events.consecutive_failure_count,
        max_attempts=RetryPolicy.from_settings(delivery.retry).max_attempts,
        deployment_id=settings.operator_events.deployment_id,
    )


def caused_by(
    batch: Sequence[Recorded],
    attempt_ids: Mapping[tuple[int, int], int],
    health: Mapping[tuple[str, str], HealthRow],
    subscribed: Collection[str],
    policy: Policy,
    *,
    now: datetime,
) -> list[OperatorEvent]:
    """The operator events a written batch causes that some sink subscribes to.

    ``batch`` in the order its attempts finished; ``attempt_ids`` the ids of their rows
    by (delivery id, attempt number); ``health`` what the batch did to each destination
    it changed (the count before, the count after, whether and when it was disabled).
    Outcomes of deliveries to the operator sinks themselves cause none."""
    if not subscribed:
        return []
    thresholds = alert_thresholds(policy.max_failures)
    # Each destination's count as the batch's attempts change it, one by one.
    counts = {key: row.previous for key, row in health.items()}
    events: list[OperatorEvent] = []
    disabled: set[tuple[str, str]] = set()
    for r in batch:
        c = r.claimed
        key = (c.tenant_id, c.destination_id)
        if c.tenant_id == OPERATOR_TENANT:
            continue
        failed = r.attempt_status == "failed"
        count = 0 if not failed else counts.get(key, 0) + 1
        if key in counts:
            counts[key] = count
        topic = ATTEMPT_FAILED if failed else ATTEMPT_SUCCESS
        topics = [topic]
        level = crossed(count, thresholds) if failed else None
        row = health.get(key)
        # The batch's disabling attempt: its first that disables at once (a 410), or the
        # failure that reached the threshold.
        if (
            failed
            and row is not None
            and row.disabled_now
            and key not in disabled
            and (level == 100 or r.disable_reason is not None)
        ):
            disabled.add(key)
            topics.append(DESTINATION_DISABLED)
        if level is not None:
            topics.append(CONSECUTIVE_FAILURE)
        exhausted = (
            failed
            and r.next_status == "failed"
            and c.eligible_for_retry
            and c.attempt >= policy.max_attempts
        )
        if exhausted:
            topics.append(EXHAUSTED_RETRIES)
        topics = [t for t in topics if wants(subscribed, t)]
        if not topics:
            continue
        event = _event_json(r)
        attempt = _attempt_json(r, attempt_ids.get((c.id, c.attempt)), now)

        for t in topics:
            data: dict[str, Any] = {"tenant_id": c.tenant_id, "event": event, "attempt": attempt}
            if t == DESTINATION_DISABLED:
                assert row is not None
                reason = REASON_GONE if r.disable_reason else REASON_CONSECUTIVE_FAILURE
                data |= {"disabled_at": row.disabled_at or now, "reason": reason}
            elif t == CONSECUTIVE_FAILURE:
                data["consecutive_failures"] = {
                    "current": count,
                    "max": policy.max_failures,
                    "threshold": level,
                }
            events.append(
                envelope(
                    t,
                    c.tenant_id,
                    data,
                    now=now,
                    deployment_id=policy.deployment_id,
                    destination=key,
                )
            )
    return events


def subscription_updated(
    tenant_id: str,
    before: tuple[list[str], int],
    after: tuple[list[str], int],
    *,
    now: datetime,
    deployment_id: str = "",
) -> OperatorEvent | None:
    """tenant.subscription.updated when a destination change moved the tenant's topics
    or its count of destinations, else None."""
    if before == after:
        return None
    data = {
        "tenant_id": tenant_id,
        "topics": after[0],
        "previous_topics": before[0],
        "destinations_count": after[1],
        "previous_destinations_count": before[1],
    }
    return envelope(SUBSCRIPTION_UPDATED, tenant_id, data, now=now, deployment_id=deployment_id)
