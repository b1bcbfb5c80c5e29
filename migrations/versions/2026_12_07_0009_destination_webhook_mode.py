"""a destination's webhook format may be unset: NULL follows delivery.webhook_mode

relay.destinations.signature_mode ('standard' or 'outpost') becomes nullable with no
default. NULL means the global delivery.webhook_mode (RELAY_WEBHOOK_MODE), which a
destination created through the API gets unless its config.webhook_mode says otherwise.
API destinations could not choose a format before, so their 'standard' was the default
and becomes NULL; the config file's destinations are written again at every start. The
column keeps its name (the API and the file call it webhook_mode) so that processes of
the previous version still read it during an upgrade.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "destinations",
        "signature_mode",
        existing_type=sa.Text(),
        nullable=True,
        server_default=None,
        schema="relay",
    )
    op.execute(
        "UPDATE relay.destinations SET signature_mode = NULL"
        " WHERE origin = 'api' AND signature_mode = 'standard'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE relay.destinations SET signature_mode = 'standard' WHERE signature_mode IS NULL"
    )
    op.alter_column(
        "destinations",
        "signature_mode",
        existing_type=sa.Text(),
        nullable=False,
        server_default="standard",
        schema="relay",
    )
