"""The rabbitmq type: each event is one message on an exchange (aio-pika).

As Outpost's destrabbitmq: the exchange from config (the default exchange when empty), the
event's topic as the routing key, its data as the body (``application/json``), the
merged metadata (event-id, topic, timestamp, delivery_metadata, the event's metadata) as
message headers, ``mandatory`` off (a message no queue is bound for is the broker's to
drop). Unlike Outpost, relay waits for the broker's publisher confirm before it calls an
attempt a success, so a refused message (no such exchange, access refused) is a failed
attempt, retried on the schedule, not a message lost.

One connection and channel per destination (relay/delivery/pool.py keeps the
publisher); a closed connection or channel is opened again by the next delivery, to an
address the SSRF guard permits (relay/ssrf.py), looked up then: the connection goes to
that address, and with TLS the certificate is still checked against the host's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

import aio_pika
import aio_pika.abc
from aio_pika.abc import ConnectionParameter
from aiormq import exceptions as amqp
from yarl import URL

from relay import ssrf
from relay.delivery import registry
from relay.delivery.base import (
    AUTH_FAILED,
    TIMEOUT,
    Attempt,
    DeliveryContext,
    Endpoint,
    Outcome,
    Provider,
    Target,
    brief,
    checked,
    json_map,
    message_metadata,
    network_code,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

# Outpost's codes (ClassifyRabbitMQError), for what the broker refuses.
EXCHANGE_NOT_FOUND = "exchange_not_found"
ACCESS_DENIED = "access_denied"
CHANNEL_ERROR = "channel_error"
CONNECTION_FORCED = "connection_forced"
RABBITMQ_ERROR = "rabbitmq_error"

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


def classify(exc: BaseException) -> str:
    """A stable code for a failed publish."""
    if isinstance(exc, amqp.ChannelNotFoundEntity):
        return EXCHANGE_NOT_FOUND
    if isinstance(exc, amqp.ChannelAccessRefused):
        return ACCESS_DENIED
    if isinstance(exc, amqp.ProbableAuthenticationError | amqp.AuthenticationError):
        return AUTH_FAILED
    if isinstance(exc, amqp.ConnectionClosed) and "CONNECTION_FORCED" in str(exc):
        return CONNECTION_FORCED
    if isinstance(exc, amqp.AMQPConnectionError | OSError):
        # aiormq wraps the socket's error (refused, DNS, TLS, reset) as its cause; the
        # SSRF guard's refusal (blocked_address) comes as itself.
        cause = exc.__cause__
        return (cause and network_code(cause)) or network_code(exc) or RABBITMQ_ERROR
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, amqp.AMQPChannelError | amqp.ChannelInvalidStateError):
        return CHANNEL_ERROR
    return RABBITMQ_ERROR


def server_url(config: Mapping[str, str], credentials: Mapping[str, str]) -> str:
    """The AMQP URL of a destination: amqp(s)://user:password@<server_url>."""
    scheme = "amqps" if checked(config.get("tls")) else "amqp"
    user = quote(credentials.get("username", ""), safe="")
    password = quote(credentials.get("password", ""), safe="")
    return f"{scheme}://{user}:{password}@{config.get('server_url', '')}"


def host_of(url: str) -> tuple[str, int] | None:
    """The host and port an AMQP URL connects to (aiormq's default port for its scheme);
    None when it names no host."""
    try:
        parsed = URL(url)
        host, port = parsed.host, parsed.port
    except ValueError:  # a port that is not a number, a malformed IPv6 address
        return None
    if not host:
        return None
    return host, port or DEFAULT_PORTS.get(parsed.scheme, DEFAULT_PORTS["amqp"])


class GuardedConnection(aio_pika.Connection):
    """aio-pika's connection, taking ``server_hostname`` on to the socket (aio-pika passes
    only the keywords its class declares, as RobustConnection declares its own): it is
    given the address the SSRF guard judged, and TLS checks the certificate against the
    name."""

    PARAMETERS = (
        *aio_pika.Connection.PARAMETERS,
        ConnectionParameter(name="server_hostname", parser=str, is_kwarg=True),
    )


