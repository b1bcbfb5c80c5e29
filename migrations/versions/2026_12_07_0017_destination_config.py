"""destination config and credentials

- relay.destinations.config and .credentials: the JSON objects of strings Outpost keeps
  for every destination type (rabbitmq's server_url and exchange, its username and
  password, ...), '{}' for webhooks. A webhook keeps its own columns (url,
  custom_headers, secret and its rotation, signature_mode), which relay's operator SQL
  and pages read; its config and credentials stay empty.
- url and secret may be NULL, for the other types only.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMPTY = sa.text("'{}'::jsonb")


def upgrade() -> None:
    for name in ("config", "credentials"):
        op.add_column(
            "destinations",
            sa.Column(name, JSONB(), nullable=False, server_default=EMPTY),
            schema="relay",
        )
    op.alter_column("destinations", "url", nullable=True, schema="relay")
    op.alter_column("destinations", "secret", nullable=True, schema="relay")
    op.create_check_constraint(
        op.f("ck_destinations_webhook_fields"),
        "destinations",
        "type <> 'webhook' OR (url IS NOT NULL AND secret IS NOT NULL)",
        schema="relay",
    )


def downgrade() -> None:
    # Destinations of other types cannot be kept by the schema before this one.
    op.execute("DELETE FROM relay.destinations WHERE type <> 'webhook'")
    op.drop_constraint(op.f("ck_destinations_webhook_fields"), "destinations", schema="relay")
    op.alter_column("destinations", "secret", nullable=False, schema="relay")
    op.alter_column("destinations", "url", nullable=False, schema="relay")
    op.drop_column("destinations", "credentials", schema="relay")
    op.drop_column("destinations", "config", schema="relay")
