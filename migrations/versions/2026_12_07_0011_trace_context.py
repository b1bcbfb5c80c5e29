"""trace context: events keep their publish span's, attempts their span's trace id

- relay.events.trace_context: the W3C traceparent of the span that published the event
  (relay/tracing.py), NULL when tracing was off. A dispatcher makes each attempt's span a
  child of it (and links to it), in whichever process sends it.
- relay.attempts.trace_id: the attempt span's trace id (32 hex digits), NULL when the
  dispatcher was not tracing; indexed where set, so "the attempts of trace X" is a probe
  and an untraced attempt costs no index entry.
- relay.delivery_log gains trace_id as its last column (its other columns unchanged).

Both columns are nullable with no default: adding them rewrites nothing. Building the
partial index reads each slice of attempts once (every row is NULL, so it writes
nothing), under a lock that holds attempt writes for that long.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DELIVERY_LOG = """
CREATE OR REPLACE VIEW relay.delivery_log AS
SELECT a.id               AS attempt_id,
       a.started_at       AS attempted_at,
       a.tenant_id,
       a.destination_id,
       e.id               AS event_id,
       e.topic,
       a.number           AS attempt_number,
       a.status,
       a.http_status,
       a.error_code,
       a.error_detail,
       a.duration_ms,
       a.manual,
       a.delivery_id,
       a.event_seq{trace_id}
FROM relay.attempts a
JOIN relay.events e ON e.seq = a.event_seq
"""


def upgrade() -> None:
    op.execute("ALTER TABLE relay.events ADD COLUMN trace_context text")
    op.execute("ALTER TABLE relay.attempts ADD COLUMN trace_id text")
    op.execute(
        "CREATE INDEX ix_attempts_trace_id ON relay.attempts (trace_id) WHERE trace_id IS NOT NULL"
    )
    op.execute(DELIVERY_LOG.format(trace_id=",\n       a.trace_id"))


def downgrade() -> None:
    # A view cannot lose a column by CREATE OR REPLACE: made again as it was.
    op.execute("DROP VIEW relay.delivery_log")
    op.execute(DELIVERY_LOG.replace("CREATE OR REPLACE", "CREATE").format(trace_id=""))
    op.execute("DROP INDEX relay.ix_attempts_trace_id")
    op.execute("ALTER TABLE relay.attempts DROP COLUMN trace_id")
    op.execute("ALTER TABLE relay.events DROP COLUMN trace_context")