class RabbitMQPublisher:
    """One destination's connection and channel, opened on first use and again after
    either closed."""

    def __init__(self, url: str, exchange: str, context: DeliveryContext) -> None:
        self.url = url
        self.exchange_name = exchange
        self.context = context
        self._lock = asyncio.Lock()
        self._connection: aio_pika.Connection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def _ready(
        self, connect_seconds: float
    ) -> tuple[aio_pika.Connection, aio_pika.abc.AbstractExchange]:
        """The open connection and the exchange, opening what is closed."""
        async with self._lock:
            # Closed by us (is_closed), or by the broker or the network (no longer
            # connected: aio-pika's own flag stays unset then).
            if (
                self._connection is None
                or self._connection.is_closed
                or not self._connection.connected.is_set()
            ):
                self._drop(self._connection)
                connection = await self._guarded_connection()
                try:
                    await connection.connect(timeout=connect_seconds)
                except BaseException:
                    # Closed, so that it does not try to close itself when collected.
                    await connection.close()
                    raise
                self._connection = connection
            connection = self._connection
            if self._channel is None or self._channel.is_closed or self._exchange is None:
                try:
                    channel = await connection.channel(publisher_confirms=True)
                    self._channel = channel
                    self._exchange = (
                        await channel.get_exchange(self.exchange_name, ensure=False)
                        if self.exchange_name
                        else channel.default_exchange
                    )
                except BaseException:
                    self._drop(connection)
                    raise
            assert self._exchange is not None
            return connection, self._exchange

    async def _guarded_connection(self) -> aio_pika.Connection:
        """A connection (not opened) to the address the SSRF guard permits for the host."""
        found = host_of(self.url)
        if found is None:
            raise ValueError("config.server_url names no host")
        host, port = found
        address = await ssrf.guarded_address(host, port, self.context.allowed_networks)
        # No query: aiormq would read it as options (files, certificate checks), which
        # are not a tenant's to choose (RabbitMQProvider.problems refuses them too).
        url = URL(self.url).with_host(address).with_port(port).with_query(None).with_fragment(None)
        return GuardedConnection(url, server_hostname=host if url.scheme == "amqps" else None)

    async def deliver(self, claimed: Claimed) -> Outcome:
        attempt = Attempt()
        seconds = claimed.timeout_seconds or self.context.settings.timeout_seconds
        headers = message_metadata(claimed, milliseconds=self.context.milliseconds)
        message = aio_pika.Message(
            claimed.body.encode(), content_type="application/json", headers=dict(headers)
        )
        connection = None
        try:
            connection, exchange = await self._ready(seconds)
            # Returns once the broker confirms it (publisher confirms are on).
            await exchange.publish(message, routing_key=claimed.topic, mandatory=False)
        except asyncio.CancelledError:
            # Cut short (the attempt's timeout, or relay stopping): the connection's
            # state is unknown; the next delivery opens another.
            self._drop(connection)
            raise
        except Exception as exc:
            # A channel error closed the channel only (the next delivery opens one);
            # anything else may have broken the connection.
            if not isinstance(exc, amqp.AMQPChannelError | amqp.ChannelInvalidStateError):
                self._drop(connection)
            return attempt.failed(classify(exc), brief(exc))
        return attempt.succeeded()

    def _drop(self, connection: aio_pika.Connection | None) -> None:
        """Let go of ``connection`` if it is still the one in use (a delivery on an older
        one must not drop the newer)."""
        if connection is None or connection is not self._connection:
            return
        self._connection = None
        self._channel = self._exchange = None
        # Not awaited: a hung broker must not hold the attempt.
        task = asyncio.ensure_future(connection.close())
        task.add_done_callback(_ignore_failure)

    async def close(self) -> None:
        async with self._lock:
            connection, self._connection = self._connection, None
            self._channel = self._exchange = None
            if connection is not None:
                await connection.close()


def _ignore_failure(task: asyncio.Future[None]) -> None:
    # Closing a connection that broke fails too; there is nothing more to do with it.
    if not task.cancelled():
        task.exception()


class RabbitMQProvider(Provider):
    def problems(self, config: Mapping[str, str], credentials: Mapping[str, str]) -> list[str]:
        found = super().problems(config, credentials)
        # aiormq reads a URL's query as connection options (cafile, keyfile, no_verify_ssl):
        # a tenant must not choose files on relay's disk or turn certificate checks off.
        if any(c in config.get("server_url", "") for c in "?#@"):
            found.append(
                "config.server_url must be host:port (a vhost may follow: host:5672/vhost), "
                "without user, query or fragment"
            )
        return found

    def normalise(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        # As Outpost's Preprocess: tls "on" is "true", absent or empty is "false".
        config = dict(config)
        config["tls"] = "true" if checked(config.get("tls")) else "false"
        return config, dict(credentials)

    def addresses(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> list[Endpoint]:
        found = host_of(server_url(config, credentials))
        return [] if found is None else [Endpoint("config.server_url", *found)]

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        # Outpost's: the exchange, then the topics that route there.
        return Target(config.get("exchange", "") + " -> " + ", ".join(topics))

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> RabbitMQPublisher:
        config = json_map(claimed.config)
        return RabbitMQPublisher(
            server_url(config, json_map(claimed.credentials)), config.get("exchange", ""), context
        )


PROVIDER = RabbitMQProvider(registry.schema("rabbitmq"))
