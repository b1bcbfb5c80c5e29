"""The declared schema: SQLAlchemy Core tables, alembic's target.

Everything lives in the PostgreSQL schema ``relay`` so that relay can share a database
with the producer's own tables. ``tests/integration/test_migrations.py`` fails when these
declarations and the migrations drift apart.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB, TIMESTAMP, UUID

SCHEMA = "relay"

metadata = MetaData(
    schema=SCHEMA,
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    },
)

TS = TIMESTAMP(timezone=True)
LIMITS_CHECK = (
    "(rate_limit_per_second IS NULL OR rate_limit_per_second > 0)"
    " AND (rate_limit_burst IS NULL OR rate_limit_burst >= 1)"
    " AND (max_in_flight IS NULL OR max_in_flight >= 1)"
)
NOW = text("now()")

# Where a tenant or destination came from: the config file is the source of truth for
# its own; the API owns the rest.
ORIGINS = ("config", "api")

tenants = Table(
    "tenants",
    metadata,
    Column("id", Text, primary_key=True),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("origin", Text, nullable=False, server_default="api"),
    # Pod identities (e.g. https://user.example.com/profile/card#me) this tenant answers
    # for in the pod-style publish API.
    Column("pods", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    # Delivery control (migration 0012): NULL is no limit. A destination's own values
    # win over its tenant's, which are the default for each of the tenant's destinations.
    Column("rate_limit_per_second", Float),
    Column("rate_limit_burst", Integer),
    Column("max_in_flight", Integer),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("updated_at", TS, nullable=False, server_default=NOW),
    # Soft delete: events and attempts keep pointing at a deleted tenant.
    Column("deleted_at", TS),
    CheckConstraint("origin IN ('config', 'api')", name="origin"),
    CheckConstraint(LIMITS_CHECK, name="limits"),
    Index("ix_tenants_pods", "pods", postgresql_using="gin"),
)

destinations = Table(
    "destinations",
    metadata,
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False),
    Column("id", Text, nullable=False),
    Column("type", Text, nullable=False, server_default="webhook"),
    # ['*'] means every topic.
    Column("topics", ARRAY(Text), nullable=False),
    # Every type but webhook (migration 0017): Outpost's config and credentials, JSON
    # objects of strings (relay/delivery/schemas/<type>.json names their keys). A webhook
    # keeps its own in the columns below (NULL for the other types).
    Column("config", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("credentials", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("url", Text),
    Column("custom_headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("secret", Text),
    Column("previous_secret", Text),
    Column("previous_secret_invalid_at", TS),
    # The webhook format, "standard" or "outpost"; NULL: delivery.webhook_mode. (The API
    # and the config file call it webhook_mode; migration 0009 says why it kept its name.)
    Column("signature_mode", Text),
    Column("timeout_seconds", Float),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("delivery_metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("filter", JSONB),
    Column("origin", Text, nullable=False, server_default="api"),
    Column("disabled_at", TS),
    Column("disabled_reason", Text),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    # Delivery control (migration 0012): NULL is no limit. A destination's own values
    # win over its tenant's, which are the default for each of the tenant's destinations.
    Column("rate_limit_per_second", Float),
    Column("rate_limit_burst", Integer),
    Column("max_in_flight", Integer),
    # Adaptive backoff: 1 is full speed; 429, 503 and timeouts lower it, healthy answers
    # raise it again. Nothing is claimed for the destination before throttled_until.
    Column("throttle", Float, nullable=False, server_default=text("1")),
    Column("throttled_until", TS),
    Column("throttle_reason", Text),
    # Ordered delivery (migration 0013): the metadata key whose value orders events to
    # this destination (NULL: unordered), and what a key's head that finally fails does.
    Column("ordering_key", Text),
    Column("ordering_on_failure", Text, nullable=False, server_default="block"),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("updated_at", TS, nullable=False, server_default=NOW),
    Column("deleted_at", TS),
    PrimaryKeyConstraint("tenant_id", "id"),
    CheckConstraint("origin IN ('config', 'api')", name="origin"),
    CheckConstraint("signature_mode IN ('standard', 'outpost')", name="signature_mode"),
    CheckConstraint(
        "type <> 'webhook' OR (url IS NOT NULL AND secret IS NOT NULL)", name="webhook_fields"
    ),
    CheckConstraint("ordering_on_failure IN ('block', 'skip')", name="ordering_on_failure"),
    CheckConstraint(LIMITS_CHECK, name="limits"),
)

# A token bucket per rate-limited destination, read and written only by the claim while
# it holds the destination's advisory lock (relay/db/outbox.py, CLAIM_LIMITED).
destination_buckets = Table(
    "destination_buckets",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("destination_id", Text, nullable=False),
    Column("tokens", Float, nullable=False),
    Column("refilled_at", TS, nullable=False),
    PrimaryKeyConstraint("tenant_id", "destination_id"),
    postgresql_with={"fillfactor": "50"},
)

# History is kept in time slices: partitions of events, finished deliveries and attempts
# that relay creates ahead of time and drops whole past the retention age
# (relay/retention.py, migration 0008). The partitions themselves are not declared here:
# relay.events_kept and relay.events_sliced (by seq), relay.deliveries_active (the hot
# outbox, with the dispatcher's indexes) and relay.deliveries_finished (by updated_at), and
# one partition per slice of each; the migration makes them, relay.create_slice() the rest.
slices = Table(
    "slices",
    metadata,
    # '-infinity' for the legacy slice: the tables as they were before migration 0008.
    Column("starts_at", TS, primary_key=True),
    Column("ends_at", TS, nullable=False),
    # Its retention has begun: events that must outlive it are moving to events_kept.
    Column("closing", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", TS, nullable=False, server_default=NOW),
)

# Idempotency: a repeat of (tenant, id) is refused here, as long as the event is kept (a
# unique index on the partitioned events would have to hold its partition key).
event_keys = Table(
    "event_keys",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False, server_default=text("relay.next_event_seq()")),
    PrimaryKeyConstraint("tenant_id", "id"),
    Index("ix_event_keys_seq", "seq"),
)

events = Table(
    "events",
    metadata,
    # Surrogate key: ordering, cursors and compact references. It encodes the minute it
    # was written ((minute since 1970 << 32) | counter), which is the partition key.
    Column("seq", BigInteger, nullable=False, server_default=text("relay.next_event_seq()")),
    Column("tenant_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("topic", Text, nullable=False, server_default=""),
    # json, not jsonb: keeps the producer's bytes and key order for delivery.
    Column("data", JSON, nullable=False),
    # What receivers get when it is not `data` itself (pod events: an envelope around it).
    Column("body", JSON),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("eligible_for_retry", Boolean, nullable=False, server_default=text("true")),
    # Set when the producer routed to one destination explicitly.
    Column("destination_id", Text),
    Column("time", TS, nullable=False, server_default=NOW),
    Column("created_at", TS, nullable=False, server_default=NOW),
    # When its outbox rows were written. NULL only for events the relay.publish() SQL
    # function wrote: the router (relay/router.py) routes those after their commit.
    Column("routed_at", TS, server_default=NOW),
    # It outlived its slice (a delivery was still active): it lives in events_kept.
    Column("kept", Boolean, nullable=False, server_default=text("false")),
    # The W3C traceparent of the span that published it (relay/tracing.py); NULL when
    # not tracing. Attempts' spans are its children (migration 0011).
    Column("trace_context", Text),
    PrimaryKeyConstraint("seq", "kept"),
    # Instants both PostgreSQL and Python hold (migration 0006): one outside would be
    # stored and never read back.
    CheckConstraint(
        "time >= '0001-01-01 00:00:00+00'::timestamptz "
        "AND time <= '9999-12-31 23:59:59.999999+00'::timestamptz",
        name="time_range",
    ),
    Index("ix_events_tenant_id_time", "tenant_id", text("time DESC"), text("seq DESC")),
    Index("ix_events_time", text("time DESC"), text("seq DESC")),
    # The API's event listing filtered by topic.
    Index(
        "ix_events_tenant_id_topic_time",
        "tenant_id",
        "topic",
        text("time DESC"),
        text("seq DESC"),
    ),
    # Event ids are unique per tenant; the admin API and POST /retry look them up alone.
    Index("ix_events_id", "id"),
    # The router's queue: tiny, since routed events leave it.
    Index("ix_events_unrouted", "seq", postgresql_where=text("routed_at IS NULL")),
    postgresql_partition_by="LIST (kept)",
)

# The outbox: one row per event x destination, the unit the dispatcher claims. Pending
# and in-flight rows are in deliveries_active; a delivery that ends moves to the slice of
# deliveries_finished of its updated_at.
DELIVERY_STATUSES = ("pending", "delivering", "delivered", "failed")

deliveries = Table(
    "deliveries",
    metadata,
    # Unique in practice (one sequence); each partition has its own index on it.
    Column(
        "id",
        BigInteger,
        nullable=False,
        server_default=text("nextval('relay.delivery_ids'::regclass)"),
    ),
    # The event (events.seq) and the destination (tenant_id, destination_id) it goes to.
    # No foreign keys on the hot tables (migration 0005 says why): relay writes the rows.
    Column("event_seq", BigInteger, nullable=False),
    Column("tenant_id", Text, nullable=False),
    Column("destination_id", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", TS, nullable=False, server_default=NOW),
    # Set while claimed: who holds the row (claim_token) and until when.
    Column("claim_token", UUID(as_uuid=True)),
    Column("lease_expires_at", TS),
    Column("last_error", Text),
    # The next attempt was asked for by an operator (POST /retry, replay).
    Column("manual", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", TS, nullable=False, server_default=NOW),
    Column("updated_at", TS, nullable=False, server_default=NOW),
    # The event's ordering key for an ordered destination (NULL: unordered).
    Column("ordering_key", Text),
    CheckConstraint("status IN ('pending', 'delivering', 'delivered', 'failed')", name="status"),
    Index("ix_deliveries_destination", "tenant_id", "destination_id", "status"),
    postgresql_partition_by="LIST (status)",
)

attempts = Table(
    "attempts",
    metadata,
    Column(
        "id",
        BigInteger,
        nullable=False,
        server_default=text("nextval('relay.attempt_ids'::regclass)"),
    ),
    Column("delivery_id", BigInteger, nullable=False),  # deliveries.id
    Column("event_seq", BigInteger, nullable=False),
    Column("tenant_id", Text, nullable=False),
    Column("destination_id", Text, nullable=False),
    # 1 for the first try of this delivery, 2 for the first retry, ...
    Column("number", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("http_status", Integer),
    # Why it failed when there was no HTTP answer: timeout, connection_refused, ...
    Column("error_code", Text),
    Column("error_detail", Text),
    Column("response_body", Text),
    Column("response_headers", JSONB),
    Column("duration_ms", Integer, nullable=False),
    Column("manual", Boolean, nullable=False, server_default=text("false")),
    Column("started_at", TS, nullable=False),
    # The partition key: the database's time when the attempt was written.
    Column("created_at", TS, nullable=False, server_default=NOW),
    # The attempt span's trace id (32 hex digits), when its dispatcher was tracing.
    Column("trace_id", Text),
    # The type of the destination it was made for, once the destination's row no longer
    # says it (its id taken by one of another type, the row deleted): written then by a
    # trigger on relay.destinations (migration 0018). NULL: the destination's type.
    Column("destination_type", Text),
    PrimaryKeyConstraint("id", "created_at"),
    CheckConstraint("status IN ('success', 'failed')", name="status"),
    Index("ix_attempts_delivery_id", "delivery_id"),
    Index("ix_attempts_event_seq", "event_seq"),
    Index("ix_attempts_tenant_id_started", "tenant_id", text("started_at DESC"), text("id DESC")),
    Index("ix_attempts_started", text("started_at DESC"), text("id DESC")),
    # Per-destination history and health (relay.destination_health).
    Index(
        "ix_attempts_destination_started", "tenant_id", "destination_id", text("started_at DESC")
    ),
    # SQL meets traces: the attempts of a trace. Untraced attempts have no entry.
    Index("ix_attempts_trace_id", "trace_id", postgresql_where=text("trace_id IS NOT NULL")),
    postgresql_partition_by="RANGE (created_at)",
)

# Attempts counted per hour (UTC, by started_at), tenant, destination, status and code:
# what the metrics read for whole hours (relay/db/aggregates.py). Kept by statement
# triggers on relay.attempts (migration 0014), in the writing transaction; ``shard`` is the
# writing session's (its backend pid modulo 16), so that concurrent recorders do not
# queue on one row: readers add the shards up. Counts may fall to 0 (an attempt updated
# or deleted); readers skip those groups.
attempt_hours = Table(
    "attempt_hours",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("hour", TS, nullable=False),
    Column("destination_id", Text, nullable=False),
    # The attempts' destination_type, '' for NULL (migration 0018).
    Column("destination_type", Text, nullable=False, server_default=""),
    Column("status", Text, nullable=False),
    # The HTTP status as text, else the error code, else '' (aggregates' "code").
    Column("code", Text, nullable=False),
    Column("shard", SmallInteger, nullable=False),
    Column("attempts", BigInteger, nullable=False),
    Column("first_attempts", BigInteger, nullable=False),
    Column("manual_attempts", BigInteger, nullable=False),
    Column("number_sum", BigInteger, nullable=False),
    # Those with a latency (history.LATENCY_SQL), and the sum of their duration_ms.
    Column("timed_attempts", BigInteger, nullable=False),
    Column("latency_ms_sum", BigInteger, nullable=False),
    PrimaryKeyConstraint(
        "tenant_id", "hour", "destination_id", "destination_type", "status", "code", "shard"
    ),
    Index("ix_attempt_hours_hour", "hour"),
    postgresql_with={"fillfactor": "70"},
)

# A replay started from the operator console (relay/web/console.py): any relay process
# shows its progress. ``done`` is written in each batch's transaction.
replay_jobs = Table(
    "replay_jobs",
    metadata,
    Column("id", Text, primary_key=True),
    # ops.ReplayFilter as JSON: statuses, tenant_id, destination_id, since, until.
    Column("selection", JSONB, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("done", BigInteger, nullable=False, server_default=text("0")),
    # The newest attempt when it started: the page shows the attempts after it.
    Column("after_attempt", BigInteger, nullable=False),
    Column("started_at", TS, nullable=False, server_default=NOW),
    # Its last progress; a replay unfinished and long unchanged lost its process.
    Column("updated_at", TS, nullable=False, server_default=NOW),
    Column("finished_at", TS),
    Column("error", Text),
)

# Portal links opened (relay/web/sessions.py): a link works once. Kept until the link
# would have expired; older rows go as links are opened.
portal_links_used = Table(
    "portal_links_used",
    metadata,
    Column("jti", Text, primary_key=True),
    Column("expires_at", TS, nullable=False),
)

# One row: its version goes up at the commit of any change to tenants or destinations
# that routing reads (triggers in migration 0005). Publishers cache routes under it.
route_version = Table(
    "route_version",
    metadata,
    Column("id", Boolean, primary_key=True, server_default=text("true")),
    Column("version", BigInteger, nullable=False),
    CheckConstraint("id", name="single_row"),
)
