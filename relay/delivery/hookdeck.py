"""The hookdeck type: each event is POSTed to a Hookdeck managed source (its publish URL).

As Outpost's desthookdeck: the token is base64 of ``<source id>:<signing key>``; the event
goes to ``<publish_url>/<source id>`` (Hookdeck's https://hkdk.events unless
delivery.hookdeck.publish_url says otherwise), its data as the body, signed
``x-hookdeck-signature: v0=<base64 HMAC-SHA256 of the body, keyed by the token>``, with
the merged metadata as ``x-outpost-<key>`` headers. Saving a destination checks its token
with Hookdeck (delivery.hookdeck.api_url) and keeps the source's name and id in its
config, for the target shown. Unlike Outpost, only a 2xx answer is a success (Outpost
takes any answer below 400), as for webhooks.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import aiohttp
import orjson

from relay.delivery import registry, webhook
from relay.delivery.base import (
    INVALID_REQUEST,
    Attempt,
    DeliveryContext,
    Outcome,
    Provider,
    Target,
    json_map,
    message,
)
from relay.errors import ValidationFailed
from relay.webhook_formats import merged_metadata

if TYPE_CHECKING:
    from relay.config import DeliverySettings
    from relay.db.outbox import Claimed

DASHBOARD_SOURCES = "https://dashboard.hookdeck.com/sources/"
VERIFY_PATH = "/2025-01-01/sources/{id}/managed/verify"
VERIFY_TIMEOUT = aiohttp.ClientTimeout(total=10)
PREFIX = "x-outpost-"


class Token(NamedTuple):
    source_id: str
    # The whole token: it signs the body.
    signing_key: str


@functools.lru_cache(maxsize=1024)
def parse_token(token: str) -> Token | None:
    """The source id a token names, or None when it is not base64 of ``id:key``."""
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None
    source_id, colon, _ = decoded.partition(":")
    return Token(source_id, token) if colon else None


def signature(token: Token, body: bytes) -> str:
    digest = hmac.new(token.signing_key.encode(), body, hashlib.sha256).digest()
    return "v0=" + base64.b64encode(digest).decode()


def build_request(
    token: Token, claimed: Claimed, now: float, milliseconds: bool
) -> tuple[dict[str, str], bytes]:
    """Headers and body for a claimed delivery (the body is the event's data verbatim)."""
    body = claimed.body.encode()
    headers = {
        "content-type": "application/json",
        "user-agent": webhook.USER_AGENT,
        "x-hookdeck-signature": signature(token, body),
    }
    metadata = merged_metadata(
        claimed.event_id,
        claimed.topic,
        now,
        json_map(claimed.delivery_metadata),
        json_map(claimed.metadata),
        milliseconds=milliseconds,
    )
    for key, value in metadata.items():
        headers[PREFIX + key.lower()] = value
    return headers, body


class HookdeckPublisher:
    """Every hookdeck destination's publisher, over the dispatcher's session."""

    def __init__(self, context: DeliveryContext) -> None:
        self.context = context
        self.publish_url = context.settings.hookdeck.publish_url

    async def deliver(self, claimed: Claimed) -> Outcome:
        attempt = Attempt()
        token = parse_token(json_map(claimed.credentials).get("token", ""))
        if token is None:
            return attempt.failed(INVALID_REQUEST, "credentials.token is not a Hookdeck token")
        settings = self.context.settings
        headers, body = build_request(token, claimed, time.time(), self.context.milliseconds)
        return await webhook.send(
            self.context.session,
            f"{self.publish_url}/{token.source_id}",
            headers,
            body,
            client_timeout=webhook.timeout_of(claimed.timeout_seconds or settings.timeout_seconds),
            body_cap=settings.response_body_cap_bytes,
            attempt=attempt,
        )

    async def close(self) -> None:
        """The session is the dispatcher's to close."""


async def verify_token(settings: DeliverySettings, token: Token) -> str | None:
    """The managed source's name, as Hookdeck answers for a valid token; None when it
    refuses the token or cannot be asked."""
    url = settings.hookdeck.api_url + VERIFY_PATH.format(id=token.source_id)
    try:
        async with (
            aiohttp.ClientSession(timeout=VERIFY_TIMEOUT, trust_env=False) as session,
            session.get(url, headers={"x-hookdeck-source-token": token.signing_key}) as response,
        ):
            if response.status != 200:
                return None
            answer = orjson.loads(await response.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
        return None
    name = answer.get("name") if isinstance(answer, dict) else None
    return name if isinstance(name, str) else None


class HookdeckProvider(Provider):
    shared = True

    def problems(self, config: Mapping[str, str], credentials: Mapping[str, str]) -> list[str]:
        found = super().problems(config, credentials)
        token = credentials.get("token", "")
        if token and parse_token(token) is None:
            found.append(message("credentials.token", "invalid_token_format"))
        return found

    async def verify(
        self,
        config: Mapping[str, str],
        credentials: Mapping[str, str],
        before: tuple[Mapping[str, str], Mapping[str, str]] | None,
        settings: DeliverySettings,
    ) -> dict[str, str]:
        """As Outpost's Preprocess: a new token is checked with Hookdeck, and the source's
        name and id kept in config (hidden fields the target shows)."""
        token = parse_token(credentials.get("token", ""))
        if token is None:
            raise ValidationFailed([message("credentials.token", "invalid_token_format")])
        if before is not None and before[1].get("token") == token.signing_key:
            return {}
        name = await verify_token(settings, token)
        if name is None:
            raise ValidationFailed([message("credentials.token", "token_verification_failed")])
        return {"source_name": name, "source_id": token.source_id}

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        name, source_id = config.get("source_name"), config.get("source_id")
        if name and source_id:
            return Target(name, DASHBOARD_SOURCES + source_id)
        raw = credentials.get("token", "")
        if not raw:
            return Target("Hookdeck (no token)")
        token = parse_token(raw)
        if token is None:
            return Target("Hookdeck (invalid token)")
        return Target(f"Hookdeck source ID: {token.source_id}", DASHBOARD_SOURCES + token.source_id)

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> HookdeckPublisher:
        return HookdeckPublisher(context)


PROVIDER = HookdeckProvider(registry.schema("hookdeck"))
