"""Signing reuses one keyed HMAC per secret: every signature must still be computed
from scratch as far as the result goes (no state leaks from one message to the next)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from relay import signing

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_" + base64.b64encode(b"another key, 24 bytes!!!").decode()


def _by_hand(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_repeated_and_interleaved_standard_signatures_match_a_fresh_hmac() -> None:
    messages = [("msg_1", 1, b'{"a":1}'), ("msg_2", 2, b'{"b":2}'), ("msg_1", 1, b'{"a":1}')]
    for secret in (SECRET, OTHER, SECRET):
        for msg_id, ts, body in messages:
            assert signing.standard_signature([secret], msg_id, ts, body) == _by_hand(
                secret, msg_id, ts, body
            )


def test_repeated_outpost_signatures_match_a_fresh_hmac() -> None:
    for body in (b"first", b"second", b"first"):
        expected = hmac.new(OTHER.encode(), body, hashlib.sha256).hexdigest()
        assert signing.outpost_signature([OTHER], body) == f"v0={expected}"
