"""History by time slice: slices made ahead of time, and dropped whole past retention.

Every relay process runs ``slices_loop`` (one at a time does the work). Each round it
makes sure slices exist well ahead of now: with no partition for a row's time, a publish
would fail. With retention configured, it then retires the slices whose end is older than
the retention age, oldest first:

1. close: under the revive lock, mark it closing and move the events that must outlive
   it (a delivery still active, or not routed yet) to relay.events_kept;
2. detach its three partitions CONCURRENTLY and drop them: no DELETE, no dead tuples;
3. forget the event keys of its events, in batches (idempotency lasts until then);
4. forget the slice, and the hourly counts of attempts (relay.attempt_hours) from before
   the oldest slice left: the metrics read the hours since from there, and the hours
   before from the attempts that are left (relay/db/aggregates.py).

Each step can be repeated, so a round cut short anywhere is finished by the next one.
Slices made ahead at another width (the migration's ten minutes, or before the retention
age changed) are remade at the width asked for while they are still empty.
Kept events go once past the age with nothing left to deliver. The planning here is pure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TextIO

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.config import RetentionSettings
from relay.db import slices as db
from relay.supervise import Loop

log = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)
# The narrowest slice. Narrower ones keep history closer to the age, but each slice is
# one more partition of every table, which each statement that cannot prune plans,
# locks and opens (one-minute slices for five minutes of retention made some 27
# partitions a table).
MIN_WIDTH = timedelta(minutes=5)
DAY = timedelta(days=1)
# Slices exist at least this far ahead (three slices, or this), so that relay may be down
# this long (all of its processes) before a write of relay.publish() from a producer's
# own SQL finds no partition for its time. Not more: every slice made ahead is one more
# partition for each statement that cannot prune to lock and plan.
MIN_AHEAD = timedelta(minutes=20)
LOWEST_SEQ = -(2**63) + 1  # one above the lowest bigint: batches start after low - 1


def slice_width(max_age: timedelta) -> timedelta:
    """An eighth of the retention age, within five minutes and a day: history is kept
    between max_age and max_age + width, in about ten partitions per table. Keeping all
    history (max_age 0): a day."""
    if max_age <= timedelta(0):
        return DAY
    minutes = round(max_age / MINUTE / 8)
    return min(max(minutes * MINUTE, MIN_WIDTH), DAY)


def ahead(width: timedelta) -> timedelta:
    return max(3 * width, MIN_AHEAD)


def floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def slices_to_make(
    last_end: datetime, now: datetime, width: timedelta
) -> list[tuple[datetime, datetime]]:
    """The slices to add after the one ending at last_end, up to ahead(width) past now.
    After a long stop (every relay process down past the last slice), one slice spans
    the gap up to the next width past now."""
    made: list[tuple[datetime, datetime]] = []
    start = last_end
    if start + width <= now:
        end = floor_minute(now) + width
        made.append((start, end))
        start = end
    while start < now + ahead(width):
        made.append((start, start + width))
        start += width
    return made


def misfits(all_slices: list[db.Slice], database_now: datetime, width: timedelta) -> list[db.Slice]:
    """Slices made ahead at another width than asked (the migration's, or before the
    retention age changed), newest first, to be remade: all those wholly in the future,
    when one of them misfits."""
    future = [s for s in all_slices if not s.legacy and s.starts_at > database_now + MINUTE]
    if all(s.ends_at - s.starts_at == width for s in future):
        return []
    return future[::-1]


def seq_at(at: datetime) -> int:
    """relay.seq_at(): the first events.seq of the minute at."""
    return (int(at.timestamp()) // 60) << 32


def seq_range(s: db.Slice) -> tuple[int, int]:
    """The slice's range of events.seq (the legacy slice starts at the lowest)."""
    low = LOWEST_SEQ if s.legacy else seq_at(s.starts_at)
    return low, seq_at(s.ends_at)


def partitions(s: db.Slice) -> list[str]:
    """Its partitions, named as relay.create_slice() (and migration 0008) name them."""
    suffix = "legacy" if s.legacy else s.starts_at.astimezone(UTC).strftime("%Y%m%d_%H%M")
    return [f"events_{suffix}", f"deliveries_{suffix}", f"attempts_{suffix}"]


def expired(
    all_slices: list[db.Slice], now: datetime, max_age: timedelta, database_now: datetime
) -> list[db.Slice]:
    """Slices whose whole span is older than max_age, oldest first; never one that the
    database's clock has not passed the end of (rows may still be written to it)."""
    if max_age <= timedelta(0):
        return []
    cutoff = min(now - max_age, database_now)
    return [s for s in all_slices if s.ends_at <= cutoff]


async def _drop(conn: asyncpg.Connection, names: list[str]) -> None:
    # Waiting here for older transactions (a long report, a pinned snapshot) blocks no
    # one: it is not a statement timeout's business.
    await conn.execute("SET statement_timeout = 0")
    try:
        for name in names:
            await db.detach_and_drop(conn, name)
    finally:
        await conn.execute("RESET statement_timeout")


