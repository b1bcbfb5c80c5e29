"""history in time slices: retention drops partitions instead of deleting rows

Retention used to DELETE finished events with their deliveries and attempts, batch by
batch: every deleted row a dead tuple for vacuum to find, tables and indexes that never
shrink, and (while any snapshot pins the xmin horizon) dead entries in the indexes the
dispatcher reads. Now events, finished deliveries and attempts live in partitions of one
time slice each (relay.slices), which relay creates ahead of time and, past the retention
age, detaches concurrently and drops (relay/retention.py):

- relay.events: LIST (kept) -> events_kept, and events_sliced: RANGE (seq), where seq
  encodes the minute it was written (relay.next_event_seq). An event whose slice goes
  while one of its deliveries is still active moves to events_kept first.
- relay.event_keys: (tenant_id, id) -> seq, the idempotency a unique index on events gave
  (a partitioned table's unique index must hold its partition key). Narrow; its rows go
  with their slice, in batches.
- relay.deliveries: LIST (status) -> deliveries_active (pending, delivering: the small
  hot table the dispatcher claims from, as before) and deliveries_finished: RANGE
  (updated_at), which a delivery enters when it ends.
- relay.attempts: RANGE (created_at).

The existing tables become the first slice ("legacy"), attached without copying; only
the active deliveries move, and event keys are copied (a scan of events, once). Views
and relay.publish() keep their names and columns.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text
from sqlalchemy.util import await_only

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTIONS = r"""
CREATE FUNCTION relay.seq_at(at timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT floor(extract(epoch FROM at) / 60)::bigint << 32 $$;

COMMENT ON FUNCTION relay.seq_at(timestamptz) IS
'The first events.seq of the minute at: seq is (minute since 1970 << 32) | counter.';

CREATE SEQUENCE relay.event_counter;

CREATE FUNCTION relay.next_event_seq() RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$ SELECT relay.seq_at(clock_timestamp()) | (nextval('relay.event_counter') & 4294967295) $$;

-- One slice of history: a partition of events, finished deliveries and attempts each,
-- covering [starts_at, ends_at). Made with CREATE TABLE + ATTACH, which takes no lock a
-- publish, claim or record waits on (CREATE TABLE ... PARTITION OF would).
CREATE FUNCTION relay.create_slice(starts_at timestamptz, ends_at timestamptz) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    suffix text := to_char(starts_at AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MI');
BEGIN
    EXECUTE format('CREATE TABLE relay.%I (LIKE relay.events_sliced INCLUDING DEFAULTS '
                   'INCLUDING CONSTRAINTS)', 'events_' || suffix);
    EXECUTE format('ALTER TABLE relay.events_sliced ATTACH PARTITION relay.%I '
                   'FOR VALUES FROM (%s) TO (%s)', 'events_' || suffix,
                   relay.seq_at(starts_at), relay.seq_at(ends_at));
    EXECUTE format('CREATE TABLE relay.%I (LIKE relay.deliveries_finished INCLUDING DEFAULTS '
                   'INCLUDING CONSTRAINTS)', 'deliveries_' || suffix);
    EXECUTE format('ALTER TABLE relay.deliveries_finished ATTACH PARTITION relay.%I '
                   'FOR VALUES FROM (%L) TO (%L)', 'deliveries_' || suffix, starts_at, ends_at);
    EXECUTE format('CREATE TABLE relay.%I (LIKE relay.attempts INCLUDING DEFAULTS '
                   'INCLUDING CONSTRAINTS)', 'attempts_' || suffix);
    EXECUTE format('ALTER TABLE relay.attempts ATTACH PARTITION relay.%I '
                   'FOR VALUES FROM (%L) TO (%L)', 'attempts_' || suffix, starts_at, ends_at);
    INSERT INTO relay.slices (starts_at, ends_at) VALUES (starts_at, ends_at);
END
$$;
"""

DROP_FUNCTIONS = """
DROP FUNCTION relay.create_slice(timestamptz, timestamptz);
DROP FUNCTION relay.next_event_seq();
DROP SEQUENCE relay.event_counter;
DROP FUNCTION relay.seq_at(timestamptz);
"""

# relay.publish() (migration 0003) writes the key first; the event only when it is new.
OLD_PUBLISH_INSERT = """    INSERT INTO relay.events
        (tenant_id, id, topic, data, metadata, eligible_for_retry, destination_id, routed_at)
    VALUES (publish.tenant_id, event_id, publish.topic, publish.data, publish.metadata,
            COALESCE(publish.eligible_for_retry, true), publish.destination_id, NULL)
    ON CONFLICT (tenant_id, id) DO NOTHING
    RETURNING seq INTO inserted;
"""
NEW_PUBLISH_INSERT = """    INSERT INTO relay.event_keys (tenant_id, id)
    VALUES (publish.tenant_id, event_id)
    ON CONFLICT (tenant_id, id) DO NOTHING
    RETURNING seq INTO inserted;
    IF inserted IS NOT NULL THEN
        INSERT INTO relay.events
            (seq, tenant_id, id, topic, data, metadata, eligible_for_retry, destination_id,
             routed_at)
        VALUES (inserted, publish.tenant_id, event_id, publish.topic, publish.data,
                publish.metadata, COALESCE(publish.eligible_for_retry, true),
                publish.destination_id, NULL);
    END IF;
"""


def _script(sql: str) -> None:
    """Several statements at once: asyncpg runs a script only outside prepared statements."""
    await_only(op.get_bind().connection.driver_connection.execute(sql))


def _replace_publish(old: str, new: str) -> None:
    conn = op.get_bind()
    definition = conn.execute(
        text(
            "SELECT pg_get_functiondef("
            "'relay.publish(text, text, json, text, boolean, jsonb, text)'::regprocedure)"
        )
    ).scalar_one()
    if old not in definition:
        raise RuntimeError("relay.publish() is not the definition this migration expects")
    _script(definition.replace(old, new))


def _views() -> list[tuple[str, str]]:
    """The views' definitions, read while they still name the tables as relay.X."""
    rows = op.get_bind().execute(
        text("SELECT viewname, definition FROM pg_views WHERE schemaname = 'relay'")
    )
    return [(row.viewname, row.definition) for row in rows]


def _redefine(views: list[tuple[str, str]]) -> None:
    for name, definition in views:
        op.execute(f"CREATE OR REPLACE VIEW relay.{name} AS {definition}")


def _rename_keys(table: str, new: str) -> None:
    """Rename a table, and its indexes and index-backed constraints (index names are per
    schema), so the new table can take the old names. CHECK constraints keep theirs:
    ATTACH matches them by name."""
    conn = op.get_bind()
    op.execute(f"ALTER TABLE relay.{table} RENAME TO {new}")
    constraints = conn.execute(
        text(
            "SELECT conname FROM pg_constraint "
            "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'u')"
        ),
        {"t": f"relay.{new}"},
    ).scalars()
    for name in list(constraints):
        op.execute(f"ALTER TABLE relay.{new} RENAME CONSTRAINT {name} TO {name}_legacy")
    indexes = conn.execute(
        text(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = CAST(:t AS regclass) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
        ),
        {"t": f"relay.{new}"},
    ).scalars()
    for name in list(indexes):
        op.execute(f"ALTER INDEX relay.{name} RENAME TO {name}_legacy")


def _identity_to_sequence(table: str, column: str, sequence: str) -> None:
    op.execute(f"ALTER TABLE relay.{table} ALTER COLUMN {column} DROP IDENTITY")
    op.execute(f"CREATE SEQUENCE relay.{sequence}")
    op.execute(
        f"SELECT setval('relay.{sequence}', COALESCE(max({column}), 0) + 1, false) "
        f"FROM relay.{table}"
    )


def upgrade() -> None:
    op.execute("LOCK TABLE relay.events, relay.deliveries, relay.attempts IN ACCESS EXCLUSIVE MODE")
    views = _views()
    # Rows written before now belong to the legacy slice; the first new one starts now.
    legacy_ends = op.get_bind().execute(text("SELECT clock_timestamp()")).scalar_one()

    op.execute("""
        CREATE TABLE relay.slices (
            starts_at timestamptz NOT NULL,
            ends_at timestamptz NOT NULL,
            closing boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_slices PRIMARY KEY (starts_at)
        )""")
    _script(FUNCTIONS)

    # --- events --------------------------------------------------------------------------
    _rename_keys("events", "events_legacy")
    op.execute("ALTER TABLE relay.events_legacy ALTER COLUMN seq DROP IDENTITY")
    # The parent's key holds the partition key as well, and a table has one primary key.
    op.execute("ALTER TABLE relay.events_legacy DROP CONSTRAINT pk_events_legacy")
    op.execute("ALTER TABLE relay.events_legacy ALTER COLUMN seq SET NOT NULL")
    op.execute("ALTER TABLE relay.events_legacy ADD COLUMN kept boolean NOT NULL DEFAULT false")
    op.execute("""
        CREATE TABLE relay.events
            (LIKE relay.events_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
            PARTITION BY LIST (kept)""")
    op.execute("ALTER TABLE relay.events ALTER COLUMN seq SET DEFAULT relay.next_event_seq()")
    op.execute("ALTER TABLE relay.events ADD CONSTRAINT pk_events PRIMARY KEY (seq, kept)")
    _script("""
        CREATE INDEX ix_events_tenant_id_time ON relay.events (tenant_id, time DESC, seq DESC);
        CREATE INDEX ix_events_time ON relay.events (time DESC, seq DESC);
        CREATE INDEX ix_events_tenant_id_topic_time
            ON relay.events (tenant_id, topic, time DESC, seq DESC);
        CREATE INDEX ix_events_id ON relay.events (id);
        CREATE INDEX ix_events_unrouted ON relay.events (seq) WHERE routed_at IS NULL;
        CREATE TABLE relay.events_kept PARTITION OF relay.events FOR VALUES IN (true);
        CREATE TABLE relay.events_sliced PARTITION OF relay.events FOR VALUES IN (false)
            PARTITION BY RANGE (seq);
    """)
    # The legacy seqs are all below 2^56; the range goes on to the first slice's.
    _script(
        "ALTER TABLE relay.events_sliced ATTACH PARTITION relay.events_legacy "
        f"FOR VALUES FROM (MINVALUE) TO (relay.seq_at('{legacy_ends.isoformat()}'))"
    )
    _script("""
        CREATE TABLE relay.event_keys (
            tenant_id text NOT NULL,
            id text NOT NULL,
            seq bigint NOT NULL DEFAULT relay.next_event_seq(),
            CONSTRAINT pk_event_keys PRIMARY KEY (tenant_id, id)
        );
        INSERT INTO relay.event_keys (tenant_id, id, seq)
            SELECT tenant_id, id, seq FROM relay.events_legacy;
        CREATE INDEX ix_event_keys_seq ON relay.event_keys (seq);
    """)

    # --- deliveries ----------------------------------------------------------------------
    _rename_keys("deliveries", "deliveries_legacy")
    _identity_to_sequence("deliveries_legacy", "id", "delivery_ids")
    _script("""
        CREATE TABLE relay.deliveries
            (LIKE relay.deliveries_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
            PARTITION BY LIST (status);
        ALTER TABLE relay.deliveries
            ALTER COLUMN id SET DEFAULT nextval('relay.delivery_ids');
        CREATE INDEX ix_deliveries_destination
            ON relay.deliveries (tenant_id, destination_id, status);

        CREATE TABLE relay.deliveries_active PARTITION OF relay.deliveries
            FOR VALUES IN ('pending', 'delivering');
        ALTER TABLE relay.deliveries_active
            ALTER COLUMN id SET DEFAULT nextval('relay.delivery_ids'),
            ADD CONSTRAINT pk_deliveries_active PRIMARY KEY (id),
            ADD CONSTRAINT uq_deliveries_active_event_seq_destination_id
                UNIQUE (event_seq, destination_id);
        CREATE INDEX ix_deliveries_due ON relay.deliveries_active
            (tenant_id, destination_id, next_attempt_at, id) WHERE status = 'pending';
        CREATE INDEX ix_deliveries_lease ON relay.deliveries_active (lease_expires_at)
            WHERE status = 'delivering';
        CREATE INDEX ix_deliveries_active ON relay.deliveries_active (status, created_at)
            INCLUDE (next_attempt_at, lease_expires_at);
        CREATE INDEX ix_deliveries_active_destination
            ON relay.deliveries_active (tenant_id, destination_id, created_at);

        CREATE TABLE relay.deliveries_finished PARTITION OF relay.deliveries
            FOR VALUES IN ('delivered', 'failed') PARTITION BY RANGE (updated_at);
        CREATE INDEX ix_deliveries_finished_id ON relay.deliveries_finished (id);
        CREATE INDEX ix_deliveries_finished_event_seq
            ON relay.deliveries_finished (event_seq, destination_id);
        CREATE INDEX ix_deliveries_failed ON relay.deliveries_finished (updated_at)
            WHERE status = 'failed';

        INSERT INTO relay.deliveries_active
            SELECT * FROM relay.deliveries_legacy WHERE status IN ('pending', 'delivering');
        DELETE FROM relay.deliveries_legacy WHERE status IN ('pending', 'delivering');
    """)
    _script(
        f"ALTER TABLE relay.deliveries_finished ATTACH PARTITION relay.deliveries_legacy "
        f"FOR VALUES FROM (MINVALUE) TO ('{legacy_ends.isoformat()}')"
    )

    # --- attempts ------------------------------------------------------------------------
    _rename_keys("attempts", "attempts_legacy")
    _identity_to_sequence("attempts_legacy", "id", "attempt_ids")
    op.execute("ALTER TABLE relay.attempts_legacy DROP CONSTRAINT pk_attempts_legacy")
    op.execute("ALTER TABLE relay.attempts_legacy ALTER COLUMN id SET NOT NULL")
    _script("""
        CREATE TABLE relay.attempts
            (LIKE relay.attempts_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
            PARTITION BY RANGE (created_at);
        ALTER TABLE relay.attempts ALTER COLUMN id SET DEFAULT nextval('relay.attempt_ids');
        ALTER TABLE relay.attempts ADD CONSTRAINT pk_attempts PRIMARY KEY (id, created_at);
        CREATE INDEX ix_attempts_delivery_id ON relay.attempts (delivery_id);
        CREATE INDEX ix_attempts_event_seq ON relay.attempts (event_seq);
        CREATE INDEX ix_attempts_tenant_id_started
            ON relay.attempts (tenant_id, started_at DESC, id DESC);
        CREATE INDEX ix_attempts_started ON relay.attempts (started_at DESC, id DESC);
        CREATE INDEX ix_attempts_destination_started
            ON relay.attempts (tenant_id, destination_id, started_at DESC);
    """)
    _script(
        f"ALTER TABLE relay.attempts ATTACH PARTITION relay.attempts_legacy "
        f"FOR VALUES FROM (MINVALUE) TO ('{legacy_ends.isoformat()}')"
    )

    # --- the slices: legacy, and half an hour ahead in slices of ten minutes; relay makes
    # the next ones as wide as its retention age asks (relay/retention.py) ---------------
    op.execute(
        text(
            "INSERT INTO relay.slices (starts_at, ends_at) VALUES ('-infinity', :ends)"
        ).bindparams(ends=legacy_ends)
    )
    op.execute(
        text(
            "SELECT relay.create_slice(s, s + interval '10 minutes') "
            "FROM generate_series(CAST(:start AS timestamptz), "
            "CAST(:start AS timestamptz) + interval '30 minutes', interval '10 minutes') AS s"
        ).bindparams(start=legacy_ends)
    )
    _redefine(views)
    _replace_publish(OLD_PUBLISH_INSERT, NEW_PUBLISH_INSERT)


# --- downgrade: back to plain tables, by copying every row --------------------------------

PLAIN_INDEXES = """
ALTER TABLE relay.events ADD CONSTRAINT pk_events PRIMARY KEY (seq);
ALTER TABLE relay.events ADD CONSTRAINT uq_events_tenant_id_id UNIQUE (tenant_id, id);
CREATE INDEX ix_events_tenant_id_time ON relay.events (tenant_id, time DESC, seq DESC);
CREATE INDEX ix_events_time ON relay.events (time DESC, seq DESC);
CREATE INDEX ix_events_created_at ON relay.events (created_at);
CREATE INDEX ix_events_tenant_id_topic_time ON relay.events (tenant_id, topic, time DESC, seq DESC);
CREATE INDEX ix_events_id ON relay.events (id);
CREATE INDEX ix_events_unrouted ON relay.events (seq) WHERE routed_at IS NULL;

ALTER TABLE relay.deliveries ADD CONSTRAINT pk_deliveries PRIMARY KEY (id);
ALTER TABLE relay.deliveries ADD CONSTRAINT uq_deliveries_event_seq_destination_id
    UNIQUE (event_seq, destination_id);
CREATE INDEX ix_deliveries_due ON relay.deliveries
    (tenant_id, destination_id, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX ix_deliveries_lease ON relay.deliveries (lease_expires_at)
    WHERE status = 'delivering';
CREATE INDEX ix_deliveries_destination ON relay.deliveries (tenant_id, destination_id, status);
CREATE INDEX ix_deliveries_active ON relay.deliveries (status, created_at)
    INCLUDE (next_attempt_at, lease_expires_at) WHERE status IN ('pending', 'delivering');
CREATE INDEX ix_deliveries_active_destination ON relay.deliveries
    (tenant_id, destination_id, created_at) WHERE status IN ('pending', 'delivering');
CREATE INDEX ix_deliveries_failed ON relay.deliveries (updated_at) WHERE status = 'failed';

ALTER TABLE relay.attempts ADD CONSTRAINT pk_attempts PRIMARY KEY (id);
CREATE INDEX ix_attempts_delivery_id ON relay.attempts (delivery_id);
CREATE INDEX ix_attempts_event_seq ON relay.attempts (event_seq);
CREATE INDEX ix_attempts_tenant_id_started ON relay.attempts (tenant_id, started_at DESC, id DESC);
CREATE INDEX ix_attempts_started ON relay.attempts (started_at DESC, id DESC);
CREATE INDEX ix_attempts_destination_started
    ON relay.attempts (tenant_id, destination_id, started_at DESC);
"""


def _unpartition(table: str, column: str, drop: str = "") -> None:
    _script(f"""
        CREATE TABLE relay.{table}_plain
            (LIKE relay.{table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
        INSERT INTO relay.{table}_plain SELECT * FROM relay.{table};
        DROP TABLE relay.{table} CASCADE;
        ALTER TABLE relay.{table}_plain RENAME TO {table};
        {drop}
        ALTER TABLE relay.{table} ALTER COLUMN {column} DROP DEFAULT;
        ALTER TABLE relay.{table} ALTER COLUMN {column} ADD GENERATED ALWAYS AS IDENTITY;
        SELECT setval(pg_get_serial_sequence('relay.{table}', '{column}'),
                      COALESCE(max({column}), 0) + 1, false)
        FROM relay.{table};
    """)


def downgrade() -> None:
    op.execute("LOCK TABLE relay.events, relay.deliveries, relay.attempts IN ACCESS EXCLUSIVE MODE")
    views = _views()
    _replace_publish(NEW_PUBLISH_INSERT, OLD_PUBLISH_INSERT)
    for name, _ in views:
        op.execute(f"DROP VIEW relay.{name}")
    _unpartition("events", "seq", "ALTER TABLE relay.events DROP COLUMN kept;")
    _unpartition("deliveries", "id")
    _unpartition("attempts", "id")
    _script(PLAIN_INDEXES)
    _script(
        "DROP TABLE relay.event_keys; DROP TABLE relay.slices; "
        "DROP SEQUENCE relay.delivery_ids; DROP SEQUENCE relay.attempt_ids"
    )
    _script(DROP_FUNCTIONS)
    for name, definition in views:
        op.execute(f"CREATE VIEW relay.{name} AS {definition}")
