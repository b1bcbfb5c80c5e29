"""Which operator events a batch of outcomes causes (relay.opevents): pure, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from relay import opevents
from relay.db.outbox import Claimed, HealthRow, Recorded

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
POLICY = opevents.Policy(max_failures=10, max_attempts=3)


def outcome(
    n: int,
    *,
    ok: bool = False,
    status: int | None = 500,
    attempt: int = 1,
    dest: str = "d",
    tenant: str = "t",
    last: bool = False,
) -> Recorded:
    claimed = Claimed(
        id=n,
        attempt=attempt,
        token=uuid.uuid4(),
        manual=False,
        tenant_id=tenant,
        destination_id=dest,
        event_seq=n,
        event_id=f"evt_{n}",
        topic="order.created",
        body='{"n": 1}',
        metadata='{"k":"v"}',
        eligible_for_retry=True,
        published_at=NOW,
        claimed_at=NOW,
        type="webhook",
        config="{}",
        credentials="{}",
        url="https://example.com/hook",
        custom_headers="{}",
        secret="s",
        previous_secret=None,
        previous_secret_valid=False,
        signature_mode=None,
        timeout_seconds=None,
        delivery_metadata="{}",
    )
    return Recorded(
        claimed=claimed,
        attempt_status="success" if ok else "failed",
        http_status=200 if ok else status,
        error_code=None,
        error_detail=None,
        response_body="body",
        duration_ms=3,
        started_at=NOW,
        next_status="delivered" if ok else ("failed" if last else "pending"),
        delay_seconds=0 if ok or last else 1,
        disable_reason="the receiver answered 410 Gone" if status == 410 and not ok else None,
    )


def caused(
    batch: list[Recorded],
    health: dict[tuple[str, str], HealthRow] | None = None,
    subscribed: Any = ("*",),
    policy: opevents.Policy = POLICY,
) -> list[dict[str, Any]]:
    events = opevents.caused_by(batch, {}, health or {}, frozenset(subscribed), policy, now=NOW)
    return [orjson.loads(e.body) for e in events]


def test_thresholds_are_outposts_ceilings() -> None:
    assert opevents.alert_thresholds(100) == [(50, 50), (70, 70), (90, 90), (100, 100)]
    assert opevents.alert_thresholds(4) == [(2, 50), (3, 70), (4, 90), (4, 100)]
    assert opevents.alert_thresholds(0) == []
    levels = opevents.alert_thresholds(10)
    assert [opevents.crossed(n, levels) for n in range(1, 13)] == [
        None, None, None, None, 50, None, 70, None, 90, 100, 100, 100
    ]  # fmt: skip


def test_failures_in_one_batch_count_up_from_the_stored_count() -> None:
    batch = [outcome(n) for n in range(1, 4)]
    health = {("t", "d"): HealthRow(previous=4, failures=7, disabled_now=False, disabled_at=None)}
    events = caused(batch, health, subscribed=[opevents.CONSECUTIVE_FAILURE])
    assert [e["data"]["consecutive_failures"] for e in events] == [
        {"current": 5, "max": 10, "threshold": 50},
        {"current": 7, "max": 10, "threshold": 70},
    ]
    assert events[0]["data"]["attempt"]["code"] == "500"


def test_a_success_in_the_batch_starts_the_count_again() -> None:
    batch = [outcome(1), outcome(2, ok=True), outcome(3)]
    health = {("t", "d"): HealthRow(previous=4, failures=1, disabled_now=False, disabled_at=None)}
    events = caused(batch, health, subscribed=[opevents.CONSECUTIVE_FAILURE])
    assert [e["data"]["consecutive_failures"]["current"] for e in events] == [5]


def test_the_disabling_failure_says_so_once() -> None:
    policy = opevents.Policy(max_failures=2, max_attempts=3)
    disabled_at = datetime(2026, 12, 7, 12, 0, 1, tzinfo=UTC)
    health = {("t", "d"): HealthRow(0, 2, disabled_now=True, disabled_at=disabled_at)}
    events = caused([outcome(1), outcome(2)], health, policy=policy)
    assert [e["topic"] for e in events] == [
        opevents.ATTEMPT_FAILED,
        opevents.CONSECUTIVE_FAILURE,
        opevents.ATTEMPT_FAILED,
        opevents.DESTINATION_DISABLED,
        opevents.CONSECUTIVE_FAILURE,
    ]
    disabled = events[3]
    assert disabled["data"]["reason"] == "consecutive_failure"
    assert disabled["data"]["disabled_at"] == "2026-12-07T12:00:01Z"


def test_a_410_disables_as_gone() -> None:
    health = {("t", "d"): HealthRow(0, 1, disabled_now=True, disabled_at=NOW)}
    (event,) = caused([outcome(1, status=410)], health, [opevents.DESTINATION_DISABLED])
    assert event["data"]["reason"] == "gone"


def test_retries_exhausted_on_the_last_attempt_of_an_event_eligible_for_retry() -> None:
    batch = [outcome(1, attempt=2), outcome(2, attempt=3, last=True)]
    events = caused(batch, subscribed=[opevents.EXHAUSTED_RETRIES])
    assert [e["data"]["event"]["id"] for e in events] == ["evt_2"]
    batch[1].claimed.eligible_for_retry = False
    assert caused(batch, subscribed=[opevents.EXHAUSTED_RETRIES]) == []


def test_the_envelope_and_the_attempt_payload() -> None:
    policy = opevents.Policy(max_failures=0, max_attempts=3, deployment_id="prod")
    (event,) = caused([outcome(1, ok=True)], subscribed=[opevents.ATTEMPT_SUCCESS], policy=policy)
    assert list(event) == ["id", "topic", "time", "deployment_id", "tenant_id", "data"]
    assert event["id"].startswith("opev_") and event["time"] == "2026-12-07T12:00:00Z"
    data = event["data"]
    assert data["event"] == {
        "id": "evt_1",
        "tenant_id": "t",
        "destination_id": "d",
        "topic": "order.created",
        "eligible_for_retry": True,
        "time": "2026-12-07T12:00:00Z",
        "metadata": {"k": "v"},
        "data": {"n": 1},
    }
    assert data["attempt"]["status"] == "success" and data["attempt"]["code"] == "200"
    assert data["attempt"]["response_data"] == {"status": 200, "body": "body"}


def test_nothing_unsubscribed_and_nothing_about_the_sinks_themselves() -> None:
    assert caused([outcome(1)], subscribed=[]) == []
    assert caused([outcome(1, ok=True)], subscribed=[opevents.ATTEMPT_FAILED]) == []
    sink = outcome(1, tenant=opevents.OPERATOR_TENANT)
    assert caused([sink]) == []


def test_subscription_updated_only_when_something_moved() -> None:
    same = opevents.subscription_updated("t", (["a"], 1), (["a"], 1), now=NOW)
    assert same is None
    moved = opevents.subscription_updated("t", (["a"], 1), (["a", "b"], 2), now=NOW)
    assert moved is not None and moved.destination is None
    assert orjson.loads(moved.body)["data"] == {
        "tenant_id": "t",
        "topics": ["a", "b"],
        "previous_topics": ["a"],
        "destinations_count": 2,
        "previous_destinations_count": 1,
    }
