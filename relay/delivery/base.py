"""What every destination type shares: the Outcome of one attempt, the error codes attempt
rows carry, a type's schema, the Provider and Publisher protocols, and the metadata
every message carries.

A type is a Provider (the rules of its ``config`` and ``credentials``: validation,
defaults, the ``target`` shown, what the API hides) and a Publisher (one connection's
worth of delivery: ``deliver(claimed) -> Outcome``, ``close()``), described by its schema
file (relay/delivery/schemas/<type>.json) and named by one line of registry.py.
Outpost's ``internal/destregistry`` is the model: its ``BaseProvider`` is Provider here.
"""

from __future__ import annotations

import errno
import functools
import json
import re
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from relay import ssrf

if TYPE_CHECKING:
    import aiohttp

    from relay import webhook_formats
    from relay.config import DeliverySettings
    from relay.db.outbox import Claimed

MAX_DETAIL = 500

# Codes an attempt row carries when there was no success, shared by every type (each type
# adds its own: exchange_not_found, ...). Outpost's names where it has one.
TIMEOUT = "timeout"
DNS_ERROR = "dns_error"
CONNECTION_REFUSED = "connection_refused"
CONNECTION_RESET = "connection_reset"
HOST_UNREACHABLE = "host_unreachable"
CONNECTION_ERROR = "connection_error"
TLS_ERROR = "tls_error"
AUTH_FAILED = "auth_failed"
NETWORK_ERROR = "network_error"
# The SSRF guard refuses every address the destination's host has (relay/ssrf.py): no
# retry changes that until its range is opened (relay/dispatcher.py fails it at once).
BLOCKED_ADDRESS = "blocked_address"
# Something about this delivery could not even be sent.
INVALID_REQUEST = "invalid_request"
# The destination cannot make a message of this event (a key template that gives no key
# for it): no retry changes that; failed at once, as Outpost does not retry it.
FORMAT_ERROR = "format_error"
# The broker refused: too many requests (AWS's throttling errors, ...). Delivery control
# takes it as a 429: the destination is paused and slowed down.
THROTTLED = "throttled"
# The type's delivery is not installed in this relay (its extra, or not built yet).
UNAVAILABLE = "unavailable"
INTERNAL_ERROR = "internal_error"


@dataclass(slots=True)  # one per attempt: not frozen, as outbox.Claimed
class Outcome:
    """What one attempt did. ``http_status`` and the response are an HTTP answer's (webhook,
    hookdeck); a broker's refusal is an ``error_code`` and its ``error_detail``."""

    success: bool
    started_at: datetime
    duration_ms: int
    http_status: int | None = None
    error_code: str | None = None
    error_detail: str | None = None
    response_body: str | None = None
    response_headers: dict[str, str] | None = None
    # Seconds the receiver asked us to wait (Retry-After), when it said so.
    retry_after: float | None = None
    # This answer means the destination will never take a delivery again (a 410 Gone):
    # it is disabled at once, with this reason.
    disable_reason: str | None = None


def attempt_code(status: str, http_status: int | None, error_code: str | None) -> str:
    """An attempt's ``code`` as the API and operator events show it (and the metrics
    API's ``code`` dimension, in SQL: relay/db/aggregates.py)."""
    if http_status is not None:
        return str(http_status)
    return error_code or ("OK" if status == "success" else "")


def clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a receiver's or a broker's text may contain it.
    return text.replace("\x00", "\ufffd")


class Attempt:
    """The clock of one attempt: ``failed(code, detail)`` and ``succeeded()`` make its
    Outcome with the time it took."""

    __slots__ = ("_start", "started_at")

    def __init__(self) -> None:
        self.started_at = datetime.now(UTC)
        self._start = time.perf_counter()

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self._start) * 1000)

    def failed(self, code: str, detail: str, **more: Any) -> Outcome:
        return Outcome(
            False,
            self.started_at,
            self.elapsed_ms(),
            error_code=code,
            error_detail=clean(detail)[:MAX_DETAIL],
            **more,
        )

    def succeeded(self, **more: Any) -> Outcome:
        return Outcome(True, self.started_at, self.elapsed_ms(), **more)


