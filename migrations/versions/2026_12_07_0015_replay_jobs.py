"""the console's replays in the database: relay.replay_jobs

- relay.replay_jobs: one row per replay started from the operator console, with what it
  selects, how many deliveries it counted, how many it has replayed (written in each
  batch's own transaction, so it is exact even after a crash), when it last made
  progress, when it finished and why it stopped. Any relay process shows the progress
  (with server.workers > 1, the progress page used to answer 404 from the processes that
  did not start it). Finished rows go after 30 days.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replay_jobs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("selection", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("after_attempt", sa.BigInteger(), nullable=False),
        sa.Column(
            "started_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.TIMESTAMP(timezone=True)),
        sa.Column("error", sa.Text()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replay_jobs")),
        schema="relay",
    )


def downgrade() -> None:
    op.drop_table("replay_jobs", schema="relay")
