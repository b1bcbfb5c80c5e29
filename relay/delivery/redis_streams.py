"""The redis_streams type (relay's own, beyond Outpost's types): each event is one entry
appended to a Redis stream (XADD, redis-py's asyncio client).

The stream is the destination's ``stream``, ``{topic}`` in it replaced by the event's
topic; the entry's fields are the merged metadata every type sends (event-id, topic,
timestamp, delivery_metadata, the event's metadata), one field each, and ``data``: the
event's data, byte for byte (a metadata key named ``data`` gives way to it). ``maxlen``
trims the stream as it grows (``MAXLEN ~``: Redis trims whole nodes, so a little more
may stay). An attempt is a success once Redis answers the XADD with the entry's id,
which the attempt row keeps as its response. Redis has no duplicate detection for XADD
(before 8.6's IDMP): a retry of an attempt that timed out after Redis took it appends a
second entry; ``event-id`` tells them apart, as for every at-least-once type.

One client per destination (relay/delivery/pool.py keeps the publisher), its pool of
connections as large as the destination's concurrency; each request tried once (relay's
schedule owns retries). Its address is the one the SSRF guard permits (relay/ssrf.py),
looked up when the publisher is made and again after a connection fails; with TLS the
client connects by the name (for the certificate), the guard having judged every address
the name has first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relay import ssrf
from relay.delivery import registry
from relay.delivery.base import (
    AUTH_FAILED,
    BLOCKED_ADDRESS,
    CONNECTION_ERROR,
    TIMEOUT,
    Attempt,
    DeliveryContext,
    Outcome,
    ServerProvider,
    brief,
    checked,
    host_port,
    json_map,
    message_metadata,
    network_code,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

DEFAULT_PORT = 6379
# The field holding the event's data.
DATA_FIELD = "data"
# What Redis refuses, and relay's names for it.
WRONG_TYPE = "wrong_type"  # the key holds something other than a stream
ACCESS_DENIED = "access_denied"  # the user may not XADD to the key (ACL)
OUT_OF_MEMORY = "out_of_memory"  # maxmemory reached with a no-eviction policy
READ_ONLY = "read_only"  # a replica
REDIS_ERROR = "redis_error"


def stream_for(template: str, topic: str) -> str:
    return template.replace("{topic}", topic)


def classify(exc: BaseException) -> str:
    """A stable code for a failed XADD."""
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return AUTH_FAILED
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return ACCESS_DENIED
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return OUT_OF_MEMORY
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return READ_ONLY
    if isinstance(exc, redis.exceptions.ResponseError):
        text = str(exc)
        if text.startswith("WRONGTYPE"):
            return WRONG_TYPE
        if text.startswith(("NOAUTH", "WRONGPASS")):
            return AUTH_FAILED
        return REDIS_ERROR
    if isinstance(exc, ssrf.BlockedAddress):
        return BLOCKED_ADDRESS
    if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
        return TIMEOUT
    if isinstance(exc, redis.exceptions.ConnectionError):
        # redis-py keeps the socket's error (refused, reset, DNS) as its cause.
        cause = exc.__cause__ or exc.__context__
        return (cause and network_code(cause)) or CONNECTION_ERROR
    return network_code(exc) or REDIS_ERROR


@dataclass(frozen=True, slots=True)
class RedisSettings:
    host: str
    port: int
    tls: bool
    database: int
    stream: str
    maxlen: int | None
    username: str | None
    password: str | None

    @classmethod
    def read(cls, config: Mapping[str, str], credentials: Mapping[str, str]) -> RedisSettings:
        host, port = host_port(config.get("server_url", ""), DEFAULT_PORT)
        return cls(
            host=host,
            port=port,
            tls=checked(config.get("tls")),
            database=int(config.get("database") or 0),
            stream=config.get("stream", ""),
            maxlen=int(config["maxlen"]) if config.get("maxlen") else None,
            username=credentials.get("username") or None,
            password=credentials.get("password") or None,
        )


class RedisPublisher:
    """One destination's client, made on first use and again after a connection failed."""

    def __init__(self, settings: RedisSettings, context: DeliveryContext) -> None:
        self.settings = settings
        self.context = context
        self._lock = asyncio.Lock()
        self._client: redis.asyncio.Redis | None = None

    async def _ready(self) -> redis.asyncio.Redis:
        async with self._lock:
            if self._client is not None:
                return self._client
            s = self.settings
            allowed = self.context.allowed_networks
            # With TLS the client dials the name (its certificate names it), so every
            # address of the name must be one the guard permits.
            guard = ssrf.guarded_name if s.tls else ssrf.guarded_address
            host = await guard(s.host, s.port, allowed)
            seconds = self.context.settings.timeout_seconds
            tls: dict[str, Any] = {"connection_class": redis.asyncio.SSLConnection} if s.tls else {}
            pool = redis.asyncio.BlockingConnectionPool(
                host=host,
                port=s.port,
                db=s.database,
                username=s.username,
                password=s.password,
                socket_connect_timeout=seconds,
                socket_timeout=seconds,
                # One try per attempt: relay's schedule owns retries.
                retry=Retry(NoBackoff(), 0),
                max_connections=self.context.settings.per_destination_concurrency,
                timeout=None,
                client_name="relay",
                **tls,
            )
            # from_pool: the client owns the pool, so closing it closes the connections.
            self._client = redis.asyncio.Redis.from_pool(pool)
            return self._client

    async def deliver(self, claimed: Claimed) -> Outcome:
        attempt = Attempt()
        # Redis keys are binary-safe: any topic makes one.
        stream = stream_for(self.settings.stream, claimed.topic)
        metadata = message_metadata(claimed, milliseconds=self.context.milliseconds)
        fields: dict[Any, Any] = {**metadata, DATA_FIELD: claimed.body.encode()}
        client = None
        try:
            client = await self._ready()
            entry = await client.xadd(stream, fields, maxlen=self.settings.maxlen, approximate=True)
        except asyncio.CancelledError:
            self._drop(client)
            raise
        except Exception as exc:
            code = classify(exc)
            if not isinstance(exc, redis.exceptions.ResponseError):
                # The connection (or the address) failed: look the host up again next time.
                self._drop(client)
            return attempt.failed(code, brief(exc))
        entry_id = entry.decode() if isinstance(entry, bytes) else str(entry)
        # What a producer would see: the stream and the entry's id (its place in it).
        answer = orjson.dumps({"stream": stream, "id": entry_id}).decode()
        return attempt.succeeded(response_body=answer)

    def _drop(self, client: redis.asyncio.Redis | None) -> None:
        if client is None or client is not self._client:
            return
        self._client = None
        task = asyncio.ensure_future(client.aclose())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
            if client is not None:
                await client.aclose()


class RedisStreamsProvider(ServerProvider):
    default_port = DEFAULT_PORT
    target_key = "stream"

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> RedisPublisher:
        settings = RedisSettings.read(json_map(claimed.config), json_map(claimed.credentials))
        return RedisPublisher(settings, context)


PROVIDER = RedisStreamsProvider(registry.schema("redis_streams"))
