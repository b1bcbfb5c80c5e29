"""The webhook type: sign, POST, and describe what happened as an Outcome value.

Only a 2xx answer is a success. Redirects are not followed (a 3xx is a failure), and
network failures are classified into stable codes for the attempt row (``timeout``,
``dns_error``, ``connection_refused``, ``connection_reset``, ``tls_error``,
``blocked_address``, ...). ``deliver`` never raises for a failed delivery, nor for a
malformed destination: whatever happens becomes an Outcome.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import aiohttp
import orjson
from yarl import URL

from relay import ssrf, webhook_formats, webhooks
from relay.delivery import registry
from relay.delivery.base import (
    BLOCKED_ADDRESS,
    INVALID_REQUEST,
    Attempt,
    DeliveryContext,
    Outcome,
    Provider,
    Target,
    clean,
    json_map,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

TRUNCATED_PLACEHOLDER = "[response body larger than {cap} bytes; not stored]"
USER_AGENT = "relay-webhooks/0.1"
# Response headers kept on the attempt row (the rest of a huge header block is dropped).
MAX_RESPONSE_HEADERS = 50
GONE = "the receiver answered 410 Gone"
# Sent with every delivery; copied, not rebuilt, per request.
_BASE_HEADERS = {"content-type": "application/json", "user-agent": USER_AGENT}


@functools.lru_cache(maxsize=64)
def timeout_of(total: float) -> aiohttp.ClientTimeout:
    # A handful of distinct timeouts exist (the default and per-destination overrides).
    return aiohttp.ClientTimeout(total=total)


@functools.lru_cache(maxsize=4096)
def _refusal_for_url(url: str, allowed: tuple[ssrf.Network, ...]) -> str | None:
    # Pure (only IP literals are judged here; names go to the resolver), and the same few
    # URLs come by thousands of times a second under load.
    return ssrf.refusal_for_url(url, allowed)


# The defaults (delivery.webhook_mode standard, no [delivery.webhook] settings); the
# dispatcher passes the formats its settings describe, built once.
DEFAULT_FORMATS = webhook_formats.Formats()


def build_request(
    claimed: Claimed, now: float, formats: webhook_formats.Formats | None = None
) -> tuple[dict[str, str], bytes]:
    """Headers and body for a claimed delivery, in the format of its destination's mode
    (or the global one). The body is the producer's data verbatim.

    Custom headers come first, as in Outpost, so the format's headers replace them."""
    body = claimed.body.encode()
    secrets = [claimed.secret] if claimed.secret else []
    if claimed.previous_secret and claimed.previous_secret_valid:
        secrets.append(claimed.previous_secret)

    headers = _BASE_HEADERS.copy()
    if claimed.custom_headers and claimed.custom_headers != "{}":
        custom: dict[str, str] = orjson.loads(claimed.custom_headers)
        headers.update({k.lower(): str(v) for k, v in custom.items()})
    (formats or DEFAULT_FORMATS).for_mode(claimed.signature_mode).write(
        headers,
        event_id=claimed.event_id,
        topic=claimed.topic,
        metadata=json_map(claimed.metadata),
        delivery_metadata=json_map(claimed.delivery_metadata),
        secrets=secrets,
        now=now,
        body=body,
    )
    return headers, body


