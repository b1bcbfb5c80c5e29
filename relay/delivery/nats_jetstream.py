"""The nats_jetstream type (relay's own, beyond Outpost's types): each event is one
message published to a NATS JetStream stream (nats-py).

The subject is the destination's ``subject``, ``{topic}`` in it replaced by the event's
topic (``events.{topic}`` -> ``events.order.created``); the body is the event's data;
the headers are the merged metadata every type sends (event-id, topic, timestamp,
delivery_metadata, the event's metadata) and ``Nats-Msg-Id`` (``message_id``), so a
scheduled retry of a publish whose acknowledgement was lost is dropped by JetStream's
duplicate window rather than stored twice (two destinations of one event into one
stream stay two messages; a manual retry or replay is sent again).

An attempt is a success once JetStream acknowledges the message (its PubAck): a subject
no stream takes is a failed attempt (``no_stream``), retried on the schedule, never a
message lost on a plain NATS subject nobody reads. ``stream``, when set, is the stream
the message must land in (JetStream refuses it elsewhere: ``stream_mismatch``).

One connection per destination (relay/delivery/pool.py keeps the publisher). nats-py's
own reconnecting is off: a connection that closes is opened again by the next delivery,
under its timeout, to an address the SSRF guard permits (relay/ssrf.py); the servers a
cluster announces are not dialled.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client

from relay import ssrf
from relay.delivery import registry
from relay.delivery.base import (
    AUTH_FAILED,
    BLOCKED_ADDRESS,
    CONNECTION_ERROR,
    FORMAT_ERROR,
    TIMEOUT,
    Attempt,
    DeliveryContext,
    Outcome,
    ServerProvider,
    brief,
    checked,
    host_port,
    join_host_port,
    json_map,
    message_metadata,
    network_code,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

DEFAULT_PORT = 4222
# What JetStream refuses, and relay's names for it.
NO_STREAM = "no_stream"  # no stream takes the subject (or JetStream is off)
STREAM_MISMATCH = "stream_mismatch"  # the subject's stream is not config.stream
STREAM_FULL = "stream_full"  # the stream's limits refuse new messages (discard new)
ACCESS_DENIED = "access_denied"  # the user may not publish to the subject
MESSAGE_TOO_LARGE = "message_too_large"  # over the server's max_payload
JETSTREAM_ERROR = "jetstream_error"
NATS_ERROR = "nats_error"

# JetStream's error codes (its ApiError ``err_code``).
_EXPECTED_STREAM_MISMATCH = 10060
_LIMITS = frozenset({10077, 10078, 10047})  # max messages, max bytes, no resources

# A subject's tokens: no whitespace, no wildcards, none empty.
_TOKEN = re.compile(r"[^\s*>.]+")


def subject_problem(subject: str) -> str | None:
    """Why ``subject`` cannot be published to, or None."""
    tokens = subject.split(".")
    if not all(_TOKEN.fullmatch(t) for t in tokens):
        return (
            "must be dot-separated tokens without spaces or wildcards (* and >), "
            "e.g. events.{topic}"
        )
    return None


def subject_for(template: str, topic: str) -> str:
    return template.replace("{topic}", topic)


def message_id(claimed: Claimed) -> str:
    """``Nats-Msg-Id``: one per event and destination, so JetStream drops a scheduled
    retry of a publish it already stored; a retry an operator asks for (the API's retry,
    a replay) is meant to arrive again, so its attempt number makes it a new message."""
    base = f"{claimed.event_id}:{claimed.destination_id}"
    return f"{base}:{claimed.attempt}" if claimed.manual else base


def classify(exc: BaseException) -> str:
    """A stable code for a failed publish."""
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return NO_STREAM
    if isinstance(exc, nats.js.errors.APIError):
        if exc.err_code == _EXPECTED_STREAM_MISMATCH:
            return STREAM_MISMATCH
        if exc.err_code in _LIMITS:
            return STREAM_FULL
        return JETSTREAM_ERROR
    if isinstance(exc, nats.errors.AuthorizationError):
        return AUTH_FAILED
    if isinstance(exc, nats.errors.MaxPayloadError):
        return MESSAGE_TOO_LARGE
    if isinstance(exc, ssrf.BlockedAddress):
        return BLOCKED_ADDRESS
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, nats.errors.Error) and "authorization" in str(exc).lower():
        return AUTH_FAILED
    if isinstance(exc, nats.errors.NoServersError | nats.errors.ConnectionClosedError):
        return CONNECTION_ERROR
    return network_code(exc) or NATS_ERROR


@dataclass(frozen=True, slots=True)
class NatsSettings:
    host: str
    port: int
    tls: bool
    subject: str
    stream: str | None
    user: str | None
    password: str | None
    token: str | None

    @classmethod
    def read(cls, config: Mapping[str, str], credentials: Mapping[str, str]) -> NatsSettings:
        host, port = host_port(config.get("server_url", ""), DEFAULT_PORT)
        return cls(
            host=host,
            port=port,
            tls=checked(config.get("tls")),
            subject=config.get("subject", ""),
            stream=config.get("stream") or None,
            user=credentials.get("username") or None,
            password=credentials.get("password") or None,
            token=credentials.get("token") or None,
        )


class NatsPublisher:
    """One destination's connection, opened on first use and again once it closed."""

    def __init__(self, settings: NatsSettings, context: DeliveryContext) -> None:
        self.settings = settings
        self.context = context
        self._lock = asyncio.Lock()
        self._client: Client | None = None
        # The last asynchronous error the server sent on this connection (a permissions
        # violation arrives so, and the publish then hears nothing).
        self._error: Exception | None = None

    async def _on_error(self, exc: Exception) -> None:
        self._error = exc

    async def _ready(self) -> Client:
        async with self._lock:
            if self._client is not None and self._client.is_connected:
                return self._client
            self._drop(self._client)
            s = self.settings
            address = await ssrf.guarded_address(s.host, s.port, self.context.allowed_networks)
            seconds = self.context.settings.timeout_seconds
            client = Client()
            self._error = None
            try:
                await client.connect(
                    servers=[f"{'tls' if s.tls else 'nats'}://{join_host_port(address, s.port)}"],
                    name="relay",
                    tls=ssl.create_default_context() if s.tls else None,
                    tls_hostname=s.host if s.tls else None,
                    user=s.user,
                    password=s.password,
                    token=s.token,
                    # relay's schedule owns retries: one connect (nats-py tries a server
                    # once more at once before it gives up), no reconnecting behind it.
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    connect_timeout=max(1, int(seconds)),
                    error_cb=self._on_error,
                    disconnected_cb=_nothing,
                    closed_cb=_nothing,
                )
            except BaseException as exc:
                await _close_quietly(client)
                # nats-py gives up with NoServersError; what failed it handed to error_cb.
                cause = self._error
                if isinstance(exc, nats.errors.NoServersError) and cause is not None:
                    raise cause from exc
                raise
            self._client = client
            return client

    async def deliver(self, claimed: Claimed) -> Outcome:
        attempt = Attempt()
        subject = subject_for(self.settings.subject, claimed.topic)
        problem = subject_problem(subject)
        if problem is not None:
            return attempt.failed(
                FORMAT_ERROR, f"subject {subject!r} (from topic {claimed.topic!r}) {problem}"
            )
        seconds = claimed.timeout_seconds or self.context.settings.timeout_seconds
        headers = message_metadata(claimed, milliseconds=self.context.milliseconds)
        headers["Nats-Msg-Id"] = message_id(claimed)
        client = None
        error_before = self._error
        try:
            client = await self._ready()
            error_before = self._error
            ack = await client.jetstream().publish(
                subject,
                claimed.body.encode(),
                # A little under the attempt's own timeout, so its cause can be named.
                timeout=seconds * 0.9,
                stream=self.settings.stream,
                headers=headers,
            )
        except asyncio.CancelledError:
            self._drop(client)
            raise
        except Exception as exc:
            code = classify(exc)
            error = self._error
            if code == TIMEOUT and error is not None and error is not error_before:
                # The server refused the publish in a message of its own.
                if "permissions violation" in str(error).lower():
                    return attempt.failed(ACCESS_DENIED, brief(error))
            if client is not None and not client.is_connected:
                self._drop(client)
            return attempt.failed(code, brief(exc))
        # Where it landed; ``duplicate``: JetStream had it already (an earlier attempt's
        # publish whose acknowledgement was lost) and kept the one copy.
        answer = {"stream": ack.stream, "seq": ack.seq, "duplicate": bool(ack.duplicate)}
        return attempt.succeeded(response_body=orjson.dumps(answer).decode())

    def _drop(self, client: Client | None) -> None:
        """Let go of ``client`` if it is still the one in use."""
        if client is None or client is not self._client:
            return
        self._client = None
        task = asyncio.ensure_future(_close_quietly(client))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
            if client is not None:
                await _close_quietly(client)


