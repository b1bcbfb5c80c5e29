"""The AWS types' pure parts: Go's printing of keys and metadata, Outpost's key
templates, queue URLs, error codes from botocore's own exceptions, and a throttled
attempt taken as a 429 by delivery control."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError

from relay.config import RetrySettings
from relay.db.outbox import Recorded, health_changes, pauses, slows_down
from relay.delivery import aws, keytemplates
from relay.delivery.aws_s3 import event_time
from relay.delivery.aws_sqs import console_url, queue_endpoint
from relay.delivery.base import Outcome
from relay.dispatcher import decide
from relay.retry import RetryPolicy
from tests.unit.test_retry import claimed

NOW = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (1.5, "1.5"),
        (42, "42"),
        (-2.5, "-2.5"),
        (100000, "100000"),
        # %g turns to an exponent at 10^6 (and below 10^-4), with two digits at least.
        (1234567, "1.234567e+06"),
        (1e6, "1e+06"),
        (123456789, "1.23456789e+08"),
        (1e21, "1e+21"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (0.1 + 0.2, "0.30000000000000004"),
        (0, "0"),
        (True, "true"),
        (None, "<nil>"),
        ([1, "a", [2.5]], "[1 a [2.5]]"),
        ({"b": 1, "a": "x"}, "map[a:x b:1]"),
    ],
)
def test_values_print_as_go_prints_them(value: object, printed: str) -> None:
    assert keytemplates.go_value(value) == printed


def test_metadata_json_is_gos() -> None:
    assert aws.go_json({"topic": "a<b>&c", "event-id": "e\u2028", "é": "\u00e9\n"}) == (
        '{"event-id":"e\\u2028","topic":"a\\u003cb\\u003e\\u0026c","é":"é\\n"}'
    )


def test_a_partition_key_falls_back_to_the_event_id() -> None:
    document = {"data": {"k": "v", "n": 3, "empty": ""}, "metadata": {"event-id": "evt"}}
    key = keytemplates.partition_key
    assert key("data.k", document, "evt_1") == "v"
    assert key("data.n", document, "evt_1") == "3"
    assert key('metadata."event-id"', document, "evt_1") == "evt"
    for fallback in ("", "data.missing", "data.empty", "abs(data.k)"):
        assert key(fallback, document, "evt_1") == "evt_1", fallback


def test_an_object_key_needs_a_value() -> None:
    document = {"data": {"k": "v"}, "metadata": {}, "time": {}}
    assert keytemplates.object_key("data.k", document) == "v"
    for template in ("data.missing", "join('', [])"):
        with pytest.raises(keytemplates.TemplateError):
            keytemplates.object_key(template, document)
    assert keytemplates.problem("join('', [data.a") is not None
    assert keytemplates.problem("data.a") is None


def test_time_fields_are_outposts() -> None:
    when = datetime(2026, 3, 4, 3, 6, 7, 120300, tzinfo=UTC)
    assert keytemplates.time_fields(when) == {
        "year": "2026",
        "month": "03",
        "day": "04",
        "hour": "03",
        "minute": "06",
        "second": "07",
        "date": "2026-03-04",
        "datetime": "2026-03-04T03:06:07",
        "unix": "1772593567",
        "rfc3339": "2026-03-04T03:06:07Z",
        "rfc3339_nano": "2026-03-04T03:06:07.1203Z",
    }
    assert keytemplates.rfc3339_nano(when.replace(microsecond=0)) == "2026-03-04T03:06:07Z"


def test_an_events_time_reads_from_its_epoch_text() -> None:
    c = claimed()
    c.event_time = "1772593567.120300"
    assert event_time(c) == datetime(2026, 3, 4, 3, 6, 7, 120300, tzinfo=UTC)
    c.event_time = "-1.5"
    assert event_time(c) == datetime(1969, 12, 31, 23, 59, 58, 500000, tzinfo=UTC)
    # What Python cannot hold falls back to the publish time.
    for unreadable in ("Infinity", "-Infinity", "1e20", None):
        c.event_time = unreadable
        assert event_time(c) == c.published_at.astimezone(UTC)


def test_a_queue_url_gives_endpoint_region_and_console() -> None:
    url = "https://sqs.eu-west-2.amazonaws.com/123456789012/orders"
    assert queue_endpoint(url) == ("https://sqs.eu-west-2.amazonaws.com", "eu-west-2")
    assert queue_endpoint("https://queue.amazonaws.com/1/q") == (
        "https://queue.amazonaws.com",
        "us-east-1",
    )
    assert queue_endpoint("http://127.0.0.1:4566/000000000000/q") == (
        "http://127.0.0.1:4566",
        "us-east-1",
    )
    assert console_url(url) == (
        "https://eu-west-2.console.aws.amazon.com/sqs/v3/home?region=eu-west-2#/queues/"
        "https%3A%2F%2Fsqs.eu-west-2.amazonaws.com%2F123456789012%2Forders"
    )
    assert console_url("http://127.0.0.1:4566/000000000000/q") is None


def _refusal(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "no"},
            "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "req-1"},
        },
        "SendMessage",
    )


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("AWS.SimpleQueueService.NonExistentQueue", 400, "queue_not_found"),
        ("QueueDoesNotExist", 400, "queue_not_found"),
        ("ResourceNotFoundException", 400, "stream_not_found"),
        ("NoSuchBucket", 404, "bucket_not_found"),
        ("AccessDenied", 403, "access_denied"),
        ("AccessDeniedException", 400, "access_denied"),
        ("InvalidClientTokenId", 403, "auth_failed"),
        ("SignatureDoesNotMatch", 403, "auth_failed"),
        ("ProvisionedThroughputExceededException", 400, "throttled"),
        ("SlowDown", 503, "throttled"),
        ("RequestThrottled", 403, "throttled"),
        ("Whatever", 429, "throttled"),
        ("ValidationException", 400, "validation_error"),
        ("InternalFailure", 500, "aws_error"),
    ],
)
def test_aws_refusals_have_stable_codes(code: str, status: int, expected: str) -> None:
    assert aws.classify(_refusal(code, status)) == expected


def test_a_refusals_detail_names_code_status_and_request() -> None:
    assert aws.detail(_refusal("QueueDoesNotExist")) == (
        "QueueDoesNotExist: no (HTTP 400, request id req-1)"
    )


def test_timeouts_are_timeouts() -> None:
    assert aws.classify(ConnectTimeoutError(endpoint_url="http://x")) == "timeout"
    assert aws.classify(ReadTimeoutError(endpoint_url="http://x")) == "timeout"


def test_throttled_is_taken_as_a_429() -> None:
    assert slows_down(None, "throttled") and pauses(None, "throttled")
    # A timeout slows down without a pause.
    assert slows_down(None, "timeout") and not pauses(None, "timeout")
    c = claimed()
    throttled = Recorded(c, "failed", None, "throttled", "SlowDown", None, 1, NOW, "pending", 1.0)
    [change] = health_changes([throttled])
    assert (change.slowed, change.retry_after) == (1, 1.0)
    assert change.slowed_by == "the receiver refused: too many requests (throttled)"


def test_a_format_error_fails_the_delivery_at_once() -> None:
    policy = RetryPolicy.from_settings(RetrySettings())
    outcome = Outcome(False, NOW, 1, error_code="format_error", error_detail="no key")
    assert decide(claimed(), outcome, policy).next_status == "failed"
    outcome = Outcome(False, NOW, 1, error_code="bucket_not_found", error_detail="no bucket")
    assert decide(claimed(), outcome, policy).next_status == "pending"
