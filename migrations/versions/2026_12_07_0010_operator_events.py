"""operator events: the relay.operator_events view

Operator events (relay/opevents.py) are events of the internal tenant relay/operator,
delivered to its destinations (the operator sinks) through the outbox like any other:
they need no table of their own. The view reads them as operators ask about them: the
topic, the tenant and destination the event is about, and the payload.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPERATOR_EVENTS_VIEW = """
CREATE VIEW relay.operator_events AS
SELECT e.id AS event_id,
       e.topic,
       e.time,
       e.data->>'tenant_id' AS tenant_id,
       e.data->'data'->'destination'->>'id' AS destination_id,
       e.data->'data' AS data,
       e.seq AS event_seq
FROM relay.events e
WHERE e.tenant_id = 'relay/operator'
"""


def upgrade() -> None:
    op.execute(OPERATOR_EVENTS_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW relay.operator_events")
