"""attempts keep their destination's type

Deleting a destination keeps its row (deleted_at), type included, so the metrics found an
attempt's type by joining relay.destinations. But a deleted destination's id can be used
again (the API takes the row over; the config file may change a destination's type), and
the row then told the new type for the old attempts too (and a row deleted outright, by
hand, told none: webhook).

- relay.attempts.destination_type: written when the destination's row stops telling the
  type its attempts were made for, by a trigger on relay.destinations (AFTER UPDATE OF
  type, AFTER DELETE, per row): that destination's attempts without one get the old type.
  NULL otherwise: the row's type, as before. Nothing that records attempts writes it, so
  delivery pays nothing; a type change pays one UPDATE of that destination's attempts.
- relay.attempt_hours.destination_type: the same, '' for NULL (a column of the key), so
  the rollup and the attempts say the same; the trigger's UPDATE moves the counts in the
  rollup through its trigger (migration 0014), in the same transaction. Readers take
  COALESCE(recorded, the destination's type, 'webhook') (relay/db/aggregates.py).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _attempt_hours() -> ModuleType:
    """Migration 0014, whose rollup functions this one extends by a column."""
    [path] = Path(__file__).parent.glob("*_0014_attempt_hours.py")
    spec = importlib.util.spec_from_file_location("relay_migration_0014", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OLD_KEY = ("tenant_id", "hour", "destination_id", "status", "code", "shard")
KEY = ("tenant_id", "hour", "destination_id", "destination_type", "status", "code", "shard")


# What 0014's rollup SQL becomes, keyed by the attempts' destination_type too.
WITH_TYPE = (
    (
        "(tenant_id, hour, destination_id, status, code, shard",
        "(tenant_id, hour, destination_id, destination_type, status, code, shard",
    ),
    (
        "a.destination_id, a.status,",
        "a.destination_id, COALESCE(a.destination_type, ''), a.status,",
    ),
    ("GROUP BY 1, 2, 3, 4, 5\n", "GROUP BY 1, 2, 3, 4, 5, 6\n"),
    ("ORDER BY 1, 2, 3, 4, 5\n", "ORDER BY 1, 2, 3, 4, 5, 6\n"),
)


def _with_type(sql: str) -> str:
    for old, new in WITH_TYPE:
        assert old in sql, old
        sql = sql.replace(old, new)
    return sql.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


KEEP_TYPES = """
CREATE FUNCTION relay.keep_attempt_types() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE relay.attempts SET destination_type = OLD.type
    WHERE tenant_id = OLD.tenant_id AND destination_id = OLD.id
      AND destination_type IS NULL;
    RETURN NULL;
END $$
"""
TRIGGERS = {
    "keep_attempt_types_update": "AFTER UPDATE OF type ON relay.destinations FOR EACH ROW"
    " WHEN (OLD.type IS DISTINCT FROM NEW.type)",
    "keep_attempt_types_delete": "AFTER DELETE ON relay.destinations FOR EACH ROW",
}


def upgrade() -> None:
    previous = _attempt_hours()
    # Writers of attempts wait from here (ACCESS EXCLUSIVE) to the commit, so none is
    # counted by the old function into the new key.
    op.add_column("attempts", sa.Column("destination_type", sa.Text()), schema="relay")
    op.add_column(
        "attempt_hours",
        sa.Column("destination_type", sa.Text(), nullable=False, server_default=""),
        schema="relay",
    )
    op.drop_constraint("pk_attempt_hours", "attempt_hours", schema="relay", type_="primary")
    op.create_primary_key("pk_attempt_hours", "attempt_hours", list(KEY), schema="relay")
    op.execute(_with_type(previous.FUNCTION))
    op.execute(_with_type(previous.RECOUNT))
    op.execute(KEEP_TYPES)
    for name, when in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION relay.keep_attempt_types()")


def downgrade() -> None:
    previous = _attempt_hours()
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON relay.destinations")
    op.execute("DROP FUNCTION relay.keep_attempt_types()")
    op.drop_column("attempts", "destination_type", schema="relay")
    for source in (previous.FUNCTION, previous.RECOUNT):
        op.execute(source.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    # Rows that differed by type alone would collide in the old key: counted again.
    op.execute("DELETE FROM relay.attempt_hours")
    op.drop_constraint("pk_attempt_hours", "attempt_hours", schema="relay", type_="primary")
    op.drop_column("attempt_hours", "destination_type", schema="relay")
    op.create_primary_key("pk_attempt_hours", "attempt_hours", list(OLD_KEY), schema="relay")
    op.execute("SELECT relay.recount_attempt_hours()")
