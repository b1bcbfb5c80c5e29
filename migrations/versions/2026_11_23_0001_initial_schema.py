"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 18:34:38.977045
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), server_default="", nullable=False),
        sa.Column("data", postgresql.JSON(astext_type=sa.Text()), nullable=False),
        sa.Column("body", postgresql.JSON(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "eligible_for_retry", sa.Boolean(), server_default=sa.text("true"), nullable=False
        ),
        sa.Column("destination_id", sa.Text(), nullable=True),
        sa.Column(
            "time",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_events_tenant_id_id")),
        schema="relay",
    )
    op.create_index(
        "ix_events_tenant_id_time",
        "events",
        ["tenant_id", sa.literal_column("time DESC"), sa.literal_column("seq DESC")],
        unique=False,
        schema="relay",
    )
    op.create_index(
        "ix_events_time",
        "events",
        [sa.literal_column("time DESC"), sa.literal_column("seq DESC")],
        unique=False,
        schema="relay",
    )
    op.create_index("ix_events_id", "events", ["id"], unique=False, schema="relay")
    op.create_table(
        "tenants",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("origin", sa.Text(), server_default="api", nullable=False),
        sa.Column(
            "pods",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("deleted_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.CheckConstraint("origin IN ('config', 'api')", name=op.f("ck_tenants_origin")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        schema="relay",
    )
    op.create_index(
        "ix_tenants_pods", "tenants", ["pods"], unique=False, schema="relay", postgresql_using="gin"
    )
    op.create_table(
        "destinations",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), server_default="webhook", nullable=False),
        sa.Column("topics", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column(
            "custom_headers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_secret_invalid_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("signature_mode", sa.Text(), server_default="standard", nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "delivery_metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("filter", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("origin", sa.Text(), server_default="api", nullable=False),
        sa.Column("disabled_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("deleted_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.CheckConstraint("origin IN ('config', 'api')", name=op.f("ck_destinations_origin")),
        sa.CheckConstraint(
            "signature_mode IN ('standard', 'outpost')", name=op.f("ck_destinations_signature_mode")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["relay.tenants.id"], name=op.f("fk_destinations_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_destinations")),
        schema="relay",
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("destination_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("claim_token", sa.UUID(), nullable=True),
        sa.Column("lease_expires_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("manual", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'delivering', 'delivered', 'failed')",
            name=op.f("ck_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["event_seq"], ["relay.events.seq"], name=op.f("fk_deliveries_event_seq_events")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "destination_id"],
            ["relay.destinations.tenant_id", "relay.destinations.id"],
            name="fk_deliveries_destination",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint(
            "event_seq", "destination_id", name=op.f("uq_deliveries_event_seq_destination_id")
        ),
        schema="relay",
    )
    op.create_index(
        "ix_deliveries_destination",
        "deliveries",
        ["tenant_id", "destination_id", "status"],
        unique=False,
        schema="relay",
    )
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["next_attempt_at"],
        unique=False,
        schema="relay",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_deliveries_lease",
        "deliveries",
        ["lease_expires_at"],
        unique=False,
        schema="relay",
        postgresql_where=sa.text("status = 'delivering'"),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("destination_id", sa.Text(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("response_headers", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("manual", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("started_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("status IN ('success', 'failed')", name=op.f("ck_attempts_status")),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["relay.deliveries.id"],
            name=op.f("fk_attempts_delivery_id_deliveries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
        schema="relay",
    )
    op.create_index(
        "ix_attempts_delivery_id", "attempts", ["delivery_id"], unique=False, schema="relay"
    )
    op.create_index(
        "ix_attempts_event_seq", "attempts", ["event_seq"], unique=False, schema="relay"
    )
    op.create_index(
        "ix_attempts_started",
        "attempts",
        [sa.literal_column("started_at DESC"), sa.literal_column("id DESC")],
        unique=False,
        schema="relay",
    )
    op.create_index(
        "ix_attempts_tenant_id_started",
        "attempts",
        ["tenant_id", sa.literal_column("started_at DESC"), sa.literal_column("id DESC")],
        unique=False,
        schema="relay",
    )


def downgrade() -> None:
    op.drop_index("ix_attempts_tenant_id_started", table_name="attempts", schema="relay")
    op.drop_index("ix_attempts_started", table_name="attempts", schema="relay")
    op.drop_index("ix_attempts_event_seq", table_name="attempts", schema="relay")
    op.drop_index("ix_attempts_delivery_id", table_name="attempts", schema="relay")
    op.drop_table("attempts", schema="relay")
    op.drop_index(
        "ix_deliveries_lease",
        table_name="deliveries",
        schema="relay",
        postgresql_where=sa.text("status = 'delivering'"),
    )
    op.drop_index(
        "ix_deliveries_due",
        table_name="deliveries",
        schema="relay",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_deliveries_destination", table_name="deliveries", schema="relay")
    op.drop_table("deliveries", schema="relay")
    op.drop_table("destinations", schema="relay")
    op.drop_index("ix_tenants_pods", table_name="tenants", schema="relay", postgresql_using="gin")
    op.drop_table("tenants", schema="relay")
    op.drop_index("ix_events_id", table_name="events", schema="relay")
    op.drop_index("ix_events_time", table_name="events", schema="relay")
    op.drop_index("ix_events_tenant_id_time", table_name="events", schema="relay")
    op.drop_table("events", schema="relay")
