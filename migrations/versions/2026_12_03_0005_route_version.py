"""publish hot path: no foreign-key checks per row; a route version for route caches

Foreign keys dropped: deliveries -> events, deliveries -> destinations, attempts ->
deliveries. relay writes these rows itself (a delivery's event_seq comes from the event
inserted by the same statement; an attempt belongs to the delivery its transaction
updates), so the checks guarded only against a bug in relay or a row written by hand, at
a price on every row: an index probe and a row lock on the parent. The lock on a shared
destination row made concurrent publishers create MultiXacts; and a check planned while
its parent table was still small (a new install) kept a sequential scan, so each publish
got slower as events grew until autovacuum analysed the table. The relationships stay
documented in docs/sql.md, and the indexes that serve them stay.

relay.route_version: one row whose version goes up, at commit, with every change to
tenants or destinations that routing reads. A publisher caches routes under the version
it read them with, and its write inserts nothing when the version has moved since (it
then reads the routes again). Bumped by deferred constraint triggers, so the row is
locked only from the commit of the change to its end: two changes in flight cannot
deadlock on it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUMP_FUNCTION = """
CREATE FUNCTION relay.bump_route_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE relay.route_version SET version = version + 1;
    RETURN NULL;
END $$
"""

# What routing reads (relay/db/publishing.py TENANT_ROUTES); other updates, such as the
# dispatcher's consecutive_failures, leave the version alone.
TRIGGERS = [
    ("route_version_tenants", "INSERT OR DELETE", "tenants", None),
    (
        "route_version_tenants_update",
        "UPDATE",
        "tenants",
        "OLD.id IS DISTINCT FROM NEW.id OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at",
    ),
    ("route_version_destinations", "INSERT OR DELETE", "destinations", None),
    (
        "route_version_destinations_update",
        "UPDATE",
        "destinations",
        "OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.id IS DISTINCT FROM NEW.id"
        " OR OLD.topics IS DISTINCT FROM NEW.topics"
        " OR OLD.filter IS DISTINCT FROM NEW.filter"
        " OR OLD.disabled_at IS DISTINCT FROM NEW.disabled_at"
        " OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at",
    ),
]

FOREIGN_KEYS = [
    ("fk_deliveries_event_seq_events", "deliveries", ["event_seq"], "events", ["seq"]),
    (
        "fk_deliveries_destination",
        "deliveries",
        ["tenant_id", "destination_id"],
        "destinations",
        ["tenant_id", "id"],
    ),
    ("fk_attempts_delivery_id_deliveries", "attempts", ["delivery_id"], "deliveries", ["id"]),
]


def upgrade() -> None:
    for name, table, _, _, _ in FOREIGN_KEYS:
        op.drop_constraint(name, table, schema="relay", type_="foreignkey")
    op.create_table(
        "route_version",
        sa.Column("id", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id", name=op.f("ck_route_version_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_route_version")),
        schema="relay",
    )
    op.execute("INSERT INTO relay.route_version (id, version) VALUES (true, 1)")
    op.execute(BUMP_FUNCTION)
    for name, events, table, when in TRIGGERS:
        condition = f"WHEN ({when})" if when else ""
        op.execute(
            f"CREATE CONSTRAINT TRIGGER {name} AFTER {events} ON relay.{table}"
            f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW {condition}"
            " EXECUTE FUNCTION relay.bump_route_version()"
        )


def downgrade() -> None:
    for name, _, table, _ in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON relay.{table}")
    op.execute("DROP FUNCTION relay.bump_route_version()")
    op.drop_table("route_version", schema="relay")
    for name, table, columns, parent, parent_columns in FOREIGN_KEYS:
        op.create_foreign_key(
            name,
            table,
            parent,
            columns,
            parent_columns,
            source_schema="relay",
            referent_schema="relay",
        )
