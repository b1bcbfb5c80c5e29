"""the due index by destination: claims read each destination's queue from a cursor

A claim walked ix_deliveries_due (next_attempt_at, over pending rows) from its head.
Every claimed row leaves an entry there until vacuum removes it, and while any session
holds a snapshot vacuum removes none: claims slowed from 0.3 ms to 55 ms within four
minutes of one idle REPEATABLE READ transaction, and the dispatcher never caught up. The
index now leads with the destination, so a claim reads each destination's range from
just past the (next_attempt_at, id) of the last row it took there (relay/claiming.py),
past none of those entries.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.drop_index("ix_deliveries_due", table_name="deliveries", schema="relay")
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["tenant_id", "destination_id", "next_attempt_at", "id"],
        schema="relay",
        postgresql_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_due", table_name="deliveries", schema="relay")
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["next_attempt_at"],
        schema="relay",
        postgresql_where=PENDING,
    )
