"""Webhook signatures. Pure functions over bytes.

- Standard Webhooks (default): ``webhook-id``, ``webhook-timestamp`` and
  ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, keyed by the
  base64-decoded part of a ``whsec_`` secret (other secrets are used as UTF-8 bytes).
- Outpost's default scheme: ``x-outpost-signature: v0=<hex HMAC-SHA256 of the body>``, keyed
  by the secret's UTF-8 bytes as written (``whsec_`` prefix included), as Outpost's current
  default (content template ``{{.Body}}``, header template ``v0={{.Signatures | join ","}}``).

While a secret is being rotated both the current and the previous secret sign (current
first), so a receiver holding either verifies.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Sequence

WHSEC_PREFIX = "whsec_"


def generate_secret() -> str:
    """A new ``whsec_`` secret: 24 random bytes, base64."""
    return WHSEC_PREFIX + base64.b64encode(_secrets.token_bytes(24)).decode()


# Each secret's HMAC, keyed once: a signature copies it instead of redoing the key
# schedule (the same few secrets sign thousands of deliveries a second).
@functools.lru_cache(maxsize=1024)
def _standard_hmac(secret: str) -> hmac.HMAC:
    return hmac.new(_standard_key(secret), digestmod=hashlib.sha256)


@functools.lru_cache(maxsize=1024)
def _outpost_hmac(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _standard_key(secret: str) -> bytes:
    """The HMAC key: as the reference verifier (the ``standardwebhooks`` package) derives
    it, base64 of what follows ``whsec_``, padding optional."""
    if secret.startswith(WHSEC_PREFIX):
        try:
            key = base64.b64decode(secret[len(WHSEC_PREFIX) :] + "==")
        except ValueError:
            key = b""
        if key:
            return key
    # Not a whsec_ secret (or not base64 after all): its text is the key.
    return secret.encode()


def standard_signature(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<sig>`` for each secret, space-separated (the Standard Webhooks header value)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    parts = []
    for secret in secrets:
        mac = _standard_hmac(secret).copy()
        mac.update(signed)
        digest = mac.digest()
        parts.append("v1," + base64.b64encode(digest).decode())
    return " ".join(parts)


def standard_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(secrets, msg_id, timestamp, body),
    }


def outpost_signature(secrets: Sequence[str], body: bytes) -> str:
    digests = []
    for secret in secrets:
        mac = _outpost_hmac(secret).copy()
        mac.update(body)
        digests.append(mac.hexdigest())
    return "v0=" + ",".join(digests)
