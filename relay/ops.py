"""Operator commands: `relay events show`, `relay replay`, `relay stats` (`relay prune` is
relay.retention).

Each takes an engine and a stream to write to, so the tests run them as the CLI does.
Long operations work in bounded batches and report progress after each one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TextIO

from rich.console import Console
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from relay import terminal
from relay.db import horizon, ops
from relay.horizon import is_above, remedy, summary
from relay.supervise import Loop

log = logging.getLogger(__name__)


async def show_event(engine: AsyncEngine, event_id: str, tenant_id: str | None, out: TextIO) -> int:
    async with engine.connect() as conn:
        stories = await ops.event_stories(conn, event_id, tenant_id)
    screen = terminal.console(out)
    if not stories:
        screen.print(
            f"no event {event_id!r}" + (f" for tenant {tenant_id!r}" if tenant_id else ""),
            markup=False,
        )
        return 1
    for story in stories:
        e = story.event
        head = Text()
        head.append("event ", style="bold").append(e["id"], style="bold cyan")
        head.append("  tenant ").append(e["tenant_id"], style="cyan")
        head.append("  topic ").append(e["topic"] or "-", style="cyan")
        screen.print(head)
        line = Text("  time ").append(terminal.cell(e["time"]))
        line.append("  eligible_for_retry ").append(terminal.cell(e["eligible_for_retry"]))
        screen.print(line)
        screen.print(Text("  data ").append(e["data"][:500]))
        screen.print(Text("deliveries", style="bold"))
        screen.print(
            terminal.table(
                story.deliveries,
                ["destination_id", "status", "attempts", "next_attempt_at", "last_error"],
            )
        )
        screen.print(Text("attempts", style="bold"))
        screen.print(
            terminal.table(
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
    done = 0
    progress = terminal.Progress(out, "replayed", total, "deliveries")
    try:
        async for done, _ in replay_batches(engine, selection, batch_size=batch_size, total=total):
            progress.update(done)
    finally:
        progress.close()
    out.write(f"replayed {done} deliveries\n")
    return done


async def replay_batches(
    engine: AsyncEngine,
    selection: ops.ReplayFilter,
    *,
    batch_size: int = 1000,
    total: int | None = None,
    job: str | None = None,
) -> AsyncIterator[tuple[int, int]]:
    """Replay in batches, each its own transaction; yield (done, total) after each one
    (the CLI prints it, the console shows it). job: a relay.replay_jobs row whose count
    each batch's transaction moves on."""
    if total is None:
        async with engine.connect() as conn:
            total = await ops.replay_count(conn, selection)
    done, after = 0, 0
    while True:
        async with engine.begin() as conn:
            ids, last = await ops.replay_batch(conn, selection, after=after, limit=batch_size)
            if job is not None and ids:
                await ops.replay_job_progress(conn, job, done + len(ids))
        if last is None:
            return
        done += len(ids)
        after = last
        yield done, total


async def stats(engine: AsyncEngine, out: TextIO, *, warn_after: float = 0.0) -> None:
    """``warn_after``: database.xmin_horizon_warning_seconds, for the horizon's verdict."""
    async with engine.connect() as conn:
        backlog = await ops.backlog(conn)
        health = await ops.health(conn)
        control = await ops.control(conn)
        holders = await horizon.holders(conn)
    screen = terminal.console(out)
    screen.print(Text("outbox backlog", style="bold"))
    screen.print(
        terminal.table(backlog, ["status", "deliveries", "due_now", "oldest_age", "expired_leases"])
    )
    _write_horizon(holders, warn_after, screen)
    screen.print(Text("destinations", style="bold"))
    screen.print(
        terminal.table(
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
        screen.print(
            Text("delivery control", style="bold").append(
                ": destinations slowed down or with ordered keys blocked", style="none"
            )
        )
        screen.print(
            terminal.table(
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


def _write_horizon(holders: list[horizon.Holder], warn_after: float, screen: Console) -> None:
    """The oldest holders of the xmin horizon (relay/horizon.py), and the verdict."""
    screen.print(
        Text("xmin horizon", style="bold").append(
            ": the oldest snapshots and transactions (dead rows wait for them)", style="none"
        )
    )
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
    screen.print(terminal.table(rows, columns))
    oldest = holders[0] if holders else None
    if oldest is not None and is_above(oldest, warn_after):
        screen.print(
            Text(f"  warning: {summary(oldest, warn_after)}", style="yellow"), markup=False
        )
        screen.print(f"  {remedy(oldest)}", markup=False)
    if any(h.kind == "session" and h.age_seconds is None for h in holders[:5]):
        screen.print(
            "  (a session with no age belongs to a role whose transaction start relay's "
            "role may not see: GRANT pg_read_all_stats TO relay's role)",
            markup=False,
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
