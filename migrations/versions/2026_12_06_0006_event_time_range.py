"""events.time within years 1-9999 (UTC): what PostgreSQL stores and Python reads back

PostgreSQL's timestamptz reaches from 4713 BC to 294276 AD, Python's datetime from year 1
to 9999. An event published with "0001-01-01T00:00:00+15:59" (1 BC in UTC) or
"9999-12-31T23:59:59-15:00" (year 10000) was stored, and every read of it failed after
that: its claim batch, its history page. Publishing now refuses such a time (422, naming
`time`); this constraint makes the database refuse it from any other writer too.

Rows that earlier versions accepted are clamped to the nearest instant that can be read
(they could not be read at all before), so the constraint can be validated.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EARLIEST = "'0001-01-01 00:00:00+00'::timestamptz"
LATEST = "'9999-12-31 23:59:59.999999+00'::timestamptz"


def upgrade() -> None:
    # Both conditions read ix_events_time; only out-of-range rows are touched.
    op.execute(
        f"UPDATE relay.events SET time = LEAST(GREATEST(time, {EARLIEST}), {LATEST}) "
        f"WHERE time < {EARLIEST} OR time > {LATEST}"
    )
    # NOT VALID, then VALIDATE: the check of existing rows does not block writers.
    op.execute(
        "ALTER TABLE relay.events ADD CONSTRAINT ck_events_time_range "
        f"CHECK (time >= {EARLIEST} AND time <= {LATEST}) NOT VALID"
    )
    op.execute("ALTER TABLE relay.events VALIDATE CONSTRAINT ck_events_time_range")


def downgrade() -> None:
    op.execute("ALTER TABLE relay.events DROP CONSTRAINT ck_events_time_range")
