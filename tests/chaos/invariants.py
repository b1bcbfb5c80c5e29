"""What must hold at the end of every scenario, checked from relay's tables (relay.events,
relay.deliveries, relay.attempts; docs/sql.md) and from what the receivers saw, after a
bounded drain:

1. every acknowledged event reached every healthy destination it was routed to, with a
   valid Standard Webhooks signature;
2. no delivery is left ``delivering`` once relay has stopped, and none to a healthy
   destination is pending and due;
3. no event reached one destination twice unless a failed try of that delivery
   (``failed``, ``lease_expired``, ``interrupted``) was recorded before the repeat;
4. producers got no 5xx but 503 (with Retry-After) while the database was down (or its
   sessions were being terminated), give or take a moment around the stop and the start;
   and no request went unanswered except while the API process was down;
5. the API process's peak RSS (VmHWM) stayed under ``API_RSS_BOUND``;
6. no try is recorded twice (two identical attempt rows);
7. every Outpost-API acknowledgement named every destination its topic routes to (a
   202 with no ``destination_ids`` is how relay, as Outpost, answers a publish for an
   unknown tenant: here, a silently dropped event).

Recovery time: from the end of the disruption (or the producers' last request, when
there is none) until every event acknowledged before that moment had reached every
healthy destination it was routed to.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from tests.chaos.harness import Harness, Published, wait_for

MiB = 1024 * 1024
# relay's API process runs at about 90 MiB under these loads (Python, aiohttp,
# SQLAlchemy, pydantic), a `serve` process, which also delivers, a little more. Room for
# load, not for a leak or for a request whose size multiplies in memory (one pod array
# of 14,000 items took an API to 245 MiB).
API_RSS_BOUND = 160 * MiB
# 503s may come this long before a database stop and after its start.
BEFORE = 1.0
AFTER = 3.0
# Arrival times (receiver) and attempt start times (relay) come from the same clock.
CLOCK_SLACK = 0.05


@dataclass
class Report:
    scenario: str
    acknowledged: int = 0
    expected: int = 0  # (event, healthy destination) pairs
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicates_after_failure: int = 0
    # The failure recorded before each duplicate (its error code), or "no failure recorded".
    duplicate_causes: Counter[str] = field(default_factory=Counter)
    fivexx: Counter[int] = field(default_factory=Counter)
    recovery: float | None = None
    api_peak_rss: int = 0
    loop: str = "?"
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        recovery = "never" if self.recovery is None else f"{self.recovery:.1f}s"
        fivexx = dict(sorted(self.fivexx.items())) or "none"
        verdict = f"{len(self.violations)} violations" if self.violations else "ok"
        return (
            f"{self.scenario}: acknowledged={self.acknowledged} "
            f"delivered={self.delivered}/{self.expected} lost={self.lost} "
            f"duplicates={self.duplicates} ({self.duplicates_after_failure} after a recorded "
            f"failure) 5xx={fivexx} recovery={recovery} "
            f"api_peak_rss={self.api_peak_rss / MiB:.0f}MiB loop={self.loop} "
            f"time={self.seconds:.0f}s: {verdict}"
        )

    def details(self) -> str:
        lines = [self.summary()]
        lines += [f"  VIOLATION {v}" for v in self.violations]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _examples(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _in(windows: list[tuple[float, float]], at: float) -> bool:
    return any(start - BEFORE <= at <= end + AFTER for start, end in windows)


def pairs(h: Harness, acked: dict[str, Published]) -> list[tuple[str, str]]:
    """(destination, event id) for every healthy destination an acknowledged event goes to."""
    healthy = [r for r in h.receivers if r.healthy]
    return [(r.name, e.event_id) for e in acked.values() for r in healthy if r.routes(e.topic)]


def undelivered(h: Harness, acked: dict[str, Published]) -> list[tuple[str, str]]:
    by_name = {r.name: r for r in h.receivers}
    return [(d, e) for d, e in pairs(h, acked) if e not in by_name[d].first_ok]


def misrouted(h: Harness, acked: dict[str, Published]) -> list[str]:
    """(7): Outpost-API answers whose destination_ids are not the destinations routing
    the topic (every destination is enabled in these scenarios)."""
    wrong = []
    for e in acked.values():
        if e.destination_ids is None:
            continue
        expected = {r.name for r in h.receivers if r.routes(e.topic)}
        if set(e.destination_ids) != expected:
            wrong.append(f"{e.event_id}: {sorted(e.destination_ids)} not {sorted(expected)}")
    if not wrong:
        return []
    return [f"{len(wrong)} publishes acknowledged with the wrong destinations: {_examples(wrong)}"]


async def conclude(
    h: Harness,
    *,
    started: float,
    production_end: float,
    disruption_end: float | None = None,
    drain: float = 60.0,
    extra_acked: dict[str, Published] | None = None,
    live: Callable[[], Awaitable[list[str]]] | None = None,
    violations: list[str] | None = None,
    notes: list[str] | None = None,
) -> Report:
    """Drain, check while relay runs (``live``), stop relay (SIGTERM), check the rest."""
    report = Report(h.name, violations=list(violations or []), notes=list(notes or []))
    report.notes += h.notes
    acked = h.acked() | (extra_acked or {})
    report.acknowledged = len(acked)
    expected = pairs(h, acked)
    report.expected = len(expected)

    await _drain(h, acked, drain)
    await asyncio.sleep(1.0)  # a late duplicate would arrive now
    if live is not None:
        report.violations += await live()
    codes = await h.stop_all()
    for name, code in codes.items():
        if code not in (0, None):
            report.violations.append(f"{name} exited {code} after SIGTERM (expected 0)")

    for process in h.api_processes():
        report.api_peak_rss = max(report.api_peak_rss, process.peak_rss)
    loops = {p.loop for p in h.processes}
    report.loop = "/".join(sorted(loops))
    if report.api_peak_rss > API_RSS_BOUND:
        report.violations.append(
            f"API peak RSS {report.api_peak_rss / MiB:.0f} MiB is over the bound of "
            f"{API_RSS_BOUND / MiB:.0f} MiB"
        )

    conn = await asyncpg.connect(h.database_url, timeout=30)
    try:
        recorded = await _check_database(h, conn, acked, report)
    finally:
        await conn.close()
    _check_receivers(h, report)
    _check_producers(h, report)
    report.notes += log_notes(h)

    report.violations += misrouted(h, acked)
    lost = undelivered(h, acked)
    report.delivered = report.expected - len(lost)
    report.lost = len(lost)
    if lost:
        report.violations.append(
            f"{len(lost)} acknowledged (event, healthy destination) pairs never delivered: "
            + _examples([f"{d}/{e}" for d, e in lost])
        )
    report.recovery = _recovery(h, acked, disruption_end or production_end, recorded, report)
    report.seconds = time.time() - started
    return report


async def _drain(h: Harness, acked: dict[str, Published], timeout: float) -> None:
    """Until every delivery owed to a healthy destination has reached it and is recorded
    delivered (rows a killed dispatcher held come back only when their lease runs out),
    or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    if not await wait_for(lambda: not undelivered(h, acked), timeout, step=0.2):
        return
    owed = set(pairs(h, acked))
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(h.database_url, timeout=10)
            try:
                rows = await conn.fetch(
                    "SELECT d.destination_id, e.id FROM relay.deliveries d "
                    "JOIN relay.events e ON e.seq = d.event_seq WHERE d.status = 'delivered'"
                )
            finally:
                await conn.close()
            if owed <= {(r[0], r[1]) for r in rows}:
                return
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass
        await asyncio.sleep(0.5)


