"""Settings: defaults, then the TOML file, then RELAY_* environment variables.

Validated once at start. Every problem is reported as a ConfigError that names the
file, the key path (``tenants[0].destinations[1].url``) and how to fix it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from relay import opevents, sigtemplate, ssrf, webhook_formats, webhooks
from relay.delivery import registry

DEFAULT_CONFIG_PATH = Path("config/relay.toml")
# The fix for a destination address the SSRF guard refuses.
_OPEN_RANGE = (
    "add a CIDR holding it to delivery.allow_private_networks (or "
    "RELAY_ALLOW_PRIVATE_NETWORKS) if relay should deliver there, or use a public address"
)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the fix."""

    def __init__(self, source: str, key: str, problem: str, fix: str = "") -> None:
        self.source = source
        self.key = key
        self.problem = problem
        self.fix = fix
        message = f"{source}: {key}: {problem}" if key else f"{source}: {problem}"
        if fix:
            message += f"\n  fix: {fix}"
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 3333
    admin_api_key: str | None = None
    admin_api_key_env: str | None = None
    # Base URL that clients see (for Location headers); derived from the request when unset.
    public_url: str | None = None
    # Largest request body accepted, in bytes.
    max_body_bytes: Annotated[int, Field(gt=0)] = 1_048_576
    # Secret for tenant JWTs; defaults to one derived from the admin key.
    jwt_secret: str | None = None
    # HTTP processes sharing the port (SO_REUSEPORT); see relay/workers.py.
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # `relay dispatch` serves GET /healthz (liveness: every loop making progress) and
    # GET /metrics on host:health_port; 0 turns it off. Each dispatcher on one machine
    # needs a port of its own. (`relay serve` and `relay api` serve both on `port`.)
    health_port: Annotated[int, Field(ge=0, le=65535)] = 3334
    # Items one pod API request may carry (a JSON array); more is a 413. Each item costs
    # memory and database work before the request is answered.
    max_publish_items: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # Seconds a connection may take to send a request's headers, counted from when it
    # opens or its previous response went out (so also how long an idle keep-alive
    # connection stays open); then it is closed. Bounds slow-header (slowloris) clients.
    # 75 s by default, above the idle timeout of common load balancers (AWS ALB: 60 s),
    # which would otherwise reuse a connection relay had just closed and answer 502.
    header_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 75.0
    # Seconds a request body may take to arrive once relay reads it; then a 408.
    body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @field_validator("public_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        # It prefixes the pod API's Location headers and event ids: a base URL only.
        if value and re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value) is None:
            raise ValueError(
                f"{value!r} is not a base URL such as https://relay.example.com "
                "(http:// or https://, a host, an optional path; no query or fragment)"
            )
        return value or None

    @model_validator(mode="after")
    def _workers_need_a_fixed_port(self) -> ServerSettings:
        if self.workers > 1 and self.port == 0:
            raise ValueError("workers > 1 needs a fixed port (port = 0 picks one per process)")
        return self


class ApiSettings(_Strict):
    """How the Outpost-compatible API (/api/v1) answers where relay could be stricter."""

    # POST /api/v1/publish to an unknown tenant, or with a destination_id that is unknown,
    # disabled or not subscribed to the topic: false answers 202 with no destination_ids,
    # as Outpost does (an unknown tenant's event is not stored); true answers 404 or 422,
    # as relay did before (and as relay.publish.publish always does).
    strict_publish: bool = False


class DatabaseSettings(_Strict):
    # Empty: start the embedded PostgreSQL in data_dir.
    url: str | None = None
    # Made absolute by load_settings (see _resolve_data_dir).
    data_dir: str = ".relay"
    migrate_on_start: bool = True
    pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    # How long `relay serve|api|dispatch` waits for an unreachable database at start
    # (PostgreSQL started after relay, a managed server failing over) before giving up.
    startup_wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 60.0
    # Server-side statement timeout for relay's pooled SQL: the API's reads and writes,
    # lease upkeep, housekeeping and retention, the config sync at start, and the
    # operator commands (relay stats, replay, prune). A statement cut there is retried or
    # answered 503, and cannot hold a snapshot longer than this. Never applied to the
    # dispatcher's claim and recorder, the router or the publish writers, where a
    # cancelled statement would cost deliveries (relay/db/engine.py), nor to migrations.
    # Raise it when a large history makes API reads or `relay replay` slower than this
    # (RELAY_DATABASE_STATEMENT_TIMEOUT_SECONDS=600 relay replay ...); 0 = none.
    statement_timeout_seconds: Annotated[float, Field(ge=0, le=86400)] = 30.0
    # /healthz warns, and the log says who holds it, once the oldest snapshot or
    # transaction that pins PostgreSQL's xmin horizon (so dead rows, the outbox's among
    # them, cannot be removed) is older than this. 0 = never warn. See docs/operations.md.
    xmin_horizon_warning_seconds: Annotated[float, Field(ge=0)] = 300.0


