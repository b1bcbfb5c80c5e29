"""Webhook signatures and secrets. Pure functions over bytes (relay/webhook_formats.py
says which headers carry them).

- Standard Webhooks (the ``standard`` format): ``v1,<base64 HMAC-SHA256 of
  "id.timestamp.body">``, keyed by the base64-decoded part of a ``whsec_`` secret (other
  secrets are used as UTF-8 bytes).
- Outpost's default mode (the ``outpost`` format): an HMAC (SHA-256, or SHA-1 if the
  operator says so) of the signed content, keyed by the secret's UTF-8 bytes as written
  (``whsec_`` prefix included), hex or base64. By default the content is the body and the
  header ``v0=<hex>``.

While a secret is being rotated both the current and the previous secret sign (current
first), so a receiver holding either verifies.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Callable, Sequence
from typing import Any, Literal

WHSEC_PREFIX = "whsec_"
Algorithm = Literal["hmac-sha256", "hmac-sha1"]
Encoding = Literal["hex", "base64"]
_DIGESTS: dict[str, Callable[[], Any]] = {
    "hmac-sha256": hashlib.sha256,
    "hmac-sha1": hashlib.sha1,
}


def generate_secret(mode: str = "standard") -> str:
    """A new secret as Outpost generates one for the format: ``whsec_`` and 32 random
    bytes, in hex for ``outpost`` (its default ``whsec_{{.RandomHex}}``), in base64 for
    ``standard`` (what Standard Webhooks verifiers decode)."""
    if mode == "outpost":
        return WHSEC_PREFIX + _secrets.token_hex(32)
    return WHSEC_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


# Each secret's HMAC, keyed once: a signature copies it instead of redoing the key
# schedule (the same few secrets sign thousands of deliveries a second).
@functools.lru_cache(maxsize=1024)
def _standard_hmac(secret: str) -> hmac.HMAC:
    return hmac.new(_standard_key(secret), digestmod=hashlib.sha256)


@functools.lru_cache(maxsize=1024)
def _outpost_hmac(secret: str, algorithm: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), digestmod=_DIGESTS[algorithm])


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


def outpost_signatures(
    secrets: Sequence[str],
    content: bytes,
    algorithm: Algorithm = "hmac-sha256",
    encoding: Encoding = "hex",
) -> list[str]:
    """One signature of ``content`` per secret, in their order (Outpost's ``.Signatures``)."""
    signatures = []
    for secret in secrets:
        mac = _outpost_hmac(secret, algorithm).copy()
        mac.update(content)
        if encoding == "hex":
            signatures.append(mac.hexdigest())
        else:
            signatures.append(base64.b64encode(mac.digest()).decode())
    return signatures


def outpost_signature(secrets: Sequence[str], body: bytes) -> str:
    """Outpost's default header value: ``v0=`` and the hex HMAC-SHA256 of the body per
    secret, comma-separated."""
    return "v0=" + ",".join(outpost_signatures(secrets, body))