def _recovery(
    h: Harness,
    acked: dict[str, Published],
    since: float,
    recorded: dict[tuple[str, str], float],
    report: Report,
) -> float | None:
    """Until the last delivery owed at ``since`` both reached its receiver and was
    recorded delivered (a try lost with a killed dispatcher is recorded only after its
    lease runs out, though the receiver may have it)."""
    by_name = {r.name: r for r in h.receivers}
    before = {k: e for k, e in acked.items() if e.acked_at <= since}
    last, slowest = since, ""
    for dest, event_id in pairs(h, before):
        arrived = by_name[dest].first_ok.get(event_id)
        done = recorded.get((dest, event_id))
        if arrived is None or done is None:
            return None
        if max(arrived, done) > last:
            last = max(arrived, done)
            slowest = (
                f"last to recover: {dest}/{event_id}, acknowledged at "
                f"+{before[event_id].acked_at - h.t0:.1f}s, arrived +{arrived - h.t0:.1f}s, "
                f"recorded delivered +{done - h.t0:.1f}s"
            )
    if slowest:
        report.notes.append(slowest)
    return last - since


async def _check_database(
    h: Harness, conn: asyncpg.Connection, acked: dict[str, Published], report: Report
) -> dict[tuple[str, str], float]:
    """Check (2), (3), (6) and that acknowledged events are stored; when each delivered
    delivery was recorded delivered."""
    stored = {r["id"] for r in await conn.fetch("SELECT id FROM relay.events")}
    missing = sorted(set(acked) - stored)
    if missing:
        report.violations.append(
            f"{len(missing)} acknowledged events are not in relay.events: {_examples(missing)}"
        )

    deliveries = await conn.fetch(
        """
        SELECT d.id, e.id AS event_id, d.destination_id, d.status, d.attempts,
               d.status = 'pending' AND d.next_attempt_at <= now() AS due,
               extract(epoch FROM d.updated_at)::float8 AS updated
        FROM relay.deliveries d JOIN relay.events e ON e.seq = d.event_seq
        """
    )
    statuses = Counter(r["status"] for r in deliveries)
    report.notes.append(f"deliveries by status: {dict(sorted(statuses.items()))}")
    delivering = [
        f"{r['destination_id']}/{r['event_id']}" for r in deliveries if r["status"] == "delivering"
    ]
    if delivering:
        report.violations.append(
            f"{len(delivering)} deliveries left 'delivering' after relay stopped: "
            + _examples(delivering)
        )
    healthy = {r.name for r in h.receivers if r.healthy}
    due = [
        f"{r['destination_id']}/{r['event_id']}"
        for r in deliveries
        if r["due"] and r["destination_id"] in healthy
    ]
    if due:
        report.violations.append(
            f"{len(due)} deliveries to healthy destinations pending and due after the drain: "
            + _examples(due)
        )

    attempts = await conn.fetch(
        """
        SELECT a.delivery_id, a.number, a.status, a.error_code, a.http_status,
               a.duration_ms, extract(epoch FROM a.started_at)::float8 AS started
        FROM relay.attempts a
        """
    )
    outcomes = Counter(
        r["error_code"] or (f"http_{r['http_status']}" if r["status"] == "failed" else "success")
        for r in attempts
    )
    report.notes.append(f"attempts by outcome: {dict(sorted(outcomes.items()))}")
    twice = Counter(
        (r["delivery_id"], r["number"], r["status"], r["error_code"], r["started"])
        for r in attempts
    )
    repeated = [key for key, n in twice.items() if n > 1]
    if repeated:
        report.violations.append(
            f"{len(repeated)} tries recorded twice (identical attempt rows; delivery, number, "
            f"status, error): {_examples([str(k[:4]) for k in repeated])}"
        )

    # (3) Each repeat of an event at a destination needs a failed try recorded before it.
    key_of = {(r["destination_id"], r["event_id"]): r["id"] for r in deliveries}
    failures: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for r in attempts:
        if r["status"] == "failed":
            code = r["error_code"] or f"http_{r['http_status']}"
            failures[r["delivery_id"]].append((r["started"], code))
    unexplained: list[str] = []
    for receiver in h.receivers:
        by_event: dict[str, list[float]] = defaultdict(list)
        answered_ok: dict[str, float] = {}
        for a in receiver.arrivals:
            if not a.valid:
                continue
            by_event[a.event_id].append(a.at)
            if a.status == 200:
                answered_ok.setdefault(a.event_id, a.at)
        for event_id, times in by_event.items():
            times.sort()
            failed = sorted(failures.get(key_of.get((receiver.name, event_id), -1), []))
            for k in range(1, len(times)):
                # The try behind the previous arrival started before it, and failed.
                before = [code for started, code in failed if started <= times[k - 1] + CLOCK_SLACK]
                explained = len(before) >= k
                first_ok = answered_ok.get(event_id)
                if first_ok is not None and times[k] > first_ok:
                    report.duplicates += 1
                    if explained:
                        report.duplicates_after_failure += 1
                        report.duplicate_causes[before[-1]] += 1
                    else:
                        report.duplicate_causes["no failure recorded"] += 1
                if not explained:
                    unexplained.append(f"{receiver.name}/{event_id} (arrival {k + 1})")
    if unexplained:
        report.violations.append(
            f"{len(unexplained)} repeated arrivals with no failed try recorded before them: "
            + _examples(unexplained)
        )
    return {
        (r["destination_id"], r["event_id"]): r["updated"]
        for r in deliveries
        if r["status"] == "delivered"
    }


