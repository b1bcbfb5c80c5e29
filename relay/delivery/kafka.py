"""The kafka type: each event is one record on the destination's topic (aiokafka).

As Outpost's destkafka: the event's data as the value; the key from
``partition_key_template`` (relay/delivery/keytemplates.py; the event id by default);
headers ``content-type: application/json`` and then the merged metadata (event-id, topic,
timestamp, delivery_metadata, the event's metadata); SASL PLAIN, SCRAM-SHA-256 or
SCRAM-SHA-512 with the credentials, over TLS (the system's trust store, as Go's default
``tls.Config``) when ``tls`` is on. The partition is chosen as Outpost's kafka-go ``Hash``
balancer chooses it (FNV-1a of the key, as sarama does), not by aiokafka's murmur2, so an
event lands on the partition Outpost would have put it on and a key keeps its order
across a move from Outpost to relay.

Unlike Outpost (kafka-go's Writer waits for no acknowledgement by default), relay waits
for the in-sync replicas to acknowledge the record (``acks=all``) before it calls an
attempt a success. No idempotent producer (neither has Outpost's): a record whose attempt
timed out may still arrive, and its retry is then a second copy (the ``event-id`` header
tells them apart).

One producer per destination (relay/delivery/pool.py keeps the publisher), started by the
first delivery under its timeout. A producer that lost its brokers (refused, timed out,
cut) is let go and the next delivery starts another; aiokafka reconnects a started one
to a broker that dropped it by itself.

The SSRF guard (relay/ssrf.py) judges the brokers of ``config.brokers`` when a producer
starts: without TLS aiokafka bootstraps from the addresses the guard permitted, with TLS
from the names (the certificate names them), every address of each judged first. The
brokers the cluster then announces (its metadata) are judged before each delivery, every
address of a name. aiokafka has no hook to judge the address it connects to, so two
gaps remain: it looks names up again itself (a rebinding DNS server could answer
otherwise), and a broker first announced by a metadata refresh during a send is
dialled before relay judges it (that delivery's next attempt fails, ``blocked_address``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.conn import collect_hosts, create_conn

from relay import ssrf
from relay.delivery import keytemplates, registry
from relay.delivery.base import (
    AUTH_FAILED,
    CONNECTION_ERROR,
    TIMEOUT,
    TLS_ERROR,
    Attempt,
    DeliveryContext,
    Endpoint,
    Outcome,
    Provider,
    Target,
    brief,
    checked,
    join_host_port,
    json_map,
    message_metadata,
    network_code,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

# Outpost's codes (ClassifyKafkaError), for what the brokers refuse; relay adds two.
TOPIC_NOT_FOUND = "topic_not_found"
MESSAGE_TOO_LARGE = "message_too_large"
KAFKA_ERROR = "kafka_error"
ACCESS_DENIED = "access_denied"  # relay's: the user may not write to the topic
INVALID_TOPIC = "invalid_topic"  # relay's: a name the brokers refuse

MECHANISMS = {"plain": "PLAIN", "scram-sha-256": "SCRAM-SHA-256", "scram-sha-512": "SCRAM-SHA-512"}
# aiokafka's own request timeout, as a share of the attempt's: its errors (a topic still
# unknown after waiting for it, a record no broker took) then come before the attempt's
# timeout, and name their cause.
CLIENT_SHARE = 0.8
# Errors that say nothing about the connection: the producer is kept for the next delivery.
_MESSAGE_CODES = frozenset({TOPIC_NOT_FOUND, MESSAGE_TOO_LARGE, ACCESS_DENIED, INVALID_TOPIC})


# --- partitions ------------------------------------------------------------------------


def fnv1a_32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def partition_for(key: bytes, count: int) -> int:
    """kafka-go's ``Hash`` balancer (sarama's hash partitioner): the FNV-1a hash taken as
    a signed 32-bit number, modulo the partition count, made positive."""
    h = fnv1a_32(key)
    signed = h - (1 << 32) if h & 0x80000000 else h
    return abs(signed) % count


def partitioner(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """aiokafka's partitioner hook. Every record has a key (the event id at least)."""
    partitions = sorted(all_partitions)
    return partitions[partition_for(key or b"", len(partitions))]


# --- errors ----------------------------------------------------------------------------


class Unreachable(Exception):
    """No broker of the list could be bootstrapped from; ``cause`` is what one of them
    answered (aiokafka logs it and raises only "Unable to bootstrap")."""

    def __init__(self, brokers: str, cause: BaseException | None) -> None:
        self.cause = cause
        what = detail(cause) if cause is not None else "no broker answered"
        super().__init__(f"{what} (brokers {brokers})")