class RetrySettings(_Strict):
    # Exponential: base_seconds * 2**n, for max_retries retries. Or an explicit list.
    base_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_retries: Annotated[int, Field(ge=0, le=100)] = 10
    schedule_seconds: list[Annotated[float, Field(ge=0)]] | None = None
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.1
    # Retry-After from a receiver is honoured, clamped to this many seconds.
    max_retry_after_seconds: Annotated[float, Field(ge=0)] = 3600.0


WebhookMode = Literal["standard", "outpost"]


def _header_prefix(value: str) -> str:
    # Trimmed, as Outpost trims it: "" (or blanks) sends the bare keys.
    value = value.strip()
    if not webhooks.HEADER_NAME.match(value or "x"):
        raise ValueError(f"{value!r} may hold only letters, digits, - and _ (or be empty)")
    return value


class OutpostWebhookSettings(_Strict):
    """Outpost's default-mode settings (its ``DESTINATIONS_WEBHOOK_*``), for destinations
    in the ``outpost`` format."""

    # Templates are signed as written: no trimming.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    header_prefix: str = "x-outpost-"
    # Absent: <prefix>event-id (and so on); a name: exactly that name; "": not sent.
    event_id_header_name: str | None = None
    signature_header_name: str | None = None
    timestamp_header_name: str | None = None
    topic_header_name: str | None = None
    signature_content_template: str = webhook_formats.DEFAULT_CONTENT_TEMPLATE
    signature_header_template: str = webhook_formats.DEFAULT_HEADER_TEMPLATE
    signature_encoding: Literal["hex", "base64"] = "hex"
    signature_algorithm: Literal["hmac-sha256", "hmac-sha1"] = "hmac-sha256"

    @field_validator("header_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _header_prefix(value)

    @field_validator(
        "event_id_header_name",
        "signature_header_name",
        "timestamp_header_name",
        "topic_header_name",
    )
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        return None if value is None else value.strip()

    @field_validator("signature_content_template")
    @classmethod
    def _content_template(cls, value: str) -> str:
        sigtemplate.parse(value, "content")
        return value

    @field_validator("signature_header_template")
    @classmethod
    def _header_template(cls, value: str) -> str:
        sigtemplate.parse(value, "header")
        return value

    @model_validator(mode="after")
    def _usable_headers(self) -> OutpostWebhookSettings:
        names = {
            "event-id": self.event_id_header_name,
            "signature": self.signature_header_name,
            "timestamp": self.timestamp_header_name,
            "topic": self.topic_header_name,
        }
        problems = webhook_formats.outpost_problems(
            self.header_prefix, {k: v for k, v in names.items() if v is not None}
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class StandardWebhookSettings(_Strict):
    """Outpost's standard-mode settings, for destinations in the ``standard`` format."""

    header_prefix: str = "webhook-"
    # Outpost's standard mode also sends each key of the event's metadata as a header
    # of its own name, unprefixed (never replacing a header relay already set).
    unprefixed_metadata: bool = True

    @field_validator("header_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _header_prefix(value)


class WebhookSettings(_Strict):
    # A timestamp-ms metadata key (RFC 3339 with the fraction), in both formats.
    include_millisecond_timestamp: bool = False
    outpost: OutpostWebhookSettings = OutpostWebhookSettings()
    standard: StandardWebhookSettings = StandardWebhookSettings()


def _http_base_url(value: str) -> str:
    if re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value) is None:
        raise ValueError(f"{value!r} is not an http:// or https:// base URL")
    return value.rstrip("/")


class HookdeckSettings(_Strict):
    """Where hookdeck destinations go: Hookdeck's own addresses, unless pointed elsewhere
    (a test's local receiver, a proxy)."""

    # Events are POSTed to <publish_url>/<the token's source id>.
    publish_url: str = "https://hkdk.events"
    # A token is checked when a destination is saved, at
    # <api_url>/2025-01-01/sources/<source id>/managed/verify.
    api_url: str = "https://api.hookdeck.com"

    @field_validator("publish_url", "api_url")
    @classmethod
    def _base(cls, value: str) -> str:
        return _http_base_url(value)


class AwsKinesisSettings(_Strict):
    """How aws_kinesis destinations shape a record (Outpost's
    DESTINATIONS_AWS_KINESIS_METADATA_IN_PAYLOAD)."""

    # Each record is {"data": <the event's data>, "metadata": {...}}; false: the data alone.
    metadata_in_payload: bool = True


class DeliverySettings(_Strict):
    # The format of destinations that do not choose one: "standard" (Outpost's standard
    # mode: Standard Webhooks) or "outpost" (Outpost's default mode: x-outpost-*).
    webhook_mode: WebhookMode = "standard"
    webhook: WebhookSettings = WebhookSettings()
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    lease_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    poll_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 200
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 256
    per_destination_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 32
    response_body_cap_bytes: Annotated[int, Field(ge=0)] = 4096
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 10.0
    # Consecutive failures after which a destination is disabled; 0 = never (as Outpost).
    auto_disable_after_failures: Annotated[int, Field(ge=0)] = 0
    # CIDRs that deliveries may reach despite the SSRF guard (loopback/private are refused).
    allow_private_networks: list[str] = Field(default_factory=list)
    retry: RetrySettings = RetrySettings()
    hookdeck: HookdeckSettings = HookdeckSettings()
    aws_kinesis: AwsKinesisSettings = AwsKinesisSettings()
    # Dispatcher groups (relay/groups.py): name -> tenant ids delivered only by
    # dispatchers started with `--group NAME` (or RELAY_DISPATCH_GROUP), so that another
    # tenant's burst does not share their event loop. Dispatchers of no group take a
    # grouped tenant's due rows only once they have waited group_takeover_seconds.
    groups: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], list[str]] = Field(
        default_factory=dict
    )
    group_takeover_seconds: Annotated[float, Field(gt=0, le=86400)] = 30.0
    # The group this process's dispatcher serves; unset: tenants in no group.
    group: str | None = None

    @model_validator(mode="after")
    def _groups(self) -> DeliverySettings:
        owner: dict[str, str] = {}
        for name, tenants in self.groups.items():
            if not tenants:
                raise _at_key(
                    f"delivery.groups.{name}",
                    "a group needs at least one tenant id",
                    f'list its tenants ({name} = ["tenant-id"] under [delivery.groups]) '
                    "or remove it",
                )
            for index, tenant in enumerate(tenants):
                if tenant in owner:
                    raise _at_key(
                        f"delivery.groups.{name}[{index}]",
                        f"tenant {tenant!r} is already in group {owner[tenant]!r}",
                        "a tenant belongs to one group; remove it from one of them",
                    )
                owner[tenant] = name
        if self.group is not None and self.group not in self.groups:
            known = ", ".join(sorted(self.groups)) or "none are declared"
            raise _at_key(
                "delivery.group",
                f"{self.group!r} is not a group of delivery.groups ({known})",
                "declare it under [delivery.groups] or start the dispatcher with a declared group",
            )
        return self

    @field_validator("allow_private_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR such as 127.0.0.0/8") from None
        return value


