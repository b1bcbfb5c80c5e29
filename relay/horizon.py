"""Watching PostgreSQL's xmin horizon: what holds it back, for how long, and saying so.

A snapshot held by any session (an idle REPEATABLE READ transaction, a long analytics
query, a backup), a replication slot or a forgotten prepared transaction keeps every dead
row younger than it in the tables, the outbox's included, and relay's queue slows
(docs/operations.md). Delivery still works, so this is a warning, never a failed health
check.

Every relay process samples it in a background loop (``housekeeping.horizon``), not
once per scrape: the query reads pg_stat_activity, and Prometheus, several dashboards and
the probes may all ask at once. /metrics, /healthz and the warning log line read the last
sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from relay.db import horizon
from relay.db.engine import is_connection_failure
from relay.db.horizon import Holder
from relay.metrics import HorizonCollector
from relay.supervise import Loop

log = logging.getLogger(__name__)

# Seconds between samples. The default warning threshold is 300 s: a holder is seen within
# a few percent of it.
SAMPLE_SECONDS = 15.0


class HorizonWatch:
    """The last sample, and whether it is above ``warn_after`` seconds (0: never)."""

    def __init__(
        self, engine: AsyncEngine, warn_after: float, collector: HorizonCollector | None = None
    ) -> None:
        self.engine = engine
        self.warn_after = warn_after
        # /metrics' gauges, given each sample.
        self.collector = collector
        # Oldest first; None before the first sample and after a failed one (stale
        # figures would be worse than none).
        self.holders: list[Holder] | None = None
        # The holder warned about, while the horizon is above the threshold.
        self.warning: Holder | None = None
        # When each holder PostgreSQL gives no time for was first seen holding its xid.
        self._first_seen: dict[tuple[Any, ...], float] = {}

    @property
    def oldest(self) -> Holder | None:
        return self.holders[0] if self.holders else None

    async def run(self, loop: Loop) -> None:
        while True:
            try:
                await self.sample()
                loop.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._publish(None)
                if is_connection_failure(exc):  # the other loops say so already
                    log.debug("xmin horizon not sampled: %s", exc)
                else:
                    log.warning("could not sample the xmin horizon: %s", exc)
            with loop.idle():
                await asyncio.sleep(SAMPLE_SECONDS)

    async def sample(self) -> list[Holder]:
        async with self.engine.connect() as conn:
            found = await horizon.holders(conn)
        holders = self._timed(found)
        self._publish(holders)
        self._judge()
        return holders

    def _publish(self, holders: list[Holder] | None) -> None:
        self.holders = holders
        if self.collector is not None:
            self.collector.holders = holders

    def _timed(self, found: Sequence[Holder]) -> list[Holder]:
        """Give a time to the holders PostgreSQL gives none (a slot; a session relay's
        role may not see): how long this process has seen it hold the same xid, a lower
        bound. Then oldest first again."""
        now = time.time()
        first_seen = {}
        timed = []
        for holder in found:
            if holder.age_seconds is None:
                key = (holder.kind, holder.pid, holder.name, holder.xid)
                first_seen[key] = self._first_seen.get(key, now)
                holder = replace(holder, age_seconds=now - first_seen[key])
            timed.append(holder)
        self._first_seen = first_seen
        return sorted(timed, key=lambda h: (-h.age_xids, -(h.age_seconds or 0.0)))

    def _judge(self) -> None:
        """Log once when the horizon crosses the threshold, and once when it is back."""
        oldest = self.oldest
        above = is_above(oldest, self.warn_after)
        if above and self.warning is None:
            assert oldest is not None
            log.warning("%s; %s", summary(oldest, self.warn_after), remedy(oldest))
        elif not above and self.warning is not None:
            log.info("the xmin horizon is back under %gs", self.warn_after)
        self.warning = oldest if above else None

    def health_warnings(self) -> list[dict[str, Any]]:
        """For /healthz, which anyone may read: who holds it, not what they run."""
        holder = self.warning
        if holder is None or self.holders is None:
            return []
        warning: dict[str, Any] = {
            "code": "xmin_horizon",
            "message": summary(holder, self.warn_after) + "; `relay stats` says more",
            "kind": holder.kind,
            "age_seconds": round(holder.age_seconds or 0.0, 1),
            "age_xids": holder.age_xids,
        }
        if holder.pid is not None:
            warning["pid"] = holder.pid
        warning[_NAME_KEYS[holder.kind]] = holder.name
        return [warning]


_NAME_KEYS = {
    "session": "application_name",
    "replication_slot": "slot_name",
    "prepared_transaction": "gid",
}


def is_above(holder: Holder | None, warn_after: float) -> bool:
    return (
        warn_after > 0
        and holder is not None
        and holder.age_seconds is not None
        and holder.age_seconds > warn_after
    )


def summary(holder: Holder, warn_after: float) -> str:
    """One line: how old the horizon is, and what holds it (no query text, no role)."""
    seconds = holder.age_seconds
    age = "an unknown time" if seconds is None else f"{seconds:.{1 if seconds < 10 else 0}f}s"
    return (
        f"the xmin horizon is {age} old ({holder.age_xids} transaction ids; warning at "
        f"{warn_after:g}s), held by {who(holder)}: dead rows cannot be removed meanwhile "
        "and the outbox slows"
    )


def who(holder: Holder) -> str:
    if holder.kind == "session":
        return f"session pid {holder.pid} (application_name {holder.name or ''!r})"
    if holder.kind == "replication_slot":
        return f"replication slot {holder.name!r} ({holder.state})"
    return f"prepared transaction {holder.name!r}"


def remedy(holder: Holder) -> str:
    """What an operator can do about it, with the details the log may carry."""
    if holder.kind == "session":
        query = " ".join((holder.query or "").split())[:120]
        return (
            f"user {holder.usename}, {holder.state or 'state hidden'}, "
            f"query {query!r}; if it should not run this long: "
            f"SELECT pg_terminate_backend({holder.pid}); see docs/operations.md"
        )
    if holder.kind == "replication_slot":
        return (
            "a standby's hot_standby_feedback or a lagging logical consumer holds it; "
            f"if the slot is unused: SELECT pg_drop_replication_slot({holder.name!r}); "
            "see docs/operations.md"
        )
    return (
        f"owner {holder.usename}; finish it with COMMIT PREPARED {holder.name!r} or "
        f"ROLLBACK PREPARED {holder.name!r}; see docs/operations.md"
    )
