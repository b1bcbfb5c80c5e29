"""indexes found missing by bench/history_scale.py at 10M attempts / 1M pending

- events(created_at): retention goes by when relay stored an event, not the producer's
  `time` (a backfilled event must not be pruned, with its idempotency key, at once).
- events(tenant_id, topic, time, seq): the API's event listing filtered by topic.
- deliveries active rows, covering what the backlog and destination health read, so those
  are index-only scans instead of a sequential scan or a heap fetch per pending row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("status IN ('pending', 'delivering')")


def upgrade() -> None:
    op.create_index("ix_events_created_at", "events", ["created_at"], schema="relay")
    op.create_index(
        "ix_events_tenant_id_topic_time",
        "events",
        ["tenant_id", "topic", sa.literal_column("time DESC"), sa.literal_column("seq DESC")],
        schema="relay",
    )
    op.drop_index("ix_deliveries_active", table_name="deliveries", schema="relay")
    op.create_index(
        "ix_deliveries_active",
        "deliveries",
        ["status", "created_at"],
        schema="relay",
        postgresql_where=ACTIVE,
        postgresql_include=["next_attempt_at", "lease_expires_at"],
    )
    op.create_index(
        "ix_deliveries_active_destination",
        "deliveries",
        ["tenant_id", "destination_id", "created_at"],
        schema="relay",
        postgresql_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_active_destination", table_name="deliveries", schema="relay")
    op.drop_index("ix_deliveries_active", table_name="deliveries", schema="relay")
    op.create_index(
        "ix_deliveries_active",
        "deliveries",
        ["status", "created_at"],
        schema="relay",
        postgresql_where=ACTIVE,
    )
    op.drop_index("ix_events_tenant_id_topic_time", table_name="events", schema="relay")
    op.drop_index("ix_events_created_at", table_name="events", schema="relay")
