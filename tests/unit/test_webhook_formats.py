"""The two webhook formats, header for header as Outpost sends them (its destwebhook and
destwebhookstandard publishers), checked by recomputing every signature and with the
verifiers Outpost's documentation gives its users."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks import Webhook

from relay import webhook_formats
from relay.delivery import base
from relay.webhook_formats import Formats, OutpostFormat, StandardFormat

SECRET = "whsec_" + "ab" * 32  # as Outpost's default mode generates them
OLD_SECRET = "whsec_" + "cd" * 32
STD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"user_id":"usr_123","email":"user@example.com"}'
NOW = 1717230216.25  # 2024-06-01T08:23:36.25Z


def write(
    fmt: webhook_formats.Format,
    *,
    metadata: dict[str, str] | None = None,
    delivery_metadata: dict[str, str] | None = None,
    custom: dict[str, str] | None = None,
    secrets: tuple[str, ...] = (SECRET,),
    topic: str = "user.created",
    now: float = NOW,
) -> dict[str, str]:
    headers = {"content-type": "application/json", **(custom or {})}
    fmt.write(
        headers,
        event_id="evt_abc123",
        topic=topic,
        metadata=metadata or {},
        delivery_metadata=delivery_metadata or {},
        secrets=list(secrets),
        now=now,
        body=BODY,
    )
    return headers


def outpost_docs_verify(raw_body: bytes, signature_header: str | None, secret: str) -> bool:
    """Verbatim the verifier of Outpost's guide (docs/content/guides/
    verify-webhook-signatures.mdoc, the Python tab)."""
    if not signature_header or not signature_header.startswith("v0="):
        return False
    expected = hmac.new(secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return any(
        hmac.compare_digest(candidate, expected) for candidate in signature_header[3:].split(",")
    )


# --- outpost (Outpost's default mode) -------------------------------------------------


def test_outpost_default_headers_are_the_documented_request() -> None:
    # docs/content/destinations/webhook.mdoc, "Event Format".
    headers = write(OutpostFormat(), metadata={"source": "signup-service"})
    signature = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert headers == {
        "content-type": "application/json",
        "x-outpost-event-id": "evt_abc123",
        "x-outpost-topic": "user.created",
        "x-outpost-timestamp": "2024-06-01T08:23:36Z",
        "x-outpost-signature": f"v0={signature}",
        "x-outpost-source": "signup-service",
    }
    assert outpost_docs_verify(BODY, headers["x-outpost-signature"], SECRET)
    assert not outpost_docs_verify(BODY, headers["x-outpost-signature"], OLD_SECRET)
    assert not outpost_docs_verify(BODY + b" ", headers["x-outpost-signature"], SECRET)


def test_outpost_rotation_signs_current_then_previous() -> None:
    value = write(OutpostFormat(), secrets=(SECRET, OLD_SECRET))["x-outpost-signature"]
    current = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    previous = hmac.new(OLD_SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert value == f"v0={current},{previous}"
    assert outpost_docs_verify(BODY, value, SECRET)
    assert outpost_docs_verify(BODY, value, OLD_SECRET)


def test_outpost_metadata_precedence_is_system_then_destination_then_event() -> None:
    # destwebhook_publish_test.go: delivery_metadata overrides system keys, event
    # metadata overrides delivery_metadata, and metadata overrides a custom header.
    headers = write(
        OutpostFormat(),
        delivery_metadata={"timestamp": "999", "source": "destination", "app-id": "a1"},
        metadata={"source": "event", "Region": "eu"},
        custom={"x-outpost-app-id": "custom", "authorization": "Bearer x"},
    )
    assert headers["x-outpost-timestamp"] == "999"
    assert headers["x-outpost-source"] == "event"
    assert headers["x-outpost-app-id"] == "a1"
    assert headers["x-outpost-region"] == "eu"  # the key verbatim; HTTP ignores case
    assert headers["authorization"] == "Bearer x"


def test_outpost_metadata_can_replace_event_id_and_topic_but_never_the_signature() -> None:
    headers = write(
        OutpostFormat(),
        metadata={"event-id": "other", "topic": "other.topic", "signature": "v0=forged"},
    )
    assert headers["x-outpost-event-id"] == "other"
    assert headers["x-outpost-topic"] == "other.topic"
    assert outpost_docs_verify(BODY, headers["x-outpost-signature"], SECRET)


def test_outpost_metadata_never_lands_on_a_header_the_http_layer_owns() -> None:
    headers = write(OutpostFormat(prefix=""), metadata={"content-length": "1", "host": "evil"})
    assert "content-length" not in headers and "host" not in headers
    assert headers["content-type"] == "application/json"


def test_outpost_prefix_is_concatenated_as_is() -> None:
    # webhook.mdoc: a prefix without a trailing separator gives x-acmeevent-id.
    headers = write(OutpostFormat(prefix="x-acme"), metadata={"k": "v"})
    assert {"x-acmeevent-id", "x-acmetopic", "x-acmetimestamp", "x-acmesignature", "x-acmek"} <= (
        set(headers)
    )
    bare = write(OutpostFormat(prefix=""))
    assert {"event-id", "topic", "timestamp", "signature"} <= set(bare)


def test_outpost_pinned_and_disabled_headers() -> None:
    fmt = OutpostFormat(
        names={"event-id": "X-Request-Id", "signature": "X-Sig", "timestamp": "", "topic": ""},
    )
    headers = write(fmt, metadata={"timestamp": "from-metadata", "source": "crm"})
    assert headers["x-request-id"] == "evt_abc123"
    assert outpost_docs_verify(BODY, headers["x-sig"], SECRET)
    # A disabled system header stays off even when metadata carries its key.
    assert not any("timestamp" in name or "topic" in name for name in headers)
    assert "x-outpost-event-id" not in headers and "x-outpost-signature" not in headers
    assert headers["x-outpost-source"] == "crm"
    unsigned = write(OutpostFormat(names={"signature": ""}))
    assert not any("signature" in name for name in unsigned)


def test_outpost_millisecond_timestamp() -> None:
    headers = write(OutpostFormat(milliseconds=True))
    assert headers["x-outpost-timestamp-ms"] == "2024-06-01T08:23:36.25Z"
    assert base.rfc3339_fraction(1717230216.0) == "2024-06-01T08:23:36Z"


def test_outpost_pre_v0_12_templates_sign_the_timestamp_too() -> None:
    # upgrade-v0.12.mdoc: the former defaults, which the docs show as the example.
    fmt = OutpostFormat(
        content_template="{{.Timestamp.Unix}}.{{.Body}}",
        header_template='t={{.Timestamp.Unix}},v0={{.Signatures | join ","}}',
    )
    value = write(fmt, secrets=(SECRET, OLD_SECRET))["x-outpost-signature"]
    signed = b"1717230216." + BODY
    sigs = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in (SECRET, OLD_SECRET)]
    assert value == f"t=1717230216,v0={sigs[0]},{sigs[1]}"


def test_outpost_encoding_algorithm_and_every_template_field() -> None:
    fmt = OutpostFormat(
        content_template="ts={{.Timestamp.Unix}};id={{ .EventID }};topic={{.Topic}};data={{.Body}}",
        header_template='{{.EventID}}/{{.Topic}}: {{.Signatures | join " "}}',
        encoding="base64",
        algorithm="hmac-sha1",
    )
    value = write(fmt, secrets=(SECRET, OLD_SECRET))["x-outpost-signature"]
    signed = b"ts=1717230216;id=evt_abc123;topic=user.created;data=" + BODY
    sigs = [
        base64.b64encode(hmac.new(s.encode(), signed, hashlib.sha1).digest()).decode()
        for s in (SECRET, OLD_SECRET)
    ]
    assert value == f"evt_abc123/user.created: {sigs[0]} {sigs[1]}"


@pytest.mark.parametrize(
    ("prefix", "names", "words"),
    [
        ("x-outpost-", {"topic": "x-outpost-event-id"}, "both named 'x-outpost-event-id'"),
        ("x-outpost-", {"event-id": "X-Same", "topic": "x-same"}, "both named 'x-same'"),
        ("x-outpost-", {"signature": "content-type"}, "cannot replace"),
        ("x-outpost-", {"topic": "-topic"}, "must start with a letter or digit"),
        ("x outpost", {}, "only letters"),
        ("", {}, None),
        ("x-outpost-", {"topic": "x-outpost-event-id", "event-id": ""}, None),
    ],
)
def test_outpost_header_settings_are_checked_as_outpost_checks_them(
    prefix: str, names: dict[str, str], words: str | None
) -> None:
    problems = webhook_formats.outpost_problems(prefix, names)
    if words is None:
        assert problems == []
    else:
        assert any(words in p for p in problems), problems
        with pytest.raises(ValueError):
            OutpostFormat(prefix=prefix, names=names)


# --- standard (Outpost's standard mode) ----------------------------------------------


def test_standard_headers_verify_and_carry_topic_and_metadata() -> None:
    now = time.time()
    headers = write(
        StandardFormat(),
        now=now,
        secrets=(STD_SECRET,),
        delivery_metadata={"app-id": "a1", "source": "destination"},
        metadata={"source": "crm", "Region": "eu"},
        custom={"authorization": "Bearer x"},
    )
    Webhook(STD_SECRET).verify(BODY, headers)
    assert headers == {
        "content-type": "application/json",
        "authorization": "Bearer x",
        "webhook-id": "evt_abc123",
        "webhook-timestamp": str(int(now)),
        "webhook-signature": headers["webhook-signature"],
        "webhook-topic": "user.created",
        "webhook-app-id": "a1",
        "webhook-source": "crm",
        "webhook-region": "eu",
        # The event's own metadata again, unprefixed (not delivery_metadata), as Outpost.
        "source": "crm",
        "region": "eu",
    }
    signed = f"evt_abc123.{int(now)}.".encode() + BODY
    key = base64.b64decode(STD_SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"


def test_standard_metadata_never_replaces_what_verification_or_the_receiver_needs() -> None:
    headers = write(
        StandardFormat(),
        now=time.time(),
        secrets=(STD_SECRET,),
        metadata={
            "id": "forged",
            "signature": "v1,forged",
            "content-type": "text/plain",
            "authorization": "Bearer forged",
            "webhook-id": "forged",
        },
        custom={"authorization": "Bearer x"},
    )
    Webhook(STD_SECRET).verify(BODY, headers)
    assert headers["webhook-id"] == "evt_abc123"
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer x"
    assert headers["webhook-authorization"] == "Bearer forged"


def test_standard_custom_prefix_milliseconds_and_no_unprefixed_copy() -> None:
    # destwebhookstandard_publish_test.go: prefix x-custom- gives x-custom-id, ...
    fmt = StandardFormat(prefix="x-custom-", unprefixed_metadata=False, milliseconds=True)
    now = time.time()
    headers = write(fmt, now=now, secrets=(STD_SECRET, OLD_SECRET), metadata={"source": "crm"})
    assert headers["x-custom-id"] == "evt_abc123"
    assert headers["x-custom-timestamp"] == str(int(now))
    assert headers["x-custom-topic"] == "user.created"
    assert headers["x-custom-timestamp-ms"].startswith(base.rfc3339(int(now))[:-1])
    assert headers["x-custom-source"] == "crm"
    assert "source" not in headers
    assert len(headers["x-custom-signature"].split(" ")) == 2
    renamed = {k.replace("x-custom-", "webhook-"): v for k, v in headers.items()}
    Webhook(STD_SECRET).verify(BODY, renamed)


def test_a_destination_without_a_mode_gets_the_global_one() -> None:
    formats = Formats(mode="outpost")
    assert formats.for_mode(None) is formats.outpost
    assert formats.for_mode("standard") is formats.standard
    assert Formats().for_mode(None) is Formats().standard


@pytest.mark.parametrize("fmt", [OutpostFormat(), StandardFormat(prefix="x-outpost-")])
def test_metadata_that_cannot_be_a_header_is_left_out(fmt: webhook_formats.Format) -> None:
    headers = write(
        fmt,
        now=time.time(),
        metadata={"ok": "fine\tvalue", "bad key": "v", "line": "a\r\nx-injected: 1"},
        delivery_metadata={"also:bad": "v", "nul": "\x00"},
    )
    assert headers["x-outpost-ok"] == "fine\tvalue"
    assert not any(name in headers for name in ("x-outpost-bad key", "x-outpost-line"))
    assert not any("bad" in name or "nul" in name or "injected" in name for name in headers)
