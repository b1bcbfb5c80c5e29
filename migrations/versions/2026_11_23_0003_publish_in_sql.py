"""publish from SQL: relay.publish() and the router's queue

``relay.publish(...)`` lets a producer in any language publish inside its own
transaction. It stores the event unrouted (``routed_at`` NULL) and notifies
``relay_route``; relay's router (relay/router.py) routes it after commit with the same
Python routing as every other publish, so the rules exist once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PUBLISHED_TYPE = "CREATE TYPE relay.published AS (id text, duplicate boolean)"

# Errors: SQLSTATE 22023 (invalid_parameter_value) for a bad argument, P0002
# (no_data_found) for an unknown tenant or destination. Like any error they abort the
# caller's transaction unless the call is wrapped in a savepoint.
PUBLISH_FUNCTION = r"""
CREATE FUNCTION relay.publish(
    tenant_id text,
    topic text,
    data json,
    id text DEFAULT NULL,
    eligible_for_retry boolean DEFAULT true,
    metadata jsonb DEFAULT '{}',
    destination_id text DEFAULT NULL
) RETURNS relay.published
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    event_id text := COALESCE(publish.id, 'evt_' || replace(gen_random_uuid()::text, '-', ''));
    inserted bigint;
BEGIN
    IF publish.tenant_id IS NULL OR publish.tenant_id = '' THEN
        RAISE EXCEPTION 'relay.publish: tenant_id is required' USING ERRCODE = '22023';
    END IF;
    IF publish.topic IS NULL OR publish.topic = '' THEN
        RAISE EXCEPTION 'relay.publish: topic is required' USING ERRCODE = '22023';
    END IF;
    IF event_id = '' OR length(event_id) > 255 THEN
        RAISE EXCEPTION 'relay.publish: id must be 1 to 255 characters' USING ERRCODE = '22023';
    END IF;
    IF publish.data IS NULL OR json_typeof(publish.data) <> 'object' THEN
        RAISE EXCEPTION 'relay.publish: data must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF publish.metadata IS NULL OR jsonb_typeof(publish.metadata) <> 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(publish.metadata) m
                  WHERE jsonb_typeof(m.value) <> 'string') THEN
        RAISE EXCEPTION 'relay.publish: metadata must be a JSON object of strings'
            USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM relay.tenants t
                   WHERE t.id = publish.tenant_id AND t.deleted_at IS NULL) THEN
        RAISE EXCEPTION 'relay.publish: tenant % not found', quote_literal(publish.tenant_id)
            USING ERRCODE = 'P0002';
    END IF;
    IF publish.destination_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM relay.destinations d
        WHERE d.tenant_id = publish.tenant_id AND d.id = publish.destination_id
          AND d.deleted_at IS NULL) THEN
        RAISE EXCEPTION 'relay.publish: destination % not found for tenant %',
            quote_literal(publish.destination_id), quote_literal(publish.tenant_id)
            USING ERRCODE = 'P0002';
    END IF;

    INSERT INTO relay.events
        (tenant_id, id, topic, data, metadata, eligible_for_retry, destination_id, routed_at)
    VALUES (publish.tenant_id, event_id, publish.topic, publish.data, publish.metadata,
            COALESCE(publish.eligible_for_retry, true), publish.destination_id, NULL)
    ON CONFLICT (tenant_id, id) DO NOTHING
    RETURNING seq INTO inserted;

    IF inserted IS NOT NULL THEN
        -- Delivered on commit only: the router routes what committed, never a rollback.
        PERFORM pg_notify('relay_route', '');
    END IF;
    RETURN ROW(event_id, inserted IS NULL)::relay.published;
END
$$
"""

PUBLISH_COMMENT = """
COMMENT ON FUNCTION relay.publish(text, text, json, text, boolean, jsonb, text) IS
'Publish an event inside the caller''s transaction. Returns (id, duplicate). The event is
routed to destinations by relay after commit; see README "Publishing inside your own
transaction".'
"""


def upgrade() -> None:
    # Existing events were routed when written: they get the migration's time.
    op.add_column(
        "events",
        sa.Column("routed_at", sa.TIMESTAMP(timezone=True), server_default=sa.text("now()")),
        schema="relay",
    )
    op.create_index(
        "ix_events_unrouted",
        "events",
        ["seq"],
        schema="relay",
        postgresql_where=sa.text("routed_at IS NULL"),
    )
    op.execute(PUBLISHED_TYPE)
    op.execute(PUBLISH_FUNCTION)
    op.execute(PUBLISH_COMMENT)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS relay.publish(text, text, json, text, boolean, jsonb, text)"
    )
    op.execute("DROP TYPE IF EXISTS relay.published")
    op.drop_index("ix_events_unrouted", table_name="events", schema="relay")
    op.drop_column("events", "routed_at", schema="relay")