async def _nothing() -> None:
    # nats-py logs these itself unless given callbacks; attempt rows tell the story.
    return None


async def _close_quietly(client: Client) -> None:
    try:
        await client.close()
    except Exception:  # a connection that broke fails to close too; nothing more to do
        pass


class NatsProvider(ServerProvider):
    default_port = DEFAULT_PORT
    target_key = "subject"

    def problems(self, config: Mapping[str, str], credentials: Mapping[str, str]) -> list[str]:
        found = super().problems(config, credentials)
        subject = config.get("subject", "")
        if subject:
            # Checked with a topic that is one token; a topic that makes it invalid fails
            # only its own deliveries (format_error).
            problem = subject_problem(subject_for(subject, "topic"))
            if problem is not None:
                found.append(f"config.subject {problem}")
        has_user = bool(credentials.get("username") or credentials.get("password"))
        if credentials.get("token") and has_user:
            found.append("credentials: give a token or a username and password, not both")
        if bool(credentials.get("username")) != bool(credentials.get("password")):
            found.append("credentials.username and credentials.password go together")
        return found

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> NatsPublisher:
        settings = NatsSettings.read(json_map(claimed.config), json_map(claimed.credentials))
        return NatsPublisher(settings, context)


PROVIDER = NatsProvider(registry.schema("nats_jetstream"))