def _check_receivers(h: Harness, report: Report) -> None:
    invalid = [f"{r.name}/{a.event_id}" for r in h.receivers for a in r.arrivals if not a.valid]
    if invalid:
        report.violations.append(
            f"{len(invalid)} deliveries with an invalid signature: {_examples(invalid)}"
        )


def _check_producers(h: Harness, report: Report) -> None:
    db_down = [
        (w.start, w.end) for w in h.windows if w.what in ("database down", "sessions terminated")
    ]
    api_down = [(w.start, w.end) for w in h.windows if w.what == "api down"]
    bad: list[str] = []
    unanswered: list[str] = []
    for answer in h.answers():
        if answer.status is None:
            if not _in(api_down, answer.at):
                unanswered.append(f"{answer.event_id} ({answer.error})")
            continue
        if answer.status < 500:
            continue
        report.fivexx[answer.status] += 1
        when = f"{answer.event_id} at +{answer.at - h.t0:.1f}s"
        if answer.status != 503:
            bad.append(f"{answer.status} for {when}")
        elif not _in(db_down, answer.at):
            bad.append(f"503 while the database was up, for {when}")
        elif not (answer.retry_after or "").isdigit():
            bad.append(f"503 without Retry-After, for {when}")
    if bad:
        report.violations.append(f"{len(bad)} bad 5xx answers to producers: {_examples(bad)}")
    if unanswered:
        report.violations.append(
            f"{len(unanswered)} publish requests got no answer while the API was up: "
            + _examples(unanswered, 3)
        )
    refused = [f"{a.event_id}: {a.status}" for p in h.producers for a in p.refused]
    if refused:
        report.violations.append(
            f"{len(refused)} normal publish requests refused: {_examples(refused)}"
        )
    gave_up = [name for p in h.producers for name in p.gave_up]
    if gave_up:
        report.violations.append(
            f"{len(gave_up)} publish requests never acknowledged, though retried: "
            + _examples(gave_up)
        )
    for window in h.windows:
        report.notes.append(
            f"{window.what} from +{window.start - h.t0:.1f}s to +{window.end - h.t0:.1f}s"
        )


def log_notes(h: Harness) -> list[str]:
    """Each relay process's errors and warnings, counted, with the first few distinct."""
    notes = []
    for process in h.processes:
        lines = process.log.splitlines()
        counted = Counter(
            level for line in lines for level in ("ERROR", "WARNING", "Traceback") if level in line
        )
        if not counted:
            continue
        distinct: dict[str, None] = {}
        for line in lines:
            if " ERROR " in line or " WARNING " in line:
                distinct.setdefault(line.split(" ", 2)[-1][:220], None)
        shown = "; ".join(list(distinct)[:4])
        notes.append(f"{process.name} log: {dict(counted)}: {shown}")
    return notes
