"""Signatures, checked against the reference verifier and by recomputing the HMAC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from relay import signing
from relay.db.outbox import Claimed
from relay.delivery.webhook import build_request
from relay.webhook_formats import Formats

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_" + base64.b64encode(b"the previous secret, 32 bytes!!!").decode()
BODY = b'{"zeta":1,"alpha":"\xc3\xa9"}'


def test_standard_signature_matches_the_spec_by_hand() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    ).decode()
    assert signing.standard_signature([SECRET], "msg_1", 1700000000, BODY) == f"v1,{expected}"


def test_standard_headers_verify_with_the_standardwebhooks_package() -> None:
    now = int(time.time())
    headers = signing.standard_headers([SECRET], "evt_42", now, BODY)
    assert headers["webhook-id"] == "evt_42"
    assert headers["webhook-timestamp"] == str(now)
    Webhook(SECRET).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY + b" ", headers)


def test_during_rotation_both_secrets_verify() -> None:
    headers = signing.standard_headers([SECRET, OLD_SECRET], "evt_42", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(BODY, headers)
    Webhook(OLD_SECRET).verify(BODY, headers)


def test_unpadded_and_non_whsec_secrets_sign_as_the_verifier_reads_them() -> None:
    unpadded = "whsec_" + base64.b64encode(b"sixteen byte key").decode().rstrip("=")
    headers = signing.standard_headers([unpadded], "m", int(time.time()), BODY)
    Webhook(unpadded).verify(BODY, headers)
    raw = "plain-text-secret"
    expected = hmac.new(raw.encode(), b"m.5." + BODY, hashlib.sha256).digest()
    assert signing.standard_signature([raw], "m", 5, BODY) == (
        "v1," + base64.b64encode(expected).decode()
    )


def test_outpost_signature_is_hex_hmac_of_the_body_current_secret_first() -> None:
    new = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    old = hmac.new(OLD_SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert signing.outpost_signature([SECRET], BODY) == f"v0={new}"
    assert signing.outpost_signature([SECRET, OLD_SECRET], BODY) == f"v0={new},{old}"


def test_generated_secrets_are_as_outpost_makes_them_for_each_format() -> None:
    # Standard mode (destwebhookstandard/secret.go): whsec_ + base64 of 32 bytes.
    secret = signing.generate_secret("standard")
    assert secret.startswith("whsec_") and secret != signing.generate_secret("standard")
    assert len(secret) == 50 and len(base64.b64decode(secret[6:], validate=True)) == 32
    headers = signing.standard_headers([secret], "m", int(time.time()), BODY)
    Webhook(secret).verify(BODY, headers)
    # Default mode (its template whsec_{{.RandomHex}}): whsec_ + 64 lowercase hex.
    hexed = signing.generate_secret("outpost")
    assert re.fullmatch(r"whsec_[0-9a-f]{64}", hexed) and hexed != signing.generate_secret(
        "outpost"
    )


def _claimed(**changes: object) -> Claimed:
    base = Claimed(
        id=1,
        attempt=1,
        token=uuid.uuid4(),
        manual=False,
        tenant_id="acme",
        destination_id="orders",
        event_seq=7,
        event_id="evt_7",
        topic="order.created",
        body=BODY.decode(),
        metadata=orjson.dumps({"source": "crm", "Region": "eu"}).decode(),
        eligible_for_retry=True,
        published_at=datetime.now(UTC),
        claimed_at=datetime.now(UTC),
        type="webhook",
        config="{}",
        credentials="{}",
        url="https://example.com/hook",
        custom_headers=orjson.dumps(
            {"Authorization": "Bearer x", "webhook-signature": "forged"}
        ).decode(),
        secret=SECRET,
        previous_secret=OLD_SECRET,
        previous_secret_valid=False,
        signature_mode=None,
        timeout_seconds=None,
        delivery_metadata=orjson.dumps({"app-id": "relay", "source": "dest"}).decode(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_standard_request_keeps_custom_headers_but_never_a_forged_signature() -> None:
    now = time.time()
    headers, body = build_request(_claimed(), now)
    assert body == BODY
    assert headers["authorization"] == "Bearer x"
    assert headers["content-type"] == "application/json"
    Webhook(SECRET).verify(body, headers)
    # The previous secret has expired: only the current one signs.
    assert len(headers["webhook-signature"].split(" ")) == 1
    assert not any(name.startswith("x-outpost-") for name in headers)
    # Topic and metadata as Outpost's standard mode sends them.
    assert headers["webhook-topic"] == "order.created"
    assert headers["webhook-source"] == "crm" and headers["source"] == "crm"
    assert headers["webhook-app-id"] == "relay" and "app-id" not in headers


def test_standard_request_signs_with_the_previous_secret_while_it_is_valid() -> None:
    headers, body = build_request(_claimed(previous_secret_valid=True), time.time())
    Webhook(OLD_SECRET).verify(body, headers)
    Webhook(SECRET).verify(body, headers)


def test_outpost_request_headers() -> None:
    now = 1717230216.9
    headers, body = build_request(
        _claimed(signature_mode="outpost", previous_secret_valid=True), now
    )
    assert headers["x-outpost-event-id"] == "evt_7"
    assert headers["x-outpost-topic"] == "order.created"
    # RFC 3339 UTC to the second, as Outpost since v0.16 (before: Unix seconds).
    assert headers["x-outpost-timestamp"] == "2024-06-01T08:23:36Z"
    new = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    old = hmac.new(OLD_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-outpost-signature"] == f"v0={new},{old}"
    # Event metadata becomes headers, over the destination's delivery_metadata.
    assert headers["x-outpost-source"] == "crm"
    assert headers["x-outpost-region"] == "eu"
    assert headers["x-outpost-app-id"] == "relay"
    assert "webhook-id" not in headers and "webhook-timestamp" not in headers


def test_a_destination_without_a_mode_follows_the_global_one() -> None:
    headers, body = build_request(_claimed(), time.time(), Formats(mode="outpost"))
    assert headers["x-outpost-signature"] == signing.outpost_signature([SECRET], body)
    headers, body = build_request(
        _claimed(signature_mode="standard"), time.time(), Formats(mode="outpost")
    )
    Webhook(SECRET).verify(body, headers)


def test_outpost_metadata_never_replaces_the_signature() -> None:
    metadata = orjson.dumps({"signature": "v0=forged", "topic": "other"}).decode()
    headers, body = build_request(
        _claimed(signature_mode="outpost", metadata=metadata), time.time()
    )
    # Metadata may replace the topic header, as in Outpost; the signature is written last.
    assert headers["x-outpost-topic"] == "other"
    assert headers["x-outpost-signature"] == signing.outpost_signature([SECRET], body)