def classify(exc: BaseException) -> str:
    """A stable code for a failed delivery."""
    if isinstance(exc, Unreachable):
        return classify(exc.cause) if exc.cause is not None else CONNECTION_ERROR
    if isinstance(
        exc,
        kafka_errors.SaslAuthenticationFailed
        | kafka_errors.UnsupportedSaslMechanismError
        | kafka_errors.IllegalSaslStateError,
    ):
        return AUTH_FAILED
    if isinstance(exc, kafka_errors.UnknownTopicOrPartitionError):
        return TOPIC_NOT_FOUND
    if isinstance(exc, kafka_errors.MessageSizeTooLargeError | kafka_errors.RecordTooLargeError):
        return MESSAGE_TOO_LARGE
    if isinstance(exc, kafka_errors.TopicAuthorizationFailedError):
        return ACCESS_DENIED
    if isinstance(exc, kafka_errors.InvalidTopicError):
        return INVALID_TOPIC
    if isinstance(exc, kafka_errors.KafkaTimeoutError | kafka_errors.RequestTimedOutError):
        return TIMEOUT
    if isinstance(exc, kafka_errors.KafkaConnectionError | kafka_errors.NodeNotReadyError):
        # A started producer that cannot reach its broker (aiokafka keeps the socket's
        # error to itself); the next attempt bootstraps again and finds out why.
        cause = exc.__cause__
        return (cause and network_code(cause)) or CONNECTION_ERROR
    return network_code(exc) or KAFKA_ERROR


def detail(exc: BaseException) -> str:
    """An error as one line for the attempt row (aiokafka's errors name their class in
    their text already)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, Unreachable) or text.startswith(f"{type(exc).__name__}: "):
        return text
    return brief(exc)


# --- the publisher ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """A destination's config and credentials as the producer takes them."""

    brokers: str
    topic: str
    tls: bool
    mechanism: str
    username: str
    password: str
    template: str

    @classmethod
    def read(cls, config: Mapping[str, str], credentials: Mapping[str, str]) -> KafkaSettings:
        mechanism = config.get("sasl_mechanism", "")
        if mechanism not in MECHANISMS:
            raise ValueError(f"sasl_mechanism {mechanism!r} is not one of {list(MECHANISMS)}")
        return cls(
            brokers=",".join(brokers(config.get("brokers", ""))),
            topic=config.get("topic", ""),
            tls=checked(config.get("tls")),
            mechanism=MECHANISMS[mechanism],
            username=credentials.get("username", ""),
            password=credentials.get("password", ""),
            template=config.get("partition_key_template", ""),
        )

    def connection(self, request_timeout_ms: int) -> dict[str, Any]:
        """What aiokafka's producer and its connections take to reach the brokers."""
        return {
            "client_id": "relay",
            "request_timeout_ms": request_timeout_ms,
            "security_protocol": "SASL_SSL" if self.tls else "SASL_PLAINTEXT",
            "ssl_context": ssl.create_default_context() if self.tls else None,
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
        }


def brokers(value: str) -> list[str]:
    """The broker list of ``config.brokers``: comma-separated, spaces and empties dropped."""
    return [b.strip() for b in value.split(",") if b.strip()]


def broker_hosts(value: str) -> list[tuple[str, int]]:
    """The hosts and ports of ``config.brokers`` as aiokafka reads them (9092 when none
    is given); ValueError for a port that is not a number."""
    return [(host, port) for host, port, _ in collect_hosts(brokers(value), randomize=False)]


