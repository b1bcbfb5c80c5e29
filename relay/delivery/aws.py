"""What the three AWS types share (aws_sqs, aws_kinesis, aws_s3): one aiobotocore client
per destination, its errors as stable codes, Go's JSON for metadata.

A publisher makes its client on its first delivery (under that delivery's timeout) and
keeps it, with its pool of HTTP connections, until relay/delivery/pool.py closes it: when
the destination's config or credentials change, when it has been idle, when the
dispatcher stops. The client:

- signs with the destination's static key, secret and session token (never the
  process's own AWS credentials);
- tries each request once: relay's retry schedule, adaptive backoff and attempt rows own
  retries (botocore's would hide failed tries inside one attempt, and its throttling
  backoff would hold the slot that relay's pause frees);
- connects and reads under the destination's timeout, as the pool's own deadline;
- reaches only what the SSRF guard lets webhooks reach (``delivery.allow_private_networks``):
  an IP literal endpoint is judged before the call, a host name's addresses in the
  resolver of the client's connector. The endpoint's host is judged when a destination
  is created or changed too (AwsProvider.addresses), as a broker's is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore import exceptions as boto

from relay import ssrf
from relay.delivery.base import (
    AUTH_FAILED,
    BLOCKED_ADDRESS,
    CONNECTION_ERROR,
    CONNECTION_RESET,
    FORMAT_ERROR,
    NETWORK_ERROR,
    THROTTLED,
    TIMEOUT,
    TLS_ERROR,
    Attempt,
    DeliveryContext,
    Endpoint,
    Outcome,
    Provider,
    brief,
    message,
    network_code,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

log = logging.getLogger(__name__)

# Codes for what AWS refuses (besides the shared ones: throttled, auth_failed, timeout,
# connection_refused, ...). Outpost names stream_not_found and access_denied itself.
QUEUE_NOT_FOUND = "queue_not_found"
STREAM_NOT_FOUND = "stream_not_found"
BUCKET_NOT_FOUND = "bucket_not_found"
ACCESS_DENIED = "access_denied"
VALIDATION_ERROR = "validation_error"
# AWS answered with an error none of the above names (its code is in the detail).
AWS_ERROR = "aws_error"

# AWS's error codes, by what they mean. Throttling: botocore's own list (its standard
# retry mode's), and KMS's for encrypted queues and streams.
_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "KMSThrottlingException",
        "KmsThrottled",
    }
)
# The key, secret or session token is not accepted (as opposed to: accepted, and not
# allowed to do this).
_AUTH_FAILED = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidSecurityToken",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidToken",
    }
)
_ACCESS_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "KMSAccessDeniedException",
        "KmsAccessDenied",
        "AllAccessDisabled",
    }
)
_NOT_FOUND = {
    "AWS.SimpleQueueService.NonExistentQueue": QUEUE_NOT_FOUND,
    "QueueDoesNotExist": QUEUE_NOT_FOUND,
    "ResourceNotFoundException": STREAM_NOT_FOUND,
    "NoSuchBucket": BUCKET_NOT_FOUND,
}
_VALIDATION = frozenset(
    {"ValidationException", "InvalidParameterValue", "InvalidArgument", "InvalidStorageClass"}
)

# When a destination says nothing else (an SQS queue URL off amazonaws.com).
DEFAULT_REGION = "us-east-1"


def classify(exc: BaseException) -> str:
    """A stable code for a failed request."""
    if isinstance(exc, boto.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _THROTTLED or status == 429:
            return THROTTLED
        if code in _AUTH_FAILED:
            return AUTH_FAILED
        if code in _ACCESS_DENIED:
            return ACCESS_DENIED
        if code in _NOT_FOUND:
            return _NOT_FOUND[code]
        if code in _VALIDATION:
            return VALIDATION_ERROR
        return AWS_ERROR
    if isinstance(exc, boto.ConnectTimeoutError | boto.ReadTimeoutError | TimeoutError):
        return TIMEOUT
    if isinstance(exc, boto.SSLError):
        return TLS_ERROR
    if isinstance(exc, boto.ConnectionClosedError):
        return CONNECTION_RESET
    if isinstance(exc, boto.BotoCoreError):
        # aiobotocore keeps the network's error (aiohttp's, with the socket's inside).
        cause = _socket_error(exc.kwargs.get("error"))
        if isinstance(cause, ssrf.BlockedAddress):
            return BLOCKED_ADDRESS
        if cause is not None:
            return network_code(cause) or NETWORK_ERROR
        return CONNECTION_ERROR if isinstance(exc, boto.ConnectionError) else AWS_ERROR
    return network_code(exc) or AWS_ERROR


def _socket_error(error: object) -> BaseException | None:
    if isinstance(error, aiohttp.ClientConnectorError):
        return error.os_error
    return error if isinstance(error, OSError) else None


def detail(exc: BaseException) -> str:
    """An error as the attempt row's detail: AWS's code, message, HTTP status and
    request id (what AWS support asks for), or the client's own words."""
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        text = f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
        more = [f"HTTP {meta['HTTPStatusCode']}"] if meta.get("HTTPStatusCode") else []
        if meta.get("RequestId"):
            more.append(f"request id {meta['RequestId']}")
        return f"{text} ({', '.join(more)})" if more else text
    if isinstance(exc, boto.BotoCoreError):
        cause = _socket_error(exc.kwargs.get("error"))
        return f"{exc}: {brief(cause)}" if cause is not None else str(exc)
    return brief(exc)


