"""ordered delivery per key

- relay.destinations.ordering_key: the metadata key whose value orders an event's
  deliveries to this destination (NULL: no ordering); ordering_on_failure: what a key's
  head that finally fails does, 'block' (it stays at the head, pending, due never) or
  'skip' (it fails and the key goes on). A change of ordering_key moves the route version
  (publishers route with it).
- relay.deliveries.ordering_key: the key's value, written at publish (NULL: unordered),
  and ix_deliveries_ordering on the hot table: (destination, key, id) over rows that
  have one, for the claim's "is anything of this key before it?".

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUTED = (
    "OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.id IS DISTINCT FROM NEW.id"
    " OR OLD.topics IS DISTINCT FROM NEW.topics"
    " OR OLD.filter IS DISTINCT FROM NEW.filter"
    " OR OLD.disabled_at IS DISTINCT FROM NEW.disabled_at"
    " OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at"
)


def _route_trigger(condition: str) -> None:
    op.execute("DROP TRIGGER route_version_destinations_update ON relay.destinations")
    op.execute(
        "CREATE CONSTRAINT TRIGGER route_version_destinations_update AFTER UPDATE"
        " ON relay.destinations DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
        f" WHEN ({condition}) EXECUTE FUNCTION relay.bump_route_version()"
    )


def upgrade() -> None:
    op.add_column("destinations", sa.Column("ordering_key", sa.Text()), schema="relay")
    op.add_column(
        "destinations",
        sa.Column(
            "ordering_on_failure", sa.Text(), nullable=False, server_default=sa.text("'block'")
        ),
        schema="relay",
    )
    op.create_check_constraint(
        op.f("ck_destinations_ordering_on_failure"),
        "destinations",
        "ordering_on_failure IN ('block', 'skip')",
        schema="relay",
    )
    op.add_column("deliveries", sa.Column("ordering_key", sa.Text()), schema="relay")
    op.execute(
        "CREATE INDEX ix_deliveries_ordering ON relay.deliveries_active"
        " (tenant_id, destination_id, ordering_key, id) WHERE ordering_key IS NOT NULL"
    )
    _route_trigger(ROUTED + " OR OLD.ordering_key IS DISTINCT FROM NEW.ordering_key")


def downgrade() -> None:
    _route_trigger(ROUTED)
    op.execute("DROP INDEX relay.ix_deliveries_ordering")
    op.drop_column("deliveries", "ordering_key", schema="relay")
    op.drop_constraint(op.f("ck_destinations_ordering_on_failure"), "destinations", schema="relay")
    op.drop_column("destinations", "ordering_on_failure", schema="relay")
    op.drop_column("destinations", "ordering_key", schema="relay")