class KafkaPublisher:
    """One destination's producer, started on first use and again after it lost its
    brokers."""

    def __init__(self, settings: KafkaSettings, context: DeliveryContext) -> None:
        self.settings = settings
        self.context = context
        self._lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        # The attempt timeout the producer was made for (its request timeout follows it).
        self._seconds = 0.0
        # The brokers its cluster announced that the SSRF guard permitted.
        self._judged: set[tuple[str, int]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    async def _ready(self, seconds: float) -> AIOKafkaProducer:
        """The started producer, starting one when there is none, once every broker its
        cluster announces is one the SSRF guard permits."""
        async with self._lock:
            producer = self._producer
            if producer is None or self._seconds != seconds:
                self._drop(producer)
                producer = await self._start(seconds)
                self._producer, self._seconds, self._judged = producer, seconds, set()
            try:
                await self._judge_announced(producer)
            except ssrf.BlockedAddress:
                self._drop(producer)
                raise
            return producer

    async def _start(self, seconds: float) -> AIOKafkaProducer:
        options = self.settings.connection(int(seconds * CLIENT_SHARE * 1000))
        bootstrap = await self._bootstrap()
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", partitioner=partitioner, **options
        )
        try:
            await producer.start()
        except kafka_errors.KafkaConnectionError:
            await producer.stop()
            cause = await self._cause(bootstrap, options)
            raise Unreachable(self.settings.brokers, cause) from None
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _bootstrap(self) -> list[str]:
        """The brokers to bootstrap from, as the SSRF guard permits them: each one's
        address, or with TLS its name once every address it has is permitted. A name
        that does not resolve is left out (aiokafka tries the others); none left: that
        failure."""
        allowed = self.context.allowed_networks
        guard = ssrf.guarded_name if self.settings.tls else ssrf.guarded_address
        found: list[str] = []
        unresolved: OSError | None = None
        for host, port in broker_hosts(self.settings.brokers):
            try:
                found.append(join_host_port(await guard(host, port, allowed), port))
            except ssrf.BlockedAddress:
                raise
            except OSError as exc:  # socket.gaierror, and what else DNS answers
                unresolved = unresolved or exc
        if not found and unresolved is not None:
            raise unresolved
        return found

    async def _judge_announced(self, producer: AIOKafkaProducer) -> None:
        """BlockedAddress unless every broker the cluster announces (that relay has not
        judged for this producer yet) is one the SSRF guard permits, every address of a
        name (aiokafka dials it by name). One that does not resolve is judged again next
        time (aiokafka cannot reach it either, for now)."""
        announced = {(b.host, b.port) for b in producer.client.cluster.brokers()}
        for host, port in sorted(announced - self._judged):
            try:
                await ssrf.guarded_name(host, port, self.context.allowed_networks)
            except ssrf.BlockedAddress as exc:
                where = join_host_port(host, port)
                raise ssrf.BlockedAddress(f"the cluster announces broker {where}; {exc}") from None
            except OSError:
                continue
            self._judged.add((host, port))

    async def _cause(self, bootstrap: list[str], options: dict[str, Any]) -> BaseException | None:
        """Why no broker could be bootstrapped from: each is asked again, as aiokafka asked
        it, and the most telling failure is kept (a refusal of the credentials or of the
        certificate over a broker not listening); None if they all answer now."""
        found: list[BaseException] = []
        for host, port, _ in collect_hosts(bootstrap, randomize=False):
            try:
                conn = await create_conn(host, port, **options)
            except (OSError, kafka_errors.KafkaError, TimeoutError) as exc:
                found.append(exc)
            else:
                conn.close()
        return next((e for e in found if classify(e) in (AUTH_FAILED, TLS_ERROR)), None) or (
            found[0] if found else None
        )

    async def deliver(self, claimed: Claimed) -> Outcome:
        attempt = Attempt()
        seconds = claimed.timeout_seconds or self.context.settings.timeout_seconds
        metadata = message_metadata(claimed, milliseconds=self.context.milliseconds)
        key = self.key(claimed, metadata)
        headers = [("content-type", b"application/json")]
        headers += [(k, v.encode()) for k, v in metadata.items()]
        producer = None
        try:
            producer = await self._ready(seconds)
            # Returns once the in-sync replicas have the record (acks=all).
            await producer.send_and_wait(
                self.settings.topic, claimed.body.encode(), key=key.encode(), headers=headers
            )
        except asyncio.CancelledError:
            # Cut short (the attempt's timeout, or relay stopping): the brokers may be gone.
            self._drop(producer)
            raise
        except Exception as exc:
            code = classify(exc)
            if code not in _MESSAGE_CODES:
                self._drop(producer)
            return attempt.failed(code, detail(exc))
        return attempt.succeeded()

    def key(self, claimed: Claimed, metadata: Mapping[str, str]) -> str:
        """The record's key: the template's result over the metadata and the event's data,
        else the event id."""
        if not self.settings.template:
            return claimed.event_id
        data = orjson.loads(claimed.body)
        document = {"metadata": dict(metadata), "data": data if isinstance(data, dict) else {}}
        return keytemplates.partition_key(self.settings.template, document, claimed.event_id)

    def _drop(self, producer: AIOKafkaProducer | None) -> None:
        """Let go of ``producer`` if it is still the one in use (a delivery on an older one
        must not drop the newer); it is stopped in the background."""
        if producer is not self._producer or producer is None:
            return
        self._producer = None
        # Not awaited: stopping waits for records in flight (up to the request timeout).
        task = asyncio.ensure_future(producer.stop())
        self._closing.add(task)
        task.add_done_callback(_forget(self._closing))

    async def close(self) -> None:
        async with self._lock:
            producer = self._producer
            self._producer = None
            if producer is not None:
                await producer.stop()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _forget(tasks: set[asyncio.Task[None]]) -> Any:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        # Stopping a producer whose brokers are gone fails too; nothing more to do with it.
        if not task.cancelled():
            task.exception()

    return done


class KafkaProvider(Provider):
    def normalise(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        # As Outpost's Preprocess: tls "on" is "true", absent or empty "false"; the spaces
        # around each broker trimmed.
        config = dict(config)
        if config.get("tls", "") in ("", "on"):
            config["tls"] = "true" if config.get("tls") == "on" else "false"
        if config.get("brokers"):
            config["brokers"] = ",".join(b.strip() for b in config["brokers"].split(","))
        return config, dict(credentials)

    def addresses(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> list[Endpoint]:
        try:
            hosts = broker_hosts(config.get("brokers", ""))
        except ValueError:
            return []
        return [Endpoint("config.brokers", host, port) for host, port in hosts]

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        # Outpost's: the first broker and the topic.
        first = brokers(config.get("brokers", ""))
        topic = config.get("topic", "")
        return Target(f"{first[0]} / {topic}" if first else topic)

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> KafkaPublisher:
        settings = KafkaSettings.read(json_map(claimed.config), json_map(claimed.credentials))
        return KafkaPublisher(settings, context)


PROVIDER = KafkaProvider(registry.schema("kafka"))