def classify_error(exc: BaseException) -> tuple[str, str]:
    """A stable code (and a human detail) for a failure without an HTTP answer."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorDNSError) and isinstance(
        exc.os_error, ssrf.BlockedAddress
    ):
        return BLOCKED_ADDRESS, str(exc.os_error)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout", detail if str(exc) else "timed out"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns_error", detail
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls_error", detail
    if isinstance(exc, ssl.SSLError):
        return "tls_error", detail
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError) or os_error.errno == errno.ECONNREFUSED:
            return "connection_refused", detail
        if os_error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "host_unreachable", detail
        return "connection_error", detail
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection_reset", detail
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection_reset", detail
    if isinstance(exc, ConnectionResetError):
        return "connection_reset", detail
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid_url", detail
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "protocol_error", detail
    if isinstance(exc, aiohttp.ClientError | OSError):
        return "network_error", f"{type(exc).__name__}: {detail}"
    # Not a network failure: something about this delivery could not even be sent
    # (a header value with a newline, a URL aiohttp refuses, ...).
    return "invalid_request", f"{type(exc).__name__}: {detail}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if seconds == seconds else None  # NaN is not a delay
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _headers(raw: Iterable[tuple[str, str]]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in itertools.islice(raw, MAX_RESPONSE_HEADERS):
        key = clean(name.lower())
        kept[key] = f"{kept[key]}, {clean(value)}" if key in kept else clean(value)
    return kept


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """Up to cap + 1 bytes of the body (one more than the cap tells us it was larger)."""
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await response.content.read(cap + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if response.content.at_eof():
            break  # the whole body is in (as a rule in one chunk): no read to learn it
    return b"".join(chunks)


async def send(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    client_timeout: aiohttp.ClientTimeout,
    body_cap: int,
    attempt: Attempt,
) -> Outcome:
    """POST ``body`` and describe the answer: only a 2xx is a success, a redirect is not
    followed. Shared by the HTTP types (webhook, hookdeck)."""
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=client_timeout, allow_redirects=False
        ) as response:
            raw = await _read_capped(response, body_cap)
            status = response.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            response_headers = _headers(response.headers.items())
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return attempt.failed(*classify_error(exc))

    if len(raw) > body_cap:
        text = TRUNCATED_PLACEHOLDER.format(cap=body_cap)
    else:
        text = clean(raw.decode("utf-8", errors="replace"))
    return Outcome(
        200 <= status < 300,
        attempt.started_at,
        attempt.elapsed_ms(),
        http_status=status,
        error_code="redirect_not_followed" if 300 <= status < 400 else None,
        response_body=text,
        response_headers=response_headers,
        retry_after=retry_after,
        # The receiver says this endpoint will never take a delivery again.
        disable_reason=GONE if status == 410 else None,
    )


async def deliver(
    session: aiohttp.ClientSession,
    claimed: Claimed,
    *,
    timeout_seconds: float,
    body_cap: int,
    allowed_networks: Sequence[ssrf.Network] = (),
    formats: webhook_formats.Formats | None = None,
) -> Outcome:
    """Send one attempt of a claimed delivery and describe what happened."""
    attempt = Attempt()
    url = claimed.url
    if url is None or claimed.secret is None:  # the table's check forbids it
        return attempt.failed(INVALID_REQUEST, "a webhook destination without url or secret")
    try:
        refused = _refusal_for_url(url, tuple(allowed_networks))
        if refused is not None:
            return attempt.failed(BLOCKED_ADDRESS, refused)
        headers, body = build_request(claimed, time.time(), formats)
    except Exception as exc:
        return attempt.failed(*classify_error(exc))
    timeout = timeout_of(claimed.timeout_seconds or timeout_seconds)
    return await send(
        session, url, headers, body, client_timeout=timeout, body_cap=body_cap, attempt=attempt
    )


# --- the type ----------------------------------------------------------------------------


def target(url: str) -> Target:
    """A webhook's target: its URL's host (relay's choice; Outpost shows the URL), and
    the URL."""
    try:
        host = URL(url).host or url
    except ValueError:
        host = url
    return Target(host, url)


class WebhookPublisher:
    """Every webhook destination's publisher: the dispatcher's session is the pool."""

    def __init__(self, context: DeliveryContext) -> None:
        self.context = context

    async def deliver(self, claimed: Claimed) -> Outcome:
        c = self.context
        return await deliver(
            c.session,
            claimed,
            timeout_seconds=c.settings.timeout_seconds,
            body_cap=c.settings.response_body_cap_bytes,
            allowed_networks=c.allowed_networks,
            formats=c.formats,
        )

    async def close(self) -> None:
        """The session is the dispatcher's to close."""


class WebhookProvider(Provider):
    """Webhook destinations keep relay's own columns (url, custom_headers, secret and its
    rotation, webhook_mode), so the API's webhook rules live in relay/api/destinations.py
    and the config file's in relay/config.py; this is the type as the registry sees it."""

    shared = True

    def problems(self, config: Mapping[str, str], credentials: Mapping[str, str]) -> list[str]:
        problem = webhooks.url_problem(config.get("url", ""))
        found = [f"config.url {problem}"] if problem else []
        raw = config.get("custom_headers")
        if raw:
            try:
                headers = orjson.loads(raw)
            except orjson.JSONDecodeError:
                headers = None
            if not isinstance(headers, dict):
                found.append("config.custom_headers must be a JSON object of strings")
            else:
                found += [f"config.custom_headers: {p}" for p in webhooks.header_problems(headers)]
        return found

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        return target(config.get("url", ""))

    def shown(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        # As Outpost: a webhook's secrets are shown (the receiver needs them to verify).
        return dict(config), dict(credentials)

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> WebhookPublisher:
        return WebhookPublisher(context)


PROVIDER = WebhookProvider(registry.schema("webhook"))
