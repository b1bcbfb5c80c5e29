"""portal links work once: relay.portal_links_used

- relay.portal_links_used: the id (``jti``) of every portal link opened, until the link
  would have expired anyway (rows past that go as links are opened). A link opened a
  second time, by anyone, is refused: a link that leaked (a browser history, a proxy's log,
  a forwarded e-mail) no longer opens a session once its user has opened it.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "portal_links_used",
        sa.Column("jti", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_portal_links_used")),
        schema="relay",
    )


def downgrade() -> None:
    op.drop_table("portal_links_used", schema="relay")
