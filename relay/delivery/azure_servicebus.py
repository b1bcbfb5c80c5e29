"""The azure_servicebus type: each event is one message on a Service Bus queue or topic
(azure-servicebus's asyncio client, over AMQP 1.0).

As Outpost's destazureservicebus: a client from the connection string and a sender for
the queue or topic ``name`` (Service Bus addresses both by the same entity path), the
event's data as the message body, the merged metadata (event-id, topic, timestamp,
delivery_metadata, the event's metadata) as its application properties, nothing else
set by relay (the Python client gives every message a random ``message_id`` of its own).
The client's own retries are off: relay's schedule retries, and each try is an attempt
row. A connection string with ``UseDevelopmentEmulator=true`` connects in plain AMQP to
the host and port its endpoint names, as the client library does for Microsoft's emulator.

One client and sender per destination (relay/delivery/pool.py keeps the publisher),
made on first use; after a failure that may have broken them they are dropped and the
next delivery makes new ones. The library's senders are not coroutine-safe, so a
destination's deliveries are sent one at a time (see ServiceBusPublisher).

The SSRF guard (relay/ssrf.py) judges the endpoint's host as a client is made: a
development connection string's client connects to the address the guard permitted (the
library's ``custom_endpoint_address``); Service Bus's own, over TLS, to the name, once
every address the name has is permitted (the library checks the certificate against the
host it dials, so it cannot be given an address): it looks the name up again itself, a
gap a rebinding DNS server could use.

Known of azure-servicebus 7.15: a connection that broke or hung before its AMQP session
was set up is let go of without being closed (the client's close skips it), and neither
relay nor anyone else holds it: the garbage collector closes its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from azure.servicebus import ServiceBusMessage, TransportType
from azure.servicebus import exceptions as sb
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender

from relay import ssrf
from relay.delivery import registry
from relay.delivery.base import (
    AUTH_FAILED,
    BLOCKED_ADDRESS,
    CONNECTION_ERROR,
    INVALID_REQUEST,
    TIMEOUT,
    Attempt,
    DeliveryContext,
    Endpoint,
    Outcome,
    Provider,
    Target,
    brief,
    join_host_port,
    json_map,
    message_metadata,
    network_code,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

# What Service Bus answers, as stable codes (Outpost records them all as ERR).
ENTITY_NOT_FOUND = "entity_not_found"  # no queue or topic of that name
ACCESS_DENIED = "access_denied"
MESSAGE_TOO_LARGE = "message_too_large"
QUOTA_EXCEEDED = "quota_exceeded"
SERVER_BUSY = "server_busy"
SERVICEBUS_ERROR = "servicebus_error"

# How long letting go of a client may take (a broken connection's close can hang).
CLOSE_SECONDS = 5.0
# The AMQP ports the client connects to: TLS (Service Bus), and plain (the emulator's).
AMQPS_PORT = 5671
AMQP_PORT = 5672


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: the client's error, its AMQP error, the socket's."""
    chain = [exc]
    while len(chain) < 8:
        inner = getattr(chain[-1], "inner_exception", None) or chain[-1].__cause__
        if not isinstance(inner, BaseException) or inner in chain:
            break
        chain.append(inner)
    return chain


def classify(exc: BaseException) -> str:
    """A stable code for a failed send."""
    if isinstance(exc, ssrf.BlockedAddress):
        return BLOCKED_ADDRESS
    statuses = {getattr(e, "status_code", None) for e in causes(exc)}
    token_refused = isinstance(exc, sb.ServiceBusConnectionError) and statuses & {401, 404}
    if isinstance(exc, sb.ServiceBusAuthenticationError) or token_refused:
        # The CBS token was refused: Service Bus answers 404 for an unknown entity,
        # 401 for a wrong key or key name. (Given a custom_endpoint_address, the
        # emulator's guarded address, the library calls it a connection error.)
        return ENTITY_NOT_FOUND if 404 in statuses else AUTH_FAILED
    if isinstance(exc, sb.MessagingEntityNotFoundError):
        return ENTITY_NOT_FOUND
    if isinstance(exc, sb.ServiceBusAuthorizationError):
        return ACCESS_DENIED
    if isinstance(exc, sb.OperationTimeoutError | TimeoutError):
        return TIMEOUT
    if isinstance(exc, sb.MessageSizeExceededError):
        return MESSAGE_TOO_LARGE
    if isinstance(exc, sb.ServiceBusQuotaExceededError):
        return QUOTA_EXCEEDED
    if isinstance(exc, sb.ServiceBusServerBusyError):
        return SERVER_BUSY
    if isinstance(exc, sb.ServiceBusConnectionError | sb.ServiceBusCommunicationError | OSError):
        found = (network_code(e) for e in causes(exc))
        return next((code for code in found if code is not None), CONNECTION_ERROR)
    return SERVICEBUS_ERROR


def describe(exc: BaseException) -> str:
    """The error for an attempt row: the client's class, and the text of the error it
    wraps when that says more (the CBS status, the socket's error)."""
    inner = causes(exc)[-1]
    text = " ".join(str(inner).split())
    if inner is exc or not text:
        return brief(exc)
    return f"{type(exc).__name__}: {text}"


def namespace(connection_string: str) -> str:
    """Outpost's parseNamespaceFromConnectionString: from ``Endpoint=sb://<ns>.…``, the
    text before the first dot ("" when there is none)."""
    for part in connection_string.split(";"):
        if part.startswith("Endpoint="):
            endpoint = part.removeprefix("Endpoint=").removeprefix("sb://")
            dot = endpoint.find(".")
            if dot > 0:
                return endpoint[:dot]
    return ""