def url_address(url: str, field: str) -> list[Endpoint]:
    """The host and port an http(s) URL names (the default port of its scheme when it
    gives none), for the SSRF guard; none when it is not such a URL (``problems`` says
    so)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return []
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return []
    return [Endpoint(field, parts.hostname, port or (443 if parts.scheme == "https" else 80))]


class AwsProvider(Provider):
    """What the three AWS types' values share: ``config.endpoint``, absent (AWS's own
    host for the region) or an absolute http(s) URL (a VPC endpoint, an emulator), which
    the SSRF guard judges when a destination is created or changed."""

    def problems(self, config: Mapping[str, str], credentials: Mapping[str, str]) -> list[str]:
        found = super().problems(config, credentials)
        endpoint = config.get("endpoint", "")
        if endpoint:
            parts = urlsplit(endpoint)
            problem = message("config.endpoint", "pattern")
            if (parts.scheme not in ("http", "https") or not parts.netloc) and problem not in found:
                found.append(problem)
        return found

    def addresses(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> list[Endpoint]:
        return url_address(config.get("endpoint", ""), "config.endpoint")


def go_json(value: Mapping[str, Any]) -> str:
    """Go's ``json.Marshal`` of a map: keys sorted, compact, and its HTML-safe escapes
    (``<``, ``>``, ``&``, U+2028, U+2029), which Outpost's metadata carries."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    # Outside strings compact JSON of strings has none of these characters.
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """What a destination's client is made from."""

    service: str
    region: str
    key: str
    secret: str
    session_token: str | None
    # None: AWS's own endpoint for the region.
    endpoint: str | None = None
    path_style: bool = False


_session: AioSession | None = None


def session() -> AioSession:
    """One botocore session per process: its service models are loaded once."""
    global _session
    if _session is None:
        _session = get_session()
    return _session


class AwsPublisher:
    """One destination's client, made on first use, closed by ``close()``. A type's
    publisher names its ``operation`` and says how an event becomes its parameters
    (``request``) and what a success keeps (``summary``)."""

    operation: ClassVar[str]

    def __init__(self, spec: ClientSpec, context: DeliveryContext) -> None:
        self.spec = spec
        self.context = context
        self._lock = asyncio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._closed = False
        # An IP literal the SSRF guard refuses (a host name is judged when resolved).
        self._refused = (
            None
            if spec.endpoint is None
            else ssrf.refusal_for_url(spec.endpoint, context.allowed_networks)
        )

    async def _ready(self, seconds: float) -> Any:
        async with self._lock:
            if self._closed:
                raise RuntimeError("publisher closed")
            if self._client is None:
                spec = self.spec
                resolver = ssrf.GuardedResolver(self.context.allowed_networks)
                config = AioConfig(
                    region_name=spec.region,
                    connect_timeout=seconds,
                    read_timeout=seconds,
                    retries={"mode": "standard", "total_max_attempts": 1},
                    max_pool_connections=self.context.settings.per_destination_concurrency,
                    # Service models are read in a thread, not on the event loop.
                    warm_up_loader_caches=True,
                    connector_args={"resolver": resolver},
                    s3={"addressing_style": "path"} if spec.path_style else None,
                )
                stack = contextlib.AsyncExitStack()
                stack.push_async_callback(resolver.close)
                try:
                    self._client = await stack.enter_async_context(
                        session().create_client(
                            spec.service,
                            region_name=spec.region,
                            endpoint_url=spec.endpoint,
                            aws_access_key_id=spec.key,
                            aws_secret_access_key=spec.secret,
                            aws_session_token=spec.session_token or None,
                            config=config,
                        )
                    )
                except BaseException:
                    await stack.aclose()
                    raise
                self._stack = stack
            return self._client

    async def deliver(self, claimed: Claimed) -> Outcome:
        attempt = Attempt()
        settings = self.context.settings
        if self._refused is not None:
            return attempt.failed(BLOCKED_ADDRESS, self._refused)
        try:
            request = self.request(claimed)
        except ValueError as exc:
            # This event can never be sent as the destination says (Outpost's format error).
            return attempt.failed(FORMAT_ERROR, f"could not format event for delivery: {exc}")
        try:
            client = await self._ready(claimed.timeout_seconds or settings.timeout_seconds)
            answer = await getattr(client, self.operation)(**request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return attempt.failed(classify(exc), detail(exc))
        return attempt.succeeded(response_body=json.dumps(self.summary(request, answer)))

    def request(self, claimed: Claimed) -> dict[str, Any]:
        """The operation's parameters for this event; ValueError when it cannot be sent."""
        raise NotImplementedError

    def summary(self, request: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
        """What the attempt row keeps of a success (Outpost's response data)."""
        return {}

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
