"""The gcp_pubsub type: each event is one message on a Pub/Sub topic (google-cloud-pubsub's
generated asyncio client, ``PublisherAsyncClient``, over gRPC).

As Outpost's destgcppubsub: the topic ``projects/<project_id>/topics/<topic>``, the
event's data as the message data, the merged metadata (event-id, topic, timestamp,
delivery_metadata, the event's metadata) as its attributes, no ordering key. With
``endpoint`` set (the emulator's host:port) relay connects there in plain text and
without credentials, as Outpost does; otherwise to Google with the service account's key.
The high-level ``PublisherClient.publish`` is not used: it takes attributes as keyword
arguments and so cannot send the ``topic`` attribute every message carries.

Unlike Outpost, relay takes only a service account's key (``"type": "service_account"``)
and signs with it locally: other credential types (external accounts, for one) name
files, URLs or programs for the client library to read or run, which a tenant must not
choose; and a key's ``token_uri`` is replaced by Google's, so a key cannot send relay
anywhere else.

One gRPC channel per destination (relay/delivery/pool.py keeps the publisher), opened on
first use; one the network broke is dropped and the next delivery opens another. An
``endpoint``'s channel goes to the address the SSRF guard permits (relay/ssrf.py), looked
up as the channel is opened (gRPC reconnects to that address, never to another); an
endpoint is host or host:port, never another of gRPC's targets (``unix:``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import orjson
from google.api_core import exceptions as api
from google.auth import exceptions as auth
from google.oauth2 import service_account
from google.pubsub_v1 import PublisherAsyncClient, PubsubMessage
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

from relay import ssrf
from relay.delivery import registry
from relay.delivery.base import (
    AUTH_FAILED,
    CONNECTION_ERROR,
    CONNECTION_REFUSED,
    CONNECTION_RESET,
    DNS_ERROR,
    INVALID_REQUEST,
    TIMEOUT,
    TLS_ERROR,
    Attempt,
    DeliveryContext,
    Endpoint,
    Outcome,
    Provider,
    Target,
    brief,
    host_port,
    join_host_port,
    json_map,
    message,
    message_metadata,
    network_code,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

# What Pub/Sub answers, as stable codes (Outpost records them all as ERR).
TOPIC_NOT_FOUND = "topic_not_found"
ACCESS_DENIED = "access_denied"
QUOTA_EXCEEDED = "quota_exceeded"
PUBSUB_ERROR = "pubsub_error"

GOOGLE_HOST = "pubsub.googleapis.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
CONSOLE_TOPIC = (
    "https://console.cloud.google.com/cloudpubsub/topic/detail/{topic}?project={project}"
)
# An endpoint without a port: gRPC's default.
DEFAULT_PORT = 443
# What no host:port holds (gRPC's other targets do: unix:/path, dns:///host).
_NOT_HOST = re.compile(r"[\s/]")

# gRPC's UNAVAILABLE carries the socket's failure as text only (as Outpost's providers
# read Go's errors): the first match names it.
_UNAVAILABLE = (
    ("connection refused", CONNECTION_REFUSED),
    ("dns resolution failed", DNS_ERROR),
    ("errors resolving", DNS_ERROR),
    ("domain name not found", DNS_ERROR),
    ("handshake failed", TLS_ERROR),
    ("ssl", TLS_ERROR),
    ("connection reset", CONNECTION_RESET),
    ("socket closed", CONNECTION_RESET),
    ("broken pipe", CONNECTION_RESET),
)


def classify(exc: BaseException) -> str:
    """A stable code for a failed publish (or for the endpoint's lookup)."""
    if isinstance(exc, OSError):
        return network_code(exc) or CONNECTION_ERROR
    if isinstance(exc, api.NotFound):
        return TOPIC_NOT_FOUND
    if isinstance(exc, api.PermissionDenied):
        return ACCESS_DENIED
    if isinstance(exc, api.Unauthenticated | auth.GoogleAuthError):
        return AUTH_FAILED
    if isinstance(exc, api.DeadlineExceeded | TimeoutError):
        return TIMEOUT
    if isinstance(exc, api.ResourceExhausted):
        return QUOTA_EXCEEDED
    if isinstance(exc, api.InvalidArgument):
        return INVALID_REQUEST
    if isinstance(exc, api.ServiceUnavailable):
        text = str(exc).lower()
        return next((code for words, code in _UNAVAILABLE if words in text), CONNECTION_ERROR)
    return PUBSUB_ERROR


def _broken(exc: BaseException) -> bool:
    """Whether the channel may be broken (else Pub/Sub answered, and it is sound)."""
    if isinstance(exc, api.GoogleAPICallError):
        return isinstance(exc, api.ServiceUnavailable | api.DeadlineExceeded | api.Unknown)
    return True


def credentials_of(text: str) -> service_account.Credentials:
    """The service account's credentials from its JSON key (ValueError: not one)."""
    info = orjson.loads(text)
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError("not a service account's key")
    info["token_uri"] = GOOGLE_TOKEN_URI
    return service_account.Credentials.from_service_account_info(  # type: ignore[no-any-return]
        info, scopes=PublisherGrpcAsyncIOTransport.AUTH_SCOPES
    )


@dataclass(eq=False, slots=True)
class _Client:
    client: PublisherAsyncClient
    # Deliveries under way on it: one let go of is closed once its last delivery ends
    # (closing a gRPC channel cancels the calls still on it).
    users: int = 0


class PubSubPublisher:
    """One destination's client (its gRPC channel), made on first use and again after the
    network broke it."""

    def __init__(
        self,
        project: str,
        topic: str,
        endpoint: str,
        service_account_json: str,
        context: DeliveryContext,
    ) -> None:
        self.project = project
        self.topic = topic
        self.topic_path = f"projects/{project}/topics/{topic}"
        self.endpoint = endpoint
        self.service_account_json = service_account_json
        self.context = context
        self._current: _Client | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def _ready(self) -> _Client:
        if self._current is None:
            if self.endpoint:
                # The emulator: plain text, no credentials (Outpost's WithoutAuthentication).
                host, port = host_port(self.endpoint, DEFAULT_PORT)
                address = await ssrf.guarded_address(host, port, self.context.allowed_networks)
                channel = grpc.aio.insecure_channel(
                    join_host_port(address, port),
                    options=[("grpc.default_authority", join_host_port(host, port))],
                )
                transport = PublisherGrpcAsyncIOTransport(channel=channel)
            else:
                transport = PublisherGrpcAsyncIOTransport(
                    host=GOOGLE_HOST, credentials=credentials_of(self.service_account_json)
                )
            self._current = _Client(PublisherAsyncClient(transport=transport))
        return self._current

    async def deliver(self, claimed: Claimed) -> Outcome:
        attempt = Attempt()
        seconds = claimed.timeout_seconds or self.context.settings.timeout_seconds
        attributes = message_metadata(claimed, milliseconds=self.context.milliseconds)
        message = PubsubMessage(data=claimed.body.encode(), attributes=attributes)
        try:
            current = await self._ready()
        except (ValueError, TypeError) as exc:  # a key google-auth cannot read
            return attempt.failed(AUTH_FAILED, f"credentials.service_account_json: {brief(exc)}")
        except OSError as exc:  # the endpoint's lookup, or the SSRF guard's refusal
            return attempt.failed(classify(exc), brief(exc))
        current.users += 1
        try:
            # No retries of the client's own: relay's schedule retries, and each try is an
            # attempt row.
            answer = await current.client.publish(
                topic=self.topic_path, messages=[message], retry=None, timeout=seconds
            )
        except asyncio.CancelledError:
            # Cut short (the attempt's timeout, or relay stopping): the call's state is
            # unknown; the next delivery opens another channel.
            self._drop(current)
            raise
        except Exception as exc:
            if _broken(exc):
                self._drop(current)
            return attempt.failed(classify(exc), brief(exc))
        finally:
            current.users -= 1
            if current.users == 0 and current is not self._current:
                # Not awaited: closing must not hold the attempt.
                task = asyncio.create_task(_close(current))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        # Outpost's response: the message's id, the topic and the project.
        response = {
            "message_id": answer.message_ids[0],
            "topic": self.topic,
            "project": self.project,
        }
        return attempt.succeeded(response_body=orjson.dumps(response).decode())

    def _drop(self, current: _Client) -> None:
        """No more deliveries on ``current`` (if it is still the one in use)."""
        if current is self._current:
            self._current = None

    async def close(self) -> None:
        current, self._current = self._current, None
        await asyncio.gather(*self._closing, *([_close(current)] if current else []))


async def _close(current: _Client) -> None:
    """Close its channel; one the network broke fails to close too, and that is the end
    of it."""
    with contextlib.suppress(Exception):
        await current.client.transport.close()


class PubSubProvider(Provider):
    def problems(self, config: Mapping[str, str], credentials: Mapping[str, str]) -> list[str]:
        found = super().problems(config, credentials)
        endpoint = config.get("endpoint", "")
        if endpoint and (not self.addresses(config, credentials) or _NOT_HOST.search(endpoint)):
            found.append("config.endpoint must be host or host:port, e.g. localhost:8085")
        key = credentials.get("service_account_json", "")
        if found or config.get("endpoint") or not key:
            # Outpost checks the key after the schema's rules, and not at all for an
            # emulator (endpoint).
            return found
        field = "credentials.service_account_json"
        try:
            info = orjson.loads(key)
        except orjson.JSONDecodeError:
            return [message(field, "format")]
        if not isinstance(info, dict):
            return [message(field, "format")]
        if "type" not in info:
            return [message(field, "missing_type")]
        if info["type"] != "service_account":
            # relay's own rule (see the module's docstring).
            return [message(field, "service_account")]
        return []

    def addresses(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> list[Endpoint]:
        # Google's own host is relay's choice, not the destination's: only an endpoint.
        if not config.get("endpoint"):
            return []
        try:
            host, port = host_port(config["endpoint"], DEFAULT_PORT)
        except ValueError:
            return []
        return [Endpoint("config.endpoint", host, port)]

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        project, topic = config.get("project_id", ""), config.get("topic", "")
        return Target(f"{project}/{topic}", CONSOLE_TOPIC.format(topic=topic, project=project))

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> PubSubPublisher:
        config = json_map(claimed.config)
        return PubSubPublisher(
            config.get("project_id", ""),
            config.get("topic", ""),
            config.get("endpoint", ""),
            json_map(claimed.credentials).get("service_account_json", ""),
            context,
        )


PROVIDER = PubSubProvider(registry.schema("gcp_pubsub"))