@dataclass(frozen=True, slots=True)
class ServiceBusEndpoint:
    """Where a connection string's client connects, as azure-servicebus reads it."""

    host: str
    port: int
    # UseDevelopmentEmulator=true: plain AMQP to the endpoint's port.
    emulator: bool


def endpoint_of(connection_string: str) -> ServiceBusEndpoint | None:
    """The host and port of the string's ``Endpoint`` (the library's ``_parse_conn_str``:
    keys in any case, the last ``Endpoint`` or ``HostName`` wins); None without one."""
    settings = dict(
        part.split("=", 1)
        for part in connection_string.strip().rstrip(";").split(";")
        if "=" in part
    )
    endpoint = emulator = None
    for key, value in settings.items():
        if key.lower() in ("endpoint", "hostname"):
            endpoint = value.rstrip("/")
        elif key.lower() == "usedevelopmentemulator":
            emulator = value
    try:
        parts = urlsplit(endpoint or "")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    development = emulator == "true"
    # Over TLS the library connects to 5671 whatever port the endpoint names.
    port = (port or AMQP_PORT) if development else AMQPS_PORT
    return ServiceBusEndpoint(host, port, development)


@dataclass(eq=False, slots=True)
class _Sender:
    client: ServiceBusClient
    sender: ServiceBusSender


class ServiceBusPublisher:
    """One destination's client and sender, made on first use and again after a failure
    that may have broken them.

    The client library's senders are not coroutine-safe (its README: guard them with a
    lock), so deliveries to one destination are sent one at a time, each waiting for the
    broker's accept; the wait for the lock is part of the attempt's timeout."""

    def __init__(self, name: str, connection_string: str, context: DeliveryContext) -> None:
        self.name = name
        self.connection_string = connection_string
        self.context = context
        self._lock = asyncio.Lock()
        self._current: _Sender | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def _ready(self) -> _Sender:
        if self._current is None:
            client = ServiceBusClient.from_connection_string(
                self.connection_string, retry_total=0, **await self._guarded()
            )
            # A sender for a queue or a topic: the same link to the entity's path.
            self._current = _Sender(client, client.get_queue_sender(self.name))
        return self._current

    async def _guarded(self) -> dict[str, Any]:
        """The client's keywords that keep it to what the SSRF guard permits (or
        BlockedAddress): the emulator's address to connect to; for Service Bus, none
        (the name judged)."""
        found = endpoint_of(self.connection_string)
        if found is None:
            return {}  # the library refuses the string itself (ValueError)
        allowed = self.context.allowed_networks
        if not found.emulator:
            await ssrf.guarded_name(found.host, found.port, allowed)
            return {}
        address = await ssrf.guarded_address(found.host, found.port, allowed)
        return {
            "custom_endpoint_address": f"sb://{join_host_port(address, found.port)}",
            "transport_type": TransportType.Amqp,
        }

    async def deliver(self, claimed: Claimed) -> Outcome:
        attempt = Attempt()
        seconds = claimed.timeout_seconds or self.context.settings.timeout_seconds
        metadata = message_metadata(claimed, milliseconds=self.context.milliseconds)
        # The client's type says keys may be bytes too.
        properties: dict[str | bytes, Any] = {k: v for k, v in metadata.items()}
        message = ServiceBusMessage(claimed.body.encode(), application_properties=properties)
        async with self._lock:
            try:
                current = await self._ready()
            except ValueError as exc:  # the library's parse of the connection string
                return attempt.failed(INVALID_REQUEST, f"credentials.connection_string: {exc}")
            except OSError as exc:  # the endpoint's lookup, or the SSRF guard's refusal
                return attempt.failed(classify(exc), describe(exc))
            try:
                await current.sender.send_messages(message, timeout=seconds)
            except asyncio.CancelledError:
                # Cut short (the attempt's timeout, or relay stopping): the link's state
                # is unknown; the next delivery makes a new client.
                self._drop()
                raise
            except Exception as exc:
                if not isinstance(exc, sb.MessageSizeExceededError):
                    self._drop()
                return attempt.failed(classify(exc), describe(exc))
        return attempt.succeeded()

    def _drop(self) -> None:
        """Close the client and sender in use (not awaited: a hung broker must not hold
        the attempt); the next delivery makes new ones."""
        current, self._current = self._current, None
        if current is not None:
            task = asyncio.create_task(_close(current))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        current, self._current = self._current, None
        await asyncio.gather(*self._closing, *([_close(current)] if current else []))


async def _close(current: _Sender) -> None:
    """Close the sender and its client, within CLOSE_SECONDS; what broke fails to close
    too, and that is the end of it."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_SECONDS):
            try:
                await current.sender.close()
            finally:
                await current.client.close()


class ServiceBusProvider(Provider):
    def addresses(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> list[Endpoint]:
        found = endpoint_of(credentials.get("connection_string", ""))
        if found is None:
            return []
        return [Endpoint("credentials.connection_string", found.host, found.port)]

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        # Outpost's: <namespace>/<name>, or the name when the namespace cannot be read.
        name = config.get("name", "")
        found = namespace(credentials.get("connection_string", ""))
        return Target(f"{found}/{name}" if found else name)

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> ServiceBusPublisher:
        return ServiceBusPublisher(
            json_map(claimed.config).get("name", ""),
            json_map(claimed.credentials).get("connection_string", ""),
            context,
        )


PROVIDER = ServiceBusProvider(registry.schema("azure_servicebus"))
