"""delivery control: rate limits and in-flight caps that hold across dispatchers, and
adaptive backoff

- relay.tenants and relay.destinations get rate_limit_per_second, rate_limit_burst and
  max_in_flight (all NULL: no limit). A destination's own values win; a tenant's are the
  default for each of its destinations.
- relay.destinations gets throttle (1: full speed; less after 429, 503 and timeouts),
  throttled_until (nothing is claimed for it before then: Retry-After) and
  throttle_reason, written by the recorder with destination health.
- relay.destination_buckets: one token bucket per limited destination, read and written
  by the claim while it holds the destination's advisory lock (relay/db/outbox.py). One
  small row per destination, never one row for all of them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.TIMESTAMP(timezone=True)
LIMITS = ("rate_limit_per_second", "rate_limit_burst", "max_in_flight")


def _limit_columns(table: str) -> None:
    op.add_column(table, sa.Column("rate_limit_per_second", sa.Float()), schema="relay")
    op.add_column(table, sa.Column("rate_limit_burst", sa.Integer()), schema="relay")
    op.add_column(table, sa.Column("max_in_flight", sa.Integer()), schema="relay")
    op.create_check_constraint(
        op.f(f"ck_{table}_limits"),
        table,
        "(rate_limit_per_second IS NULL OR rate_limit_per_second > 0)"
        " AND (rate_limit_burst IS NULL OR rate_limit_burst >= 1)"
        " AND (max_in_flight IS NULL OR max_in_flight >= 1)",
        schema="relay",
    )


def upgrade() -> None:
    _limit_columns("tenants")
    _limit_columns("destinations")
    op.add_column(
        "destinations",
        sa.Column("throttle", sa.Float(), nullable=False, server_default=sa.text("1")),
        schema="relay",
    )
    op.add_column("destinations", sa.Column("throttled_until", TS), schema="relay")
    op.add_column("destinations", sa.Column("throttle_reason", sa.Text()), schema="relay")
    op.create_table(
        "destination_buckets",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("destination_id", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "destination_id"),
        schema="relay",
        # Updated at every claim of its destination: room on the page for HOT updates.
        postgresql_with={"fillfactor": "50"},
    )


def downgrade() -> None:
    op.drop_table("destination_buckets", schema="relay")
    for column in ("throttle", "throttled_until", "throttle_reason"):
        op.drop_column("destinations", column, schema="relay")
    for table in ("tenants", "destinations"):
        op.drop_constraint(op.f(f"ck_{table}_limits"), table, schema="relay")
        for column in LIMITS:
            op.drop_column(table, column, schema="relay")