def brief(exc: BaseException) -> str:
    """An exception as one line for an attempt row."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def network_code(exc: BaseException) -> str | None:
    """The shared code of a failure of the network under any client (None: not one):
    what Outpost's providers find by reading the Go error's text."""
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, ssrf.BlockedAddress):
        return BLOCKED_ADDRESS
    if isinstance(exc, socket.gaierror):
        return DNS_ERROR
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return TLS_ERROR
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return CONNECTION_RESET
    if isinstance(exc, OSError):
        if exc.errno == errno.ECONNREFUSED:
            return CONNECTION_REFUSED
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return HOST_UNREACHABLE
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return CONNECTION_RESET
        return NETWORK_ERROR
    return None


def host_port(server_url: str, default_port: int) -> tuple[str, int]:
    """A broker's ``server_url`` (``host``, ``host:port``, ``[v6]:port``) as host and
    port; ValueError for a port that is not one."""
    host, port = server_url.strip(), default_port
    if host.startswith("["):
        host, closed, rest = host[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{server_url!r} is not host:port")
        if rest:
            port = int(rest[1:])
    elif host.count(":") == 1:
        host, _, text = host.partition(":")
        port = int(text)
    if not host or not 0 < port < 65536:
        raise ValueError(f"{server_url!r} is not host:port")
    return host, port


def join_host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:4222``): ``host_port`` undone."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- metadata --------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def rfc3339(seconds: int) -> str:
    """Go's ``time.RFC3339`` in UTC: ``2024-06-01T08:23:36Z``. (Thousands of deliveries
    share a second.)"""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def rfc3339_fraction(now: float) -> str:
    """``timestamp-ms``: RFC 3339 with the fraction of the second, trailing zeros dropped
    (Go's ``RFC3339Nano``, to the microsecond a float carries)."""
    fraction = datetime.fromtimestamp(now, UTC).strftime("%f").rstrip("0")
    return rfc3339(int(now))[:-1] + (f".{fraction}Z" if fraction else "Z")


def make_metadata(
    event_id: str,
    topic: str,
    now: float,
    delivery_metadata: Mapping[str, str],
    metadata: Mapping[str, str],
    *,
    milliseconds: bool,
) -> dict[str, str]:
    """Outpost's ``MakeMetadata``, which every type sends with a message (as headers,
    message attributes, ...): system keys < delivery_metadata < event metadata."""
    merged = {"timestamp": rfc3339(int(now)), "event-id": event_id, "topic": topic}
    if milliseconds:
        merged["timestamp-ms"] = rfc3339_fraction(now)
    merged.update(delivery_metadata)
    merged.update(metadata)
    return merged


def message_metadata(claimed: Claimed, *, milliseconds: bool) -> dict[str, str]:
    """The metadata a broker type's message of ``claimed`` carries, stamped now: its
    ``make_metadata`` (a webhook's headers keep only what HTTP can carry instead:
    webhook_formats.merged_metadata)."""
    return make_metadata(
        claimed.event_id,
        claimed.topic,
        time.time(),
        json_map(claimed.delivery_metadata),
        json_map(claimed.metadata),
        milliseconds=milliseconds,
    )


def json_map(text: str | None) -> dict[str, str]:
    """A JSON object of strings as the claim carries it (metadata, config, ...)."""
    if not text or text == "{}":
        return {}
    value = json.loads(text)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


# --- schemas ---------------------------------------------------------------------------


CHECKBOX_VALUES = ("on", "true", "false")


def checked(value: str | None) -> bool:
    """A checkbox field as Outpost reads it: "on" and "true" are on; else off."""
    return value in ("on", "true")


@dataclass(frozen=True, slots=True)
class Field:
    """One config or credential field, as Outpost's metadata describes it."""

    key: str
    type: str = "text"
    required: bool = False
    sensitive: bool = False
    default: str | None = None
    pattern: str | None = None
    minlength: int | None = None
    maxlength: int | None = None
    min: int | None = None
    max: int | None = None
    options: tuple[str, ...] = ()

    @classmethod
    def read(cls, raw: Mapping[str, Any]) -> Field:
        return cls(
            key=raw["key"],
            type=raw.get("type", "text"),
            required=bool(raw.get("required", False)),
            sensitive=bool(raw.get("sensitive", False)),
            default=raw.get("default"),
            pattern=raw.get("pattern"),
            minlength=raw.get("minlength"),
            maxlength=raw.get("maxlength"),
            min=raw.get("min"),
            max=raw.get("max"),
            options=tuple(o["value"] for o in raw.get("options", ())),
        )

    def problem(self, value: str) -> str | None:
        """Outpost's ``validateField``: the failed rule's name (``required``, ``pattern``,
        ...), or None. An empty value is an absent one."""
        if not value:
            return "required" if self.required else None
        if self.type == "number":
            try:
                number = int(value)
            except ValueError:
                return "type"
            if self.min is not None and number < self.min:
                return "min"
            if self.max is not None and number > self.max:
                return "max"
            return None
        # What Outpost's rabbitmq and kafka providers check of their select and checkbox.
        if self.options and value not in self.options:
            return "invalid"
        if self.type == "checkbox" and value not in CHECKBOX_VALUES:
            return "invalid"
        if self.minlength is not None and len(value) < self.minlength:
            return "minlength"
        if self.maxlength is not None and len(value) > self.maxlength:
            return "maxlength"
        # Go's regexp.MatchString finds the pattern anywhere, as re.search does.
        if self.pattern is not None and re.search(self.pattern, value) is None:
            return "pattern"
        return None


def message(field: str, rule: str) -> str:
    """A validation problem as Outpost words it (its ``formatValidationError``)."""
    if rule == "required":
        return f"{field} is required"
    return f"{field} failed {rule} validation"


@dataclass(frozen=True, slots=True)
class Schema:
    """A type's description, read from relay/delivery/schemas/<type>.json: what
    ``/destination-types`` answers, and the fields Provider validates and hides."""

    type: str
    document: Mapping[str, Any]
    config_fields: tuple[Field, ...]
    credential_fields: tuple[Field, ...]

    @classmethod
    def load(cls, type: str) -> Schema:
        raw = resources.files("relay.delivery").joinpath("schemas", f"{type}.json").read_text()
        document = json.loads(raw)
        if document.get("type") != type:
            raise ValueError(f"schemas/{type}.json describes type {document.get('type')!r}")
        return cls(
            type=type,
            document=document,
            config_fields=tuple(Field.read(f) for f in document.get("config_fields", ())),
            credential_fields=tuple(Field.read(f) for f in document.get("credential_fields", ())),
        )

    def as_json(self) -> dict[str, Any]:
        """Outpost's DestinationTypeSchema: the keys its ProviderMetadata writes, in its
        order (``required`` always; the others only when set)."""
        d = self.document
        answer: dict[str, Any] = {
            "type": self.type,
            "config_fields": [_field_json(f) for f in d.get("config_fields", ())],
            "credential_fields": [_field_json(f) for f in d.get("credential_fields", ())],
            "label": d.get("label", ""),
            "description": d.get("description", ""),
            "icon": d.get("icon", ""),
        }
        if d.get("setup_link"):
            answer["setup_link"] = d["setup_link"]
        answer["instructions"] = d.get("instructions", "")
        return answer


_FIELD_KEYS = (
    "default", "disabled", "sensitive", "min", "max", "step", "minlength", "maxlength",
    "pattern", "options",
)  # fmt: skip


def _field_json(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A field as Outpost's FieldSchema writes it."""
    answer: dict[str, Any] = {
        "type": raw.get("type", "text"),
        "label": raw.get("label", ""),
        "description": raw.get("description", ""),
        "key": raw["key"],
        "required": bool(raw.get("required", False)),
    }
    for key in _FIELD_KEYS:
        if raw.get(key):
            answer[key] = raw[key]
    return answer


# --- providers and publishers ----------------------------------------------------------


class Endpoint(NamedTuple):
    """A host a destination's deliveries connect to, and the field that names it."""

    field: str  # as problems name it: "config.server_url"
    host: str
    port: int


def server_address(config: Mapping[str, str], default_port: int) -> list[Endpoint]:
    """The host ``config.server_url`` names (``host``, ``host:port``, ``[v6]:port``);
    none when it is absent or malformed."""
    try:
        host, port = host_port(config.get("server_url", ""), default_port)
    except ValueError:
        return []
    return [Endpoint("config.server_url", host, port)]


@dataclass(frozen=True, slots=True)
class Target:
    """What the API shows as ``target`` and ``target_url`` (None: not applicable)."""

    target: str
    target_url: str | None = None


def obfuscate(value: str) -> str:
    """Outpost's ``ObfuscateValue``: the first four characters of a value of ten or more,
    the rest as asterisks; a shorter one all asterisks."""
    if len(value) < 10:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 4)


@dataclass(frozen=True, slots=True)
class DeliveryContext:
    """What publishers get from the dispatcher: its settings and the shared HTTP client
    (SSRF-guarded; its connection pool is the HTTP types' connection pool)."""

    settings: DeliverySettings
    session: aiohttp.ClientSession
    formats: webhook_formats.Formats
    allowed_networks: Sequence[ssrf.Network] = field(default_factory=tuple)

    @property
    def milliseconds(self) -> bool:
        """A ``timestamp-ms`` metadata key on every message."""
        return self.settings.webhook.include_millisecond_timestamp


class Publisher(Protocol):
    """Delivers to one destination (or, for a ``shared`` type, to all of its type)."""

    async def deliver(self, claimed: Claimed) -> Outcome:
        """Send one attempt and describe what happened; never raises for a failed one."""
        ...

    async def close(self) -> None:
        """Let go of connections; a closed publisher is never used again."""
        ...


class Provider:
    """A destination type's rules, from its schema: validation, defaults, what the API
    shows and hides. A type overrides what its rules add (Outpost's BaseProvider and
    the per-type providers that embed it)."""

    # One publisher for every destination of the type (HTTP types, over the shared
    # session); else one per destination, pooled by relay/delivery/pool.py.
    shared: ClassVar[bool] = False

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.type = schema.type
        self._sensitive_config = {f.key for f in schema.config_fields if f.sensitive}
        self._sensitive_credentials = {f.key for f in schema.credential_fields if f.sensitive}

    def problems(self, config: Mapping[str, str], credentials: Mapping[str, str]) -> list[str]:
        """One message per field that is missing or malformed, naming it."""
        found = []
        for section, fields, values in (
            ("config", self.schema.config_fields, config),
            ("credentials", self.schema.credential_fields, credentials),
        ):
            for f in fields:
                rule = f.problem(values.get(f.key, ""))
                if rule is not None:
                    found.append(message(f"{section}.{f.key}", rule))
        return found

    def normalise(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The values as stored: defaults filled in, spellings made one (Outpost's
        Preprocess, without its network calls). Pure."""
        return dict(config), dict(credentials)

    async def verify(
        self,
        config: Mapping[str, str],
        credentials: Mapping[str, str],
        before: tuple[Mapping[str, str], Mapping[str, str]] | None,
        settings: DeliverySettings,
    ) -> dict[str, str]:
        """Checks that need the network, when the API creates or changes a destination
        (``before``: its values until now): config keys to add, or ValidationFailed."""
        return {}

    def addresses(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> list[Endpoint]:
        """The hosts a destination's deliveries connect to that its values choose (a
        broker's), for the SSRF guard to judge when the destination is created or changed
        (relay/api/destinations.py, relay/config.py), as delivery judges them when it
        connects. Values that name no host (or a malformed one: ``problems`` says so)
        give none. Pure."""
        return []

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        """``target`` and ``target_url`` for the API and the pages."""
        return Target(self.type)

    def shown(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Config and credentials as the API returns them: sensitive fields obfuscated,
        as Outpost's ObfuscateDestination does."""
        return (
            {k: obfuscate(v) if k in self._sensitive_config else v for k, v in config.items()},
            {
                k: obfuscate(v) if k in self._sensitive_credentials else v
                for k, v in credentials.items()
            },
        )

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> Publisher:
        """A publisher for the claimed delivery's destination (not connected yet: it
        connects on its first delivery, under that delivery's timeout)."""
        raise NotImplementedError(f"relay cannot deliver to {self.type} destinations")


class ServerProvider(Provider):
    """A type whose deliveries go to one server, ``config.server_url`` (``host`` or
    ``host:port``), over TLS when ``config.tls`` is on; the target shows the server and
    the config key naming where on it (a subject, a stream): relay's NATS and Redis."""

    default_port: ClassVar[int]
    target_key: ClassVar[str]

    def problems(self, config: Mapping[str, str], credentials: Mapping[str, str]) -> list[str]:
        found = super().problems(config, credentials)
        if config.get("server_url") and not server_address(config, self.default_port):
            example = f"{self.type.split('_')[0]}.example:{self.default_port}"
            found.append(f"config.server_url must be host or host:port, e.g. {example}")
        return found

    def normalise(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        config = dict(config)
        config["tls"] = "true" if checked(config.get("tls")) else "false"
        return config, dict(credentials)

    def addresses(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> list[Endpoint]:
        return server_address(config, self.default_port)

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        return Target(f"{config.get('server_url', '')} / {config.get(self.target_key, '')}")
