"""history views and the indexes behind them

The views are relay's supported SQL interface (docs/sql.md); tables may change behind
them. Each later change to a view is a new migration with CREATE OR REPLACE VIEW.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("outbox_backlog", "destination_health", "delivery_state", "delivery_log")


def upgrade() -> None:
    op.create_index(
        "ix_attempts_destination_started",
        "attempts",
        ["tenant_id", "destination_id", sa.literal_column("started_at DESC")],
        schema="relay",
    )
    op.create_index(
        "ix_deliveries_active",
        "deliveries",
        ["status", "created_at"],
        schema="relay",
        postgresql_where=sa.text("status IN ('pending', 'delivering')"),
    )
    op.create_index(
        "ix_deliveries_failed",
        "deliveries",
        ["updated_at"],
        schema="relay",
        postgresql_where=sa.text("status = 'failed'"),
    )
    op.execute("""
-- One row per delivery attempt, with its event, tenant and destination.
CREATE VIEW relay.delivery_log AS
SELECT a.id               AS attempt_id,
       a.started_at       AS attempted_at,
       a.tenant_id,
       a.destination_id,
       e.id               AS event_id,
       e.topic,
       a.number           AS attempt_number,
       a.status,
       a.http_status,
       a.error_code,
       a.error_detail,
       a.duration_ms,
       a.manual,
       a.delivery_id,
       a.event_seq
FROM relay.attempts a
JOIN relay.events e ON e.seq = a.event_seq
""")

    op.execute("""
-- The current state of each event x destination (one row per outbox row).
CREATE VIEW relay.delivery_state AS
SELECT d.id               AS delivery_id,
       d.tenant_id,
       e.id               AS event_id,
       e.topic,
       e.time             AS event_time,
       d.destination_id,
       d.status,
       d.attempts,
       CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
       d.last_error,
       d.lease_expires_at,
       d.created_at,
       d.updated_at,
       d.event_seq
FROM relay.deliveries d
JOIN relay.events e ON e.seq = d.event_seq
""")

    op.execute("""
-- Health of each destination: recent success rates, failure streak, backlog.
CREATE VIEW relay.destination_health AS
SELECT t.tenant_id,
       t.id                                   AS destination_id,
       t.url,
       t.disabled_at IS NULL AND t.deleted_at IS NULL AS enabled,
       t.disabled_at,
       t.disabled_reason,
       t.deleted_at,
       t.consecutive_failures,
       s.last_success_at,
       f.last_failure_at,
       w.attempts_1h,
       round(w.successes_1h::numeric / NULLIF(w.attempts_1h, 0), 4)   AS success_rate_1h,
       w.attempts_24h,
       round(w.successes_24h::numeric / NULLIF(w.attempts_24h, 0), 4) AS success_rate_24h,
       p.pending,
       p.oldest_pending_at,
       now() - p.oldest_pending_at            AS oldest_pending_age
FROM relay.destinations t
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE a.started_at > now() - interval '1 hour') AS attempts_1h,
           count(*) FILTER (WHERE a.started_at > now() - interval '1 hour'
                              AND a.status = 'success')                 AS successes_1h,
           count(*)                                                     AS attempts_24h,
           count(*) FILTER (WHERE a.status = 'success')                 AS successes_24h
    FROM relay.attempts a
    WHERE a.tenant_id = t.tenant_id AND a.destination_id = t.id
      AND a.started_at > now() - interval '24 hours'
) w
LEFT JOIN LATERAL (
    SELECT a.started_at AS last_success_at FROM relay.attempts a
    WHERE a.tenant_id = t.tenant_id AND a.destination_id = t.id AND a.status = 'success'
    ORDER BY a.started_at DESC LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT a.started_at AS last_failure_at FROM relay.attempts a
    WHERE a.tenant_id = t.tenant_id AND a.destination_id = t.id AND a.status = 'failed'
    ORDER BY a.started_at DESC LIMIT 1
) f ON true
CROSS JOIN LATERAL (
    SELECT count(*) AS pending, min(d.created_at) AS oldest_pending_at
    FROM relay.deliveries d
    WHERE d.tenant_id = t.tenant_id AND d.destination_id = t.id
      AND d.status IN ('pending', 'delivering')
) p
""")

    op.execute("""
-- The outbox's backlog: what is waiting or in flight, by status.
CREATE VIEW relay.outbox_backlog AS
SELECT d.status,
       count(*)                                              AS deliveries,
       count(*) FILTER (WHERE d.status = 'pending' AND d.next_attempt_at <= now()) AS due_now,
       min(d.created_at)                                     AS oldest_created_at,
       now() - min(d.created_at)                             AS oldest_age,
       count(*) FILTER (WHERE d.status = 'delivering' AND d.lease_expires_at < now())
                                                             AS expired_leases
FROM relay.deliveries d
WHERE d.status IN ('pending', 'delivering')
GROUP BY d.status
""")


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS relay.{view}")
    op.drop_index("ix_deliveries_failed", table_name="deliveries", schema="relay")
    op.drop_index("ix_deliveries_active", table_name="deliveries", schema="relay")
    op.drop_index("ix_attempts_destination_started", table_name="attempts", schema="relay")