async def _forget_keys(conn: asyncpg.Connection, low: int, high: int, batch: int) -> int:
    """A slice's event keys, batch by batch, each followed by a pause as long as it took:
    the deletes of a large slice are spread out rather than taking a core from delivery."""
    total, after = 0, low - 1
    while True:
        started = time.monotonic()
        count, last = await db.forget_keys(conn, after, high, batch)
        total += count
        if last is None or count < batch:
            return total
        after = last
        await asyncio.sleep(time.monotonic() - started)


@dataclass
class Round:
    made: int = 0
    # Slices made ahead at another width, dropped to be made again at the right one.
    remade: int = 0
    retired: list[db.Slice] = field(default_factory=list)
    kept_events: int = 0
    forgotten_keys: int = 0
    # Rows of relay.attempt_hours from before the oldest slice left.
    forgotten_hours: int = 0
    pruned_kept: int = 0


async def maintain(
    engine: AsyncEngine,
    settings: RetentionSettings,
    *,
    max_age: timedelta | None = None,
    retire: bool = True,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Round | None:
    """One round of slice maintenance; None if another process is doing it. Without
    retire, only slices ahead are made (at start, which must not wait on a detach). now:
    the time to judge ages by (tests move it forward). progress: called with (slices
    dropped, slices to drop) after each."""
    age = timedelta(days=settings.max_age_days) if max_age is None else max_age
    done = Round()
    async with engine.connect() as wrapper:
        # asyncpg's own connection: transactions where wanted, and the detach outside one.
        conn = await db.raw(wrapper)
        if not await conn.fetchval(db.TRY_MAINTAIN):
            return None
        try:
            current = await db.slices(conn)
            # Partitions go by the database's clock, which writes the rows.
            database_now = await conn.fetchval("SELECT clock_timestamp()")
            now = database_now if now is None else now
            # The configured age sets the width (a `relay prune` with another age must not
            # remake the slices ahead to its own).
            width = slice_width(timedelta(days=settings.max_age_days))
            # Newest first, so that those left are contiguous; only while they are empty
            # (nothing writes ahead of its clock), and not at start (a detach may wait).
            for s in misfits(current, database_now, width) if retire else []:
                names = partitions(s)
                if not await db.is_empty(conn, names):
                    break
                await _drop(conn, names)
                await db.forget(conn, s.starts_at)
                current.remove(s)
                done.remade += 1
            if current:
                made = slices_to_make(current[-1].ends_at, database_now, width)
                for starts_at, ends_at in made:
                    await db.create(conn, starts_at, ends_at)
                    done.made += 1
            doomed = expired(current, now, age, database_now) if retire else []
            for s in doomed:
                low, high = seq_range(s)
                done.kept_events += await db.close(conn, s.starts_at, low, high)
                await _drop(conn, partitions(s))
                done.forgotten_keys += await _forget_keys(conn, low, high, settings.batch_size)
                await db.forget(conn, s.starts_at)
                done.retired.append(s)
                done.forgotten_hours += await db.forget_hours(conn)
                if progress is not None:
                    progress(len(done.retired), len(doomed))
            while retire and age > timedelta(0):
                pruned = await db.prune_kept(conn, now - age, settings.batch_size)
                done.pruned_kept += pruned
                if pruned < settings.batch_size:
                    break
        finally:
            await conn.fetchval(db.END_MAINTAIN)
    return done


def describe(done: Round) -> str:
    spans = ", ".join(
        f"{'(legacy)' if s.legacy else s.starts_at.isoformat()} to {s.ends_at.isoformat()}"
        for s in done.retired
    )
    return (
        f"dropped {len(done.retired)} slices of history{': ' + spans if spans else ''}; "
        f"kept {done.kept_events} events with deliveries still active, "
        f"forgot {done.forgotten_keys} event keys, removed {done.pruned_kept} kept events; "
        f"made {done.made} slices ahead"
    )


async def prune(
    engine: AsyncEngine, settings: RetentionSettings, max_age: timedelta, out: TextIO
) -> Round | None:
    """`relay prune`: one round now, with the given age, showing progress per slice."""
    from relay.terminal import Progress

    bar: Progress | None = None

    def progress(dropped: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(out, "dropped", total, "slices")
        bar.update(dropped)

    try:
        done = await maintain(engine, settings, max_age=max_age, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if done is None:
        out.write("another process is maintaining history slices; try again later\n")
    else:
        out.write(describe(done) + "\n")
    return done


async def slices_loop(
    engine: AsyncEngine, settings: RetentionSettings, loop: Loop, interval: float = 60.0
) -> None:
    """In every relay process: slices ahead, and retention when configured."""
    while True:
        try:
            with loop.idle():
                done = await maintain(engine, settings)
            if done is not None and (done.retired or done.pruned_kept):
                log.info("retention: %s", describe(done))
            loop.beat()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("history slice maintenance failed: %s", exc)
        await asyncio.sleep(min(interval, settings.interval_seconds))
