"""Operator commands: `relay events show`, `relay replay`, `relay stats` (`relay prune` is
relay.retention).

Each takes an engine and a stream to write to, so the tests run them as the CLI does.
Long operations work in bounded batches and report progress after each one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from relay.db import horizon, ops
from relay.horizon import is_above, remedy, summary
from relay.supervise import Loop

log = logging.getLogger(__name__)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "  (none)\n"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, timedelta):
        return str(value).split(".")[0]
    return str(value)


async def show_event(engine: AsyncEngine, event_id: str, tenant_id: str | None, out: TextIO) -> int:
    async with engine.connect() as conn:
        stories = await ops.event_stories(conn, event_id, tenant_id)
    if not stories:
        out.write(f"no event {event_id!r}" + (f" for tenant {tenant_id!r}" if tenant_id else ""))
        out.write("\n")
        return 1
    for story in stories:
        e = story.event
        out.write(f"event {e['id']}  tenant {e['tenant_id']}  topic {e['topic'] or '-'}\n")
        out.write(f"  time {_cell(e['time'])}  eligible_for_retry {e['eligible_for_retry']}\n")
        out.write(f"  data {e['data'][:500]}\n")
        out.write("deliveries\n")
        out.write(
            _table(
                story.deliveries,
                ["destination_id", "status", "attempts", "next_attempt_at", "last_error"],
            )
        )
        out.write("attempts\n")
        out.write(
            _table(
                story.attempts,
                [
                    "attempted_at",
                    "destination_id",
                    "attempt_number",
                    "status",
                    "http_status",
                    "error_code",
                    "duration_ms",
                    "manual",
                ],
            )
        )
    return 0


async def replay(
    engine: AsyncEngine,
    selection: ops.ReplayFilter,
    out: TextIO,
    *,
    dry_run: bool = False,
    batch_size: int = 1000,
) -> int:
    """Make matching deliveries due again (as manual attempts); the number replayed."""
    async with engine.connect() as conn:
        total = await ops.replay_count(conn, selection)
    if dry_run:
        out.write(f"dry run: {total} deliveries would be replayed\n")
        return total
    done, after = 0, 0
    while True:
        async with engine.begin() as conn:
            ids, last = await ops.replay_batch(conn, selection, after=after, limit=batch_size)
        if last is None:
            break
        done += len(ids)
        after = last
        out.write(f"replayed {done}/{total}\n")
        out.flush()
    out.write(f"replayed {done} deliveries\n")
    return done


async def stats(engine: AsyncEngine, out: TextIO, *, warn_after: float = 0.0) -> None:
    """``warn_after``: database.xmin_horizon_warning_seconds, for the horizon's verdict."""
    async with engine.connect() as conn:
        backlog = await ops.backlog(conn)
        health = await ops.health(conn)
        control = await ops.control(conn)
        holders = await horizon.holders(conn)
    out.write("outbox backlog\n")
    out.write(_table(backlog, ["status", "deliveries", "due_now", "oldest_age", "expired_leases"]))
    _write_horizon(holders, warn_after, out)
    out.write("destinations\n")
    out.write(
        _table(
            health,
            [
                "tenant_id",
                "destination_id",
                "enabled",
                "consecutive_failures",
                "attempts_1h",
                "success_rate_1h",
                "pending",
                "oldest_pending_age",
                "disabled_reason",
            ],
        )
    )
    if control:
        out.write("delivery control: destinations slowed down or with ordered keys blocked\n")
        out.write(
            _table(
                control,
                [
                    "tenant_id",
                    "destination_id",
                    "throttle",
                    "throttled_until",
                    "blocked_keys",
                    "throttle_reason",
                ],
            )
        )


def _write_horizon(holders: list[horizon.Holder], warn_after: float, out: TextIO) -> None:
    """The oldest holders of the xmin horizon (relay/horizon.py), and the verdict."""
    out.write("xmin horizon: the oldest snapshots and transactions (dead rows wait for them)\n")
    rows = [
        {
            "kind": h.kind,
            "age": None if h.age_seconds is None else timedelta(seconds=h.age_seconds),
            "age_xids": h.age_xids,
            "pid": h.pid,
            "usename": h.usename,
            "name": h.name,
            "state": h.state,
            "since": h.since,
            "query": " ".join(h.query.split())[:60] if h.query else None,
        }
        for h in holders[:5]
    ]
    columns = ["kind", "age", "age_xids", "pid", "usename", "name", "state", "since", "query"]
    out.write(_table(rows, columns))
    oldest = holders[0] if holders else None
    if oldest is not None and is_above(oldest, warn_after):
        out.write(f"  warning: {summary(oldest, warn_after)}\n  {remedy(oldest)}\n")
    if any(h.kind == "session" and h.age_seconds is None for h in holders[:5]):
        out.write(
            "  (a session with no age belongs to a role whose transaction start relay's "
            "role may not see: GRANT pg_read_all_stats TO relay's role)\n"
        )


async def housekeeping_loop(engine: AsyncEngine, loop: Loop, interval: float = 60.0) -> None:
    """Run in dispatcher processes: end deliveries stranded on deleted destinations.
    (Retention is relay.retention's slices loop.)"""
    while True:
        try:
            async with engine.begin() as conn:
                ended = await ops.fail_deleted_destinations(conn)
            if ended:
                log.info("ended %d deliveries to deleted destinations", ended)
            loop.beat()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("housekeeping round failed: %s", exc)
        await asyncio.sleep(interval)