class RetentionSettings(_Strict):
    # History (events, finished deliveries, attempts) older than this is dropped a time
    # slice at a time (relay/retention.py), by relay's processes and `relay prune`; events
    # with a delivery still to make are kept. 0 = keep all. Slices are an eighth of it.
    max_age_days: Annotated[float, Field(ge=0)] = 0
    # Event keys (idempotency) of a dropped slice forgotten per statement.
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    # Seconds between two looks at the slices; 60 at most (slices ahead must not run out).
    interval_seconds: Annotated[float, Field(gt=0)] = 600.0


class LoggingSettings(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    # "text" for people, "json" (one object per line) for log pipelines.
    format: Literal["text", "json"] = "text"
    # One line per HTTP request (logger relay.access): request id, route, status,
    # duration. /healthz and /metrics are logged at DEBUG.
    access_log: bool = True


class MetricsSettings(_Strict):
    # GET /metrics reads the database gauges (backlog, due, oldest pending, expired
    # leases) at most once per this many seconds, however many scrapers ask; 0 = at
    # every scrape.
    database_cache_seconds: Annotated[float, Field(ge=0, le=3600)] = 5.0


class Limits(_Strict):
    """Delivery control shared by a destination and (as the default for each of its
    destinations) a tenant: unset is no limit. Enforced across every dispatcher process."""

    # At most this many deliveries a second, with bursts of up to rate_limit_burst.
    rate_limit_per_second: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    # Unset: one second's worth of the rate (at least 1).
    rate_limit_burst: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    # At most this many requests in flight (claimed, not yet answered), all processes.
    max_in_flight: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @model_validator(mode="after")
    def _burst_needs_a_rate(self) -> Limits:
        if self.rate_limit_burst is not None and self.rate_limit_per_second is None:
            raise ValueError("rate_limit_burst needs rate_limit_per_second")
        return self


def _strings(value: object) -> object:
    """TOML's booleans and numbers as the strings a type's config holds."""
    if not isinstance(value, dict):
        return value
    return {
        k: ("true" if v else "false")
        if isinstance(v, bool)
        else str(v)
        if isinstance(v, int | float)
        else v
        for k, v in value.items()
    }


StringTable = Annotated[dict[str, str], BeforeValidator(_strings)]


class DestinationConfig(Limits):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    # One of relay/delivery/registry.py's types; webhook takes url, custom_headers and
    # secret, the others config and credentials.
    type: str = "webhook"
    url: str | None = None
    topics: list[str] | Literal["*"] = "*"
    # Every type but webhook: its config and credentials, as the API takes them.
    config: StringTable = Field(default_factory=dict)
    credentials: StringTable = Field(default_factory=dict)
    # Credentials read from environment variables (key = variable name); an unset
    # variable stops the start.
    credentials_env: dict[str, str] = Field(default_factory=dict)
    secret: str | None = None
    secret_env: str | None = None
    custom_headers: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    metadata: dict[str, str] = Field(default_factory=dict)
    # "standard" or "outpost" for this destination; unset: delivery.webhook_mode.
    # (signature_mode is its former name.)
    webhook_mode: WebhookMode | None = Field(
        default=None, validation_alias=AliasChoices("webhook_mode", "signature_mode")
    )
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] | None = None
    # Ordered delivery: the metadata key whose value orders events to this destination
    # (same value: one at a time, in publish order); unset: no ordering.
    ordering_key: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    # A key's head that finally fails: "block" keeps it at the head (nothing more of its
    # key is sent until an operator retries it), "skip" fails it and the key goes on.
    ordering_on_failure: Literal["block", "skip"] = "block"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        problem = None if value is None else webhooks.url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("topics")
    @classmethod
    def _some_topics(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and (not value or not all(value)):
            raise ValueError('must list at least one non-empty topic, or be "*" for every topic')
        return value

    @field_validator("custom_headers")
    @classmethod
    def _sendable_headers(cls, value: dict[str, str]) -> dict[str, str]:
        problems = webhooks.header_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @property
    def topic_list(self) -> list[str]:
        return ["*"] if self.topics == "*" else list(self.topics)

    def literal_hosts(self) -> list[tuple[str, ssrf.Address]]:
        """The IP literals it delivers to, by key: a webhook's url's host, the hosts its
        type's values name (Provider.addresses). A name is left to delivery, which judges
        what it resolves to then (DNS where the file is checked may answer otherwise)."""
        if self.url is not None:
            found = [("url", ssrf.literal_host(self.url))]
        else:
            provider = registry.describer(self.type)
            endpoints = provider.addresses(*provider.normalise(self.config, self.credentials))
            found = [(field, ssrf.literal(host)) for field, host, _ in endpoints]
        return [(key, ip) for key, ip in found if ip is not None]

    def type_problem(self) -> tuple[str, str, str] | None:
        """What is wrong with its type's fields, as (key under it, problem, fix)."""
        if not registry.known(self.type):
            return "type", registry.unknown_type(self.type), "use one of the types listed"
        given = self.model_fields_set
        if self.type == "webhook":
            if self.url is None:
                return (
                    "url",
                    "required key is missing (a webhook needs a url)",
                    'add url = "https://..."',
                )
            for key in ("config", "credentials", "credentials_env"):
                if getattr(self, key):
                    return (
                        key,
                        "a webhook destination takes url, custom_headers and secret instead",
                        f"remove {key}",
                    )
            return None
        for key in ("url", "secret", "secret_env", "custom_headers", "webhook_mode"):
            if key in given:
                return (
                    key,
                    f"is a webhook's key; a {self.type} destination takes config and credentials",
                    f"remove {key}",
                )
        provider = registry.describer(self.type)
        problems = provider.problems(self.config, self.credentials)
        if problems:
            field = problems[0].split(" ", 1)[0]
            return (
                field,
                problems[0].removeprefix(field + " "),
                (f"see the README's table of destination types for {self.type}'s keys"),
            )
        unavailable = registry.availability(self.type)
        if unavailable:
            return "type", unavailable, "install the extra, or remove this destination"
        return None


def _pod_url(value: str) -> str:
    if re.match(r"https?://[^/\s]+", value) is None:
        raise ValueError(
            f"{value!r} is not a pod URL such as https://user.example.com/profile/card#me"
        )
    return value


class TenantConfig(Limits):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    metadata: dict[str, str] = Field(default_factory=dict)
    destinations: list[DestinationConfig] = Field(default_factory=list)
    # Pod identities this tenant answers for in the pod-style publish API (POST /publish/).
    pods: list[str] = Field(default_factory=list)

    @field_validator("pods")
    @classmethod
    def _pod_urls(cls, value: list[str]) -> list[str]:
        return [_pod_url(pod) for pod in value]

    @model_validator(mode="after")
    def _unique_destinations(self) -> TenantConfig:
        seen: set[str] = set()
        for index, dest in enumerate(self.destinations):
            if dest.id in seen:
                raise ValueError(f"destinations[{index}].id {dest.id!r} is declared twice")
            seen.add(dest.id)
        return self


class OperatorSinkConfig(DestinationConfig):
    """An operator sink: a webhook destination of the internal tenant relay/operator,
    subscribed to operator event topics (relay/opevents.py)."""

    @field_validator("topics")
    @classmethod
    def _operator_topics(cls, value: list[str] | str) -> list[str] | str:
        for index, topic in enumerate([value] if isinstance(value, str) else value):
            problem = opevents.topic_problem(topic)
            if problem:
                raise ValueError(f"topics[{index}]: {problem}")
        return value


class OperatorEventsSettings(_Strict):
    """Outpost's operator events, delivered to the sinks declared here (and to those the
    /api/v1/operator-events API creates)."""

    # Sent as the envelope's deployment_id when set.
    deployment_id: str = ""
    # The consecutive-failure count that is 100% for alert.destination.consecutive_failure
    # while delivery.auto_disable_after_failures is 0 (Outpost's ALERT_CONSECUTIVE_FAILURE_
    # COUNT, whose default this is); when that is set, it is the 100% and this is unused.
    consecutive_failure_count: Annotated[int, Field(ge=0)] = 100
    # How often a dispatcher reads the sinks' topics again (a new sink, a sink's new
    # topics, take up to this long to apply). No statement is spent on a batch of outcomes
    # no sink wants an event of.
    refresh_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    sinks: list[OperatorSinkConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_sinks(self) -> OperatorEventsSettings:
        seen: set[str] = set()
        for index, sink in enumerate(self.sinks):
            if sink.id in seen:
                raise ValueError(f"sinks[{index}].id {sink.id!r} is declared twice")
            seen.add(sink.id)
        return self


class GrantConfig(_Strict):
    """What a publisher may publish: to these recipients ("*": any), on these topics."""

    recipients: list[str] | Literal["*"]
    # Topic patterns as destinations use them: "*", exact, trailing "/*", no "#action".
    topics: list[str] | Literal["*"]

    @field_validator("recipients")
    @classmethod
    def _recipient_urls(cls, value: list[str] | str) -> list[str] | str:
        if not value:
            raise ValueError('list at least one pod URL, or "*" for any recipient')
        return value if value == "*" else [_pod_url(pod) for pod in value]

    @field_validator("topics")
    @classmethod
    def _some_topics(cls, value: list[str] | str) -> list[str] | str:
        if not value or any(not pattern for pattern in value):
            raise ValueError('list at least one non-empty topic pattern, or "*" for any topic')
        return value

    @property
    def topic_list(self) -> list[str]:
        return ["*"] if self.topics == "*" else list(self.topics)


class PublisherConfig(_Strict):
    """A producer app of the pod-style publish API, known by its ``x-api-key``."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    key: Annotated[str, Field(min_length=1)] | None = None
    key_env: str | None = None
    grants: list[GrantConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_key(self) -> PublisherConfig:
        if self.key is None:
            raise ValueError("a publisher needs a key: set key, or key_env to read it from")
        return self


class Settings(_Strict):
    """Everything relay needs to run, frozen after validation."""

    config_path: str | None = None
    server: ServerSettings = ServerSettings()
    api: ApiSettings = ApiSettings()
    database: DatabaseSettings = DatabaseSettings()
    delivery: DeliverySettings = DeliverySettings()
    topics: list[str] = Field(default_factory=list)
    retention: RetentionSettings = RetentionSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    tenants: list[TenantConfig] = Field(default_factory=list)
    publishers: list[PublisherConfig] = Field(default_factory=list)
    operator_events: OperatorEventsSettings = OperatorEventsSettings()

    @model_validator(mode="after")
    def _unique_tenants(self) -> Settings:
        seen: set[str] = set()
        for index, tenant in enumerate(self.tenants):
            if tenant.id == opevents.OPERATOR_TENANT:
                raise _at_key(
                    f"tenants[{index}].id",
                    f"{tenant.id!r} is relay's own tenant for operator events",
                    "declare operator sinks under [[operator_events.sinks]], and give this "
                    "tenant another id",
                )
            if tenant.id in seen:
                raise ValueError(f"tenants[{index}].id {tenant.id!r} is declared twice")
            seen.add(tenant.id)
        return self

    @model_validator(mode="after")
    def _pods_answered_once(self) -> Settings:
        owner: dict[str, str] = {}
        for t_index, tenant in enumerate(self.tenants):
            for p_index, pod in enumerate(tenant.pods):
                if pod in owner:
                    raise ValueError(
                        f"tenants[{t_index}].pods[{p_index}] {pod!r} is already answered "
                        f"for by tenant {owner[pod]!r}; a pod belongs to one tenant"
                    )
                owner[pod] = tenant.id
        return self

    @model_validator(mode="after")
    def _unique_publishers(self) -> Settings:
        names: set[str] = set()
        keys: dict[str, int] = {}
        for index, publisher in enumerate(self.publishers):
            if publisher.name in names:
                raise ValueError(f"publishers[{index}].name {publisher.name!r} is declared twice")
            names.add(publisher.name)
            assert publisher.key is not None
            if publisher.key in keys:
                # The key identifies the publisher, so two cannot share one (never echo it).
                raise ValueError(
                    f"publishers[{index}].key is the same as publishers[{keys[publisher.key]}]"
                    ".key; give each publisher its own key"
                )
            keys[publisher.key] = index
        return self

    @model_validator(mode="after")
    def _destinations_deliverable(self) -> Settings:
        # Judged here, not in DestinationConfig: it needs delivery.allow_private_networks.
        allowed = ssrf.parse_networks(self.delivery.allow_private_networks)
        declared = [
            (f"tenants[{t_index}].destinations[{d_index}]", dest)
            for t_index, tenant in enumerate(self.tenants)
            for d_index, dest in enumerate(tenant.destinations)
        ] + [
            (f"operator_events.sinks[{index}]", sink)
            for index, sink in enumerate(self.operator_events.sinks)
        ]
        for key, dest in declared:
            wrong = dest.type_problem()
            if wrong is not None:
                raise _at_key(f"{key}.{wrong[0]}", wrong[1], wrong[2])
            for field, ip in dest.literal_hosts():
                blocked = ssrf.why_refused(ip, allowed)
                if blocked:
                    raise _at_key(f"{key}.{field}", blocked, _OPEN_RANGE)
        return self

    def declared_tenants(self) -> list[TenantConfig]:
        """The file's tenants, and relay/operator with the sinks if any are declared."""
        sinks = self.operator_events.sinks
        if not sinks:
            return list(self.tenants)
        operator = TenantConfig(id=opevents.OPERATOR_TENANT, destinations=list(sinks))
        return [*self.tenants, operator]

    @property
    def admin_api_key(self) -> str | None:
        return self.server.admin_api_key

    @property
    def source(self) -> str:
        return self.config_path or "environment"


_OUTPOST = ("delivery", "webhook", "outpost")

# Environment variables that override a file value: name -> key path.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "RELAY_DATABASE_URL": ("database", "url"),
    "RELAY_DATA_DIR": ("database", "data_dir"),
    "RELAY_DATABASE_STARTUP_WAIT_SECONDS": ("database", "startup_wait_seconds"),
    "RELAY_DATABASE_STATEMENT_TIMEOUT_SECONDS": ("database", "statement_timeout_seconds"),
    "RELAY_XMIN_HORIZON_WARNING_SECONDS": ("database", "xmin_horizon_warning_seconds"),
    "RELAY_HOST": ("server", "host"),
    "RELAY_PORT": ("server", "port"),
    "RELAY_WORKERS": ("server", "workers"),
    "RELAY_HEALTH_PORT": ("server", "health_port"),
    "RELAY_ADMIN_API_KEY": ("server", "admin_api_key"),
    "RELAY_PUBLIC_URL": ("server", "public_url"),
    "RELAY_API_STRICT_PUBLISH": ("api", "strict_publish"),
    "RELAY_DISPATCH_LEASE_SECONDS": ("delivery", "lease_seconds"),
    "RELAY_POLL_INTERVAL_SECONDS": ("delivery", "poll_interval_seconds"),
    "RELAY_DELIVERY_TIMEOUT_SECONDS": ("delivery", "timeout_seconds"),
    "RELAY_ALLOW_PRIVATE_NETWORKS": ("delivery", "allow_private_networks"),
    "RELAY_DISPATCH_GROUP": ("delivery", "group"),
    "RELAY_WEBHOOK_MODE": ("delivery", "webhook_mode"),
    "RELAY_WEBHOOK_INCLUDE_MILLISECOND_TIMESTAMP": (
        "delivery",
        "webhook",
        "include_millisecond_timestamp",
    ),
    "RELAY_WEBHOOK_STANDARD_HEADER_PREFIX": ("delivery", "webhook", "standard", "header_prefix"),
    "RELAY_WEBHOOK_STANDARD_UNPREFIXED_METADATA": (
        "delivery",
        "webhook",
        "standard",
        "unprefixed_metadata",
    ),
    **{
        f"RELAY_WEBHOOK_OUTPOST_{key.upper()}": (*_OUTPOST, key)
        for key in OutpostWebhookSettings.model_fields
    },
    "RELAY_AWS_KINESIS_METADATA_IN_PAYLOAD": ("delivery", "aws_kinesis", "metadata_in_payload"),
    "RELAY_RETENTION_DAYS": ("retention", "max_age_days"),
    "RELAY_LOG_LEVEL": ("logging", "level"),
    "RELAY_LOG_FORMAT": ("logging", "format"),
    "RELAY_ACCESS_LOG": ("logging", "access_log"),
    "RELAY_METRICS_DATABASE_CACHE_SECONDS": ("metrics", "database_cache_seconds"),
}

_ENV_BY_KEY = {".".join(path): name for name, path in ENV_OVERRIDES.items()}

_FIXES = {
    "missing": "add this key",
    "extra_forbidden": "remove this key or check its spelling against config/relay.example.toml",
}


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read the config file (if any) and the environment into validated Settings.

    ``path`` wins over ``RELAY_CONFIG``, which wins over ``config/relay.toml``. A missing
    file is an error when named explicitly, and a valid start (env only) otherwise.
    """
    env = os.environ if env is None else env
    explicit = path is not None or "RELAY_CONFIG" in env
    home = Path(env["RELAY_HOME"]).expanduser() if env.get("RELAY_HOME") else None
    default = home / DEFAULT_CONFIG_PATH if home is not None else DEFAULT_CONFIG_PATH
    config_path = Path(path if path is not None else env.get("RELAY_CONFIG", default))
    source = str(config_path)

    raw: dict[str, Any] = {}
    if config_path.is_file():
        try:
            raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "", f"not valid TOML ({exc})", "fix the syntax") from None
        except OSError as exc:
            raise ConfigError(source, "", f"cannot be read ({exc.strerror})") from None
        raw["config_path"] = source
    elif explicit:
        raise ConfigError(
            source,
            "",
            "file not found",
            "pass an existing file with --config or RELAY_CONFIG, or unset RELAY_CONFIG "
            "to start from environment variables alone",
        )
    else:
        source = "environment"

    _apply_env(raw, env)
    _resolve_env_references(raw, env, source)
    _resolve_data_dir(raw, home)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(source, exc, env) from None


def _resolve_data_dir(raw: dict[str, Any], home: Path | None) -> None:
    """Make ``database.data_dir`` absolute, so that every command finds the same embedded
    database from any directory: a relative path (from the file, RELAY_DATA_DIR or the
    default) is relative to the config file's directory; with no config file, to
    RELAY_HOME when set, else to the current directory."""
    database = raw.setdefault("database", {})
    if not isinstance(database, dict):
        return  # validation says what is wrong
    value = database.get("data_dir", DatabaseSettings.model_fields["data_dir"].default)
    if not isinstance(value, str) or not value.strip():
        return
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        if "config_path" in raw:
            base = Path(raw["config_path"]).parent
        else:
            base = home if home is not None else Path()
        path = base / path
    database["data_dir"] = str(path.resolve())


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, path in ENV_OVERRIDES.items():
        if name not in env:
            continue
        value: Any = env[name]
        if name == "RELAY_ALLOW_PRIVATE_NETWORKS":
            value = [part.strip() for part in value.split(",") if part.strip()]
        table = raw
        for section in path[:-1]:
            table = table.setdefault(section, {})
            if not isinstance(table, dict):
                break  # the file has a value where a table belongs: validation says so
        else:
            table[path[-1]] = value


def _resolve_env_references(raw: dict[str, Any], env: Mapping[str, str], source: str) -> None:
    """Replace ``*_env`` keys (secrets kept out of the file) by the variable's value."""
    server = raw.get("server")
    if (
        isinstance(server, dict)
        and server.get("admin_api_key_env")
        and not server.get("admin_api_key")
    ):
        name = server["admin_api_key_env"]
        if name not in env:
            raise ConfigError(
                source,
                "server.admin_api_key_env",
                f"environment variable {name} is not set",
                f"export {name}=<key>, or set server.admin_api_key",
            )
        server["admin_api_key"] = env[name]

    publishers = raw.get("publishers")
    for p_index, publisher in enumerate(publishers if isinstance(publishers, list) else []):
        if not isinstance(publisher, dict) or not publisher.get("key_env") or publisher.get("key"):
            continue
        name = publisher["key_env"]
        if name not in env:
            raise ConfigError(
                source,
                f"publishers[{p_index}].key_env",
                f"environment variable {name} is not set",
                f"export {name}=<key>, or set key inline",
            )
        publisher["key"] = env[name]

    declared: list[tuple[str, Any]] = []
    tenants = raw.get("tenants")
    for t_index, tenant in enumerate(tenants if isinstance(tenants, list) else []):
        dests = tenant.get("destinations") if isinstance(tenant, dict) else None
        if isinstance(dests, list):
            key = f"tenants[{t_index}].destinations"
            declared += [(f"{key}[{d_index}]", d) for d_index, d in enumerate(dests)]
    operator = raw.get("operator_events")
    sinks = operator.get("sinks") if isinstance(operator, dict) else None
    if isinstance(sinks, list):
        declared += [(f"operator_events.sinks[{index}]", d) for index, d in enumerate(sinks)]
    for key, dest in declared:
        if not isinstance(dest, dict):
            continue
        from_env = dest.get("credentials_env")
        for name, variable in from_env.items() if isinstance(from_env, dict) else ():
            if not isinstance(variable, str):
                continue  # validation says so
            if variable not in env:
                raise ConfigError(
                    source,
                    f"{key}.credentials_env.{name}",
                    f"environment variable {variable} is not set",
                    f"export {variable}=..., or set credentials.{name} inline",
                )
            credentials = dest.setdefault("credentials", {})
            if isinstance(credentials, dict):
                credentials[name] = env[variable]
        if not dest.get("secret_env") or dest.get("secret"):
            continue
        name = dest["secret_env"]
        if name not in env:
            raise ConfigError(
                source,
                f"{key}.secret_env",
                f"environment variable {name} is not set",
                f"export {name}=whsec_..., or set secret inline",
            )
        dest["secret"] = env[name]


def _at_key(key: str, problem: str, fix: str) -> PydanticCustomError:
    """A problem found above its key (by a model validator) that still names key and fix."""
    return PydanticCustomError(
        "relay_at_key", "{key}: {problem}", {"key": key, "problem": problem, "fix": fix}
    )


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _config_error(source: str, exc: ValidationError, env: Mapping[str, str]) -> ConfigError:
    # Report the first problem precisely; the rest are listed after it.
    errors = exc.errors(include_url=False)
    lines = []
    for err in errors:
        if err["type"] == "relay_at_key":
            ctx = err["ctx"]
            lines.append((ctx["key"], ctx["problem"], ctx["fix"]))
            continue
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Literal/union branches add type names to the location; drop them.
        loc = tuple(p for p in loc if p not in ("literal['*']", "list[str]", "str"))
        # A table's key that fails its pattern: pydantic says where with "[key]".
        loc = tuple(p for p in loc if p != "[key]")
        lines.append((_key_path(loc), _problem(err), _FIXES.get(err["type"], _fix_for(err))))
    key, problem, fix = lines[0]
    variable = _variable_for(key, env)
    if variable is not None:
        # The file is not where the value came from: name the variable as the source.
        source = f"environment variable {variable}"
        problem += f" (the value comes from {variable})"
        fix = f"{fix}; or change or unset {variable}"
    if len(lines) > 1:
        others = "; ".join(f"{k or '(top level)'}: {p}" for k, p, _ in lines[1:5])
        problem += f" (also: {others})"
    return ConfigError(source, key or "(top level)", problem, fix)


def _variable_for(key: str, env: Mapping[str, str]) -> str | None:
    """The environment variable that set the value at ``key`` (or at a table or list
    holding it), if one did."""
    while key:
        variable = _ENV_BY_KEY.get(key)
        if variable is not None and variable in env:
            return variable
        shorter = re.sub(r"(\[\d+\]|\.[^.\[]+)$", "", key) if re.search(r"[.\[]", key) else ""
        if shorter == key:  # nothing more to take off (a key that is not a plain path)
            return None
        key = shorter
    return None


def _problem(err: Any) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def _fix_for(err: Any) -> str:
    kind = err["type"]
    if kind.endswith("_parsing") or kind.endswith("_type"):
        return f"give a value of the right type (got {err.get('input')!r})"
    if kind == "literal_error":
        return "use one of the allowed values"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return "pick a value in range"
    return "see config/relay.example.toml for this key"
