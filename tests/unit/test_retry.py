"""Retry timing and the dispatcher's next-state decision: pure functions, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import RetrySettings
from relay.db.outbox import Claimed, Recorded, health_changes
from relay.delivery.base import Outcome
from relay.delivery.webhook import parse_retry_after
from relay.dispatcher import decide
from relay.retry import RetryPolicy, next_delay

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def claimed(attempt: int = 1, *, eligible: bool = True, dest: str = "d") -> Claimed:
    return Claimed(
        id=attempt,
        attempt=attempt,
        token=uuid.uuid4(),
        manual=False,
        tenant_id="t",
        destination_id=dest,
        event_seq=1,
        event_id="evt_1",
        topic="order.created",
        body="{}",
        metadata="{}",
        eligible_for_retry=eligible,
        published_at=NOW,
        claimed_at=NOW,
        type="webhook",
        config="{}",
        credentials="{}",
        url="https://example.com/hook",
        custom_headers="{}",
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        previous_secret=None,
        previous_secret_valid=False,
        signature_mode="standard",
        timeout_seconds=None,
        delivery_metadata="{}",
    )


def failure(status: int | None = 500, retry_after: float | None = None) -> Outcome:
    return Outcome(False, NOW, 12, http_status=status, retry_after=retry_after)


def test_default_schedule_is_outposts_exponential_from_30s_with_10_retries() -> None:
    policy = RetryPolicy.from_settings(RetrySettings())
    assert policy.delays == tuple(30.0 * 2**n for n in range(10))
    assert policy.delays[0] == 30 and policy.delays[-1] == 15360
    assert policy.max_attempts == 11


def test_explicit_schedule_wins_over_exponential() -> None:
    policy = RetryPolicy.from_settings(RetrySettings(schedule_seconds=[1, 5, 60], jitter=0))
    assert policy.delays == (1, 5, 60)
    assert [next_delay(policy, n) for n in (1, 2, 3, 4)] == [1, 5, 60, None]


def test_jitter_spreads_by_the_configured_fraction_using_the_injected_random() -> None:
    policy = RetryPolicy((10.0, 20.0), jitter=0.1)
    assert next_delay(policy, 1, rand=lambda: 0.0) == pytest.approx(9.0)
    assert next_delay(policy, 1, rand=lambda: 0.5) == pytest.approx(10.0)
    assert next_delay(policy, 1, rand=lambda: 1.0) == pytest.approx(11.0)
    assert next_delay(policy, 2, rand=lambda: 1.0) == pytest.approx(22.0)


def test_exhausted_or_not_eligible_means_no_more_tries() -> None:
    policy = RetryPolicy((1.0, 2.0))
    assert next_delay(policy, 3) is None
    assert next_delay(policy, 1, eligible_for_retry=False) is None
    assert next_delay(RetryPolicy(()), 1) is None


def test_retry_after_is_honoured_when_longer_and_clamped_to_the_maximum() -> None:
    policy = RetryPolicy((1.0, 2.0), jitter=0.0, max_retry_after=30.0)
    assert next_delay(policy, 1, retry_after=5.0) == 5.0
    # Shorter than the schedule: the schedule stands.
    assert next_delay(policy, 1, retry_after=0.5) == 1.0
    assert next_delay(policy, 1, retry_after=3600.0) == 30.0
    # Retry-After does not buy tries beyond the schedule.
    assert next_delay(policy, 3, retry_after=5.0) is None


@given(
    base=st.floats(min_value=0, max_value=1e6),
    jitter=st.floats(min_value=0, max_value=1),
    r=st.floats(min_value=0, max_value=1),
    retry_after=st.none() | st.floats(min_value=0, max_value=1e7),
)
def test_delay_stays_within_jitter_bounds_or_the_retry_after_clamp(
    base: float, jitter: float, r: float, retry_after: float | None
) -> None:
    policy = RetryPolicy((base,), jitter=jitter, max_retry_after=3600.0)
    delay = next_delay(policy, 1, retry_after=retry_after, rand=lambda: r)
    assert delay is not None and delay >= 0
    low, high = base * (1 - jitter), base * (1 + jitter)
    in_jitter = low - 1e-6 <= delay <= high + 1e-6
    from_header = retry_after is not None and delay == min(retry_after, 3600.0)
    assert in_jitter or from_header


def test_decide_success_is_delivered() -> None:
    policy = RetryPolicy((1.0,))
    recorded = decide(claimed(), Outcome(True, NOW, 5, http_status=204), policy)
    assert (recorded.attempt_status, recorded.next_status) == ("success", "delivered")


def test_decide_failure_with_tries_left_is_pending_after_the_schedule() -> None:
    policy = RetryPolicy((0.5, 4.0))
    first = decide(claimed(1), failure(), policy)
    second = decide(claimed(2), failure(), policy)
    assert (first.next_status, first.delay_seconds) == ("pending", 0.5)
    assert (second.next_status, second.delay_seconds) == ("pending", 4.0)
    assert first.attempt_status == "failed" and first.http_status == 500


def test_decide_exhausted_is_failed_terminal() -> None:
    recorded = decide(claimed(3), failure(), RetryPolicy((0.5, 4.0)))
    assert recorded.next_status == "failed"


def test_decide_not_eligible_for_retry_fails_after_one_try() -> None:
    recorded = decide(claimed(1, eligible=False), failure(), RetryPolicy((0.5, 4.0)))
    assert recorded.next_status == "failed"


def test_decide_honours_retry_after() -> None:
    recorded = decide(claimed(1), failure(429, retry_after=7), RetryPolicy((0.5,)))
    assert (recorded.next_status, recorded.delay_seconds) == ("pending", 7)


def test_decide_keeps_the_network_error_code() -> None:
    outcome = Outcome(False, NOW, 5000, error_code="timeout", error_detail="timed out")
    recorded = decide(claimed(1), outcome, RetryPolicy((0.5,)))
    assert (recorded.error_code, recorded.http_status) == ("timeout", None)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("Mon, 23 Nov 2026 12:00:30 GMT", 30.0),
        ("Mon, 23 Nov 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def _recorded(c: Claimed, status: str, http: int | None = None) -> Recorded:
    gone = "the receiver answered 410 Gone" if http == 410 else None
    return Recorded(c, status, http, None, None, None, 1, NOW, "pending", 0.0, disable_reason=gone)


def test_health_changes_fold_each_destination_in_finish_order() -> None:
    a, b, c = claimed(dest="a"), claimed(dest="b"), claimed(dest="c")
    batch = [
        _recorded(a, "failed", 500),
        _recorded(b, "success", 200),
        _recorded(a, "success", 200),
        _recorded(a, "failed", 503),
        _recorded(b, "failed", 500),
        _recorded(c, "failed", 410),
        _recorded(c, "failed", 500),
    ]
    changes = {ch.destination_id: ch for ch in health_changes(batch)}
    # a: the success restarts the count; one failure after it.
    assert (changes["a"].reset, changes["a"].failures, changes["a"].disable_reason) == (
        True,
        1,
        None,
    )
    assert (changes["b"].reset, changes["b"].failures) == (True, 1)
    # c: no success: two more failures on top of what the row had; a 410 among them.
    assert (changes["c"].reset, changes["c"].failures) == (False, 2)
    assert changes["c"].disable_reason == "the receiver answered 410 Gone"


def test_health_changes_all_success_resets_to_zero() -> None:
    [change] = health_changes([_recorded(claimed(), "success", 200)] * 3)
    assert (change.reset, change.failures, change.disable_reason) == (True, 0, None)


def test_retry_after_date_in_the_past_is_zero() -> None:
    past = (NOW - timedelta(hours=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(past, now=NOW) == 0.0


def test_health_changes_count_slowdowns_and_the_recovery_after_the_last() -> None:
    c = claimed()
    limited = Recorded(c, "failed", 429, None, None, None, 1, NOW, "pending", 2.0, retry_after=2.0)
    batch = [
        _recorded(c, "success", 200),
        limited,
        _recorded(c, "failed", None),
        _recorded(c, "success", 200),
        _recorded(c, "success", 200),
    ]
    [change] = health_changes(batch)
    assert (change.slowed, change.retry_after, change.recovered) == (1, 2.0, 2)
    assert change.slowed_by == "the receiver answered 429 with Retry-After: 2"
    # A 503 and a timeout slow it down too; a 500 does not.
    timed_out = Recorded(c, "failed", None, "timeout", None, None, 1, NOW, "pending", 1.0)
    [change] = health_changes([_recorded(c, "failed", 503), timed_out, _recorded(c, "failed", 500)])
    # The 503 pauses it a second (no Retry-After); the timeout does not pause it.
    assert (change.slowed, change.retry_after, change.recovered) == (2, 1.0, 0)
    assert change.slowed_by == "the receiver did not answer in time (timeout)"
