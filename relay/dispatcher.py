"""The dispatcher: wait (wake | poll | stop) -> claim -> deliver -> record.

- Claims commit before any HTTP call; a claim carries a token and a lease, and an outcome
  is written only while the token still matches (see db/outbox.py). While this process
  works on a delivery it keeps extending the lease; when a process dies, its leases run
  out and any dispatcher's lease loop returns the rows to pending, with a
  ``lease_expired`` attempt row each.
- Claims read each destination's queue from a cursor, so rows claimed before (dead row
  versions a held snapshot keeps) are never walked again; which destinations, how many
  rows of each and from where is relay/claiming.py. LISTEN/NOTIFY is a hint that work
  arrived (it names the destination); a search every poll interval is the truth. A
  retry also arms a local timer, so a short retry delay is not rounded up to the next
  poll.
- Isolation: at most ``per_destination_concurrency`` requests in flight to any one
  destination, so a hanging receiver holds its own slots and no one else's, and at most
  ``concurrency`` deliveries held (claimed, not yet finished) per process. Both caps are
  per dispatcher process. Tenants share the process's slots (relay/claiming.py): past
  its equal share, a tenant leaves the last eighth to the others.
- Quiet destinations do not wait for the claim loop. Behind a backlog the claim loop is
  always in a claim (claims of the busy destinations' freed slots, one after another),
  and a fresh event of a destination that holds nothing here waited for the claim under
  way to end, then for its own. An announcement that finds the claim loop in a statement
  hands such a destination to a second claim, on a connection of its own, that runs at
  once (``_quiet_loop``); the two never ask for the same destination, and the
  process's caps count the rows both asked for.
- Claiming ahead: a busy destination gets up to half its cap again claimed ahead of its
  requests (``next in line``), sent as soon as a slot frees. Without it, a freed slot
  waits for the next claim to be planned, run and committed, and behind a backlog that
  wait, not the receiver, set the rate: 64 slots of two destinations turned over every
  ~30 ms (2,000 deliveries/s) while the receiver answered in a third of that, and a
  claim that slowed when the machine got busy slowed delivery with it (issue 19). A row
  next in line is ``delivering`` in the table, under our lease; it is given back untried
  (no attempt row, its count of attempts undone) if its destination is disabled first, or
  the dispatcher stops.
- Outcomes are written in batches by one recorder task, so a delivery costs a share of
  one transaction instead of one of its own. Destination health (consecutive failures,
  410 Gone, auto-disable) is updated in the same transaction, and the operator events the
  batch causes are written in it too (relay/opevents.py).
- Every loop survives the database going away: it logs, waits and tries again. The
  loops run under a Supervisor (relay/supervise.py): a loop that crashes is logged with
  its traceback at once and started again, and health reports a loop that crashed or
  stopped making progress.
- A row that cannot be read fails a whole claim; it is found and quarantined alone:
  failed, with an ``unprocessable`` attempt row, while its neighbours are delivered.
- Stopping: no more claims, in-flight deliveries get a grace period, the rest go back to
  pending with an ``interrupted`` attempt row each, and every outcome we have is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.claiming import SWEEP_SECONDS, Claims, Destination, Take, ask_again_in
from relay.config import DeliverySettings
from relay.db import outbox
from relay.db.engine import connect_raw, is_connection_failure
from relay.delivery.base import BLOCKED_ADDRESS, FORMAT_ERROR, INTERNAL_ERROR, Outcome
from relay.delivery.pool import Deliverer
from relay.groups import DispatchGroup
from relay.metrics import Metrics, attempt_outcome
from relay.retry import RetryPolicy, next_delay
from relay.supervise import Loop, Supervisor
from relay.tracing import Tracing

log = logging.getLogger(__name__)

RECORD_BATCH = 500


def ahead_of(cap: int) -> int:
    """Rows claimed ahead for a destination with this cap: half again (none at cap 1,
    where a row waiting would also wait out every failure's judgement in order)."""
    return cap // 2


# A batch that fails this many times for a reason other than a lost connection is
# written one outcome at a time, so one unwritable row cannot hold up the others.
SPLIT_AFTER_FAILURES = 3


# Failures no retry can change: the SSRF guard refuses the destination's address, or the
# destination cannot make a message of the event (an S3 key template that gives no key),
# until its configuration changes. Retrying them on the schedule only delays the verdict;
# the delivery fails at once, and a replay sends it once the configuration is fixed.
PERMANENT_ERRORS = frozenset({BLOCKED_ADDRESS, FORMAT_ERROR})


def decide(claimed: outbox.Claimed, outcome: Outcome, policy: RetryPolicy) -> outbox.Recorded:
    """The delivery's next state after this attempt. Pure (jitter aside: see retry.py)."""
    if outcome.success:
        next_status, delay = "delivered", 0.0
    elif outcome.error_code in PERMANENT_ERRORS:
        next_status, delay = "failed", 0.0
    else:
        retry_in = next_delay(
            policy,
            claimed.attempt,
            eligible_for_retry=claimed.eligible_for_retry,
            retry_after=outcome.retry_after,
        )
        next_status, delay = ("failed", 0.0) if retry_in is None else ("pending", retry_in)
    if next_status == "failed" and claimed.ordering_key is not None and claimed.ordering_blocks:
        # The head of an ordered key that blocks on failure: it stays pending, never due,
        # and holds its key until an operator retries it (docs/sql.md, ordered delivery).
        next_status, delay = "pending", math.inf
    return outbox.Recorded(
        claimed=claimed,
        attempt_status="success" if outcome.success else "failed",
        http_status=outcome.http_status,
        error_code=outcome.error_code,
        error_detail=outcome.error_detail,
        response_body=outcome.response_body,
        response_headers=outcome.response_headers,
        duration_ms=outcome.duration_ms,
        started_at=outcome.started_at,
        next_status=next_status,
        delay_seconds=delay,
        retry_after=outcome.retry_after,
        disable_reason=outcome.disable_reason,
    )


@dataclass
class DispatcherStats:
    claimed: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    released_expired: int = 0
    released_on_stop: int = 0
    # Rows a claim had stamped with our token though its answer was lost, taken back.
    taken_back: int = 0

    def __str__(self) -> str:
        return (
            f"claimed={self.claimed} delivered={self.delivered} "
            f"failed_attempts={self.failed_attempts} released_expired={self.released_expired} "
            f"released_on_stop={self.released_on_stop} taken_back={self.taken_back}"
        )


class Dispatcher:
    def __init__(
        self,
        engine: AsyncEngine,
        database_url: str,
        settings: DeliverySettings,
        metrics: Metrics | None = None,
        after_record: outbox.AfterRecord | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.engine = engine
        # Called in each recording transaction: operator events (relay/db/operator_events.py).
        self.after_record = after_record
        self.metrics = metrics
        # Spans for attempts (relay/tracing.py); None: no tracing work at all.
        self.tracing = tracing
        self.database_url = database_url
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings.retry)
        # Every destination type's delivery: publishers, their connections, the session.
        self.delivery = Deliverer(settings)
        self.token = uuid.uuid4()
        self.stats = DispatcherStats()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # Claimed and not yet recorded or released: the rows whose lease we keep alive.
        self._held: dict[int, outbox.Claimed] = {}
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        # Deliveries whose try the shutdown cut short, to hand back in one statement.
        self._interrupted: list[int] = []
        # Held per destination (in flight, or next in line for a slot).
        self._per_destination: Counter[tuple[str, str]] = Counter()
        # Requests in flight per destination: the slots.
        self._sending: dict[Destination, asyncio.Semaphore] = {}
        # Destinations this process saw disabled: their rows next in line go back unsent.
        self._disabled: set[Destination] = set()
        # Destinations that answered 429, 503 or timed out: paused until (loop time).
        self._paused: dict[Destination, float] = {}
        # Judgements written: wakes rows next in line that wait for one (see _turn).
        self._judged = asyncio.Event()
        self._unsent: list[outbox.Claimed] = []
        self._giving_back: asyncio.Task[None] | None = None
        # Deliveries finished since the last claim, and how many wake the claim loop.
        self._freed = 0
        self._claim_threshold = max(
            1,
            min(settings.batch_size, settings.concurrency, settings.per_destination_concurrency)
            // 4,
        )
        # Failures whose effect on destination health is not written yet: their destination
        # gets no new claims until it is (a 410 disables it "at once", and auto-disable
        # stops at its threshold instead of a few tries past it).
        self._unjudged: Counter[tuple[str, str]] = Counter()
        self._outcomes: asyncio.Queue[outbox.Recorded] = asyncio.Queue()
        # The batch the recorder is writing: kept until written, so a recorder that
        # crashes and is restarted writes it again (attempt rows are idempotent).
        self._recording: list[outbox.Recorded] = []
        # Retries falling due, and destinations to ask again: (when, destination, whether
        # rows fall due then), a heap.
        self._wake_times: list[tuple[float, Destination, bool]] = []
        self._timer: asyncio.Handle | None = None
        # When the armed timer fires. Kept here: uvloop's call_at returns a plain Handle,
        # with no when(), for a time less than a millisecond away.
        self._timer_due: float | None = None
        self.supervisor = Supervisor("dispatcher")
        # The claim loop and the recorder each keep a connection of their own (outside the
        # pool): their statements are the hot path.
        self._claim_conn: asyncpg.Connection | None = None
        self._record_conn: asyncpg.Connection | None = None
        self.listening = False
        # How many times a LISTEN connection was (re)established.
        self.listen_connections = 0
        # Rows quarantined because they could not be read back from a claim.
        self.quarantined = 0
        # A claim failed with its connection: it may have committed all the same.
        self._claim_in_doubt = False
        # What the next claim asks for, and when to search for due work (polling is the
        # truth) and to forget every cursor (relay/claiming.py).
        cap = settings.per_destination_concurrency
        self._claims = Claims(per_destination=cap + ahead_of(cap), concurrency=settings.concurrency)
        # Whose rows this process claims (relay/groups.py); grouped destinations this
        # dispatcher of no group took over, each logged once while it does.
        self.group = DispatchGroup.of(
            settings.group, settings.groups, settings.group_takeover_seconds
        )
        self._taken_over: set[Destination] = set()
        self._plan: list[Take] = []
        # The destinations of the claim loop's statement under way (none for a search),
        # or None between statements.
        self._reading: frozenset[Destination] | None = None
        # Quiet destinations announced meanwhile, for the quiet claim (_quiet_loop), and
        # the destinations of its statement under way.
        self._quiet: set[Destination] = set()
        self._quiet_reading: frozenset[Destination] = frozenset()
        self._quiet_wake = asyncio.Event()
        self._quiet_conn: asyncpg.Connection | None = None
        # Held by the quiet claim's statement: looking for rows claimed and not held
        # (after a claim failed) must not see the rows of a claim under way.
        self._quiet_lock = asyncio.Lock()
        # Rows the statements under way asked for: held as far as the caps are concerned.
        self._asked: Counter[Destination] = Counter()
        # Destinations under delivery control (rate limits, caps held by all processes,
        # adaptive backoff), each with its rate now and its burst: as the last search
        # found them.
        self._controlled: dict[Destination, tuple[float | None, int | None]] = {}
        self._search_at = 0.0
        self._sweep_at = 0.0

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.delivery.start()
        # Stall bounds. A claim loop turns at least every poll interval. Outcomes must be
        # written, and leases renewed, well within a lease: past it, another dispatcher
        # sends the delivery again.
        lease = self.settings.lease_seconds
        s = self.supervisor
        s.start("claim", self._claim_loop, stall_after=self.settings.poll_interval_seconds * 5 + 30)
        s.start("quiet", self._quiet_loop, stall_after=self.settings.poll_interval_seconds * 5 + 30)
        s.start("record", self._record_loop, stall_after=max(lease / 2, 1.0))
        s.start("lease", self._lease_loop, stall_after=max(lease / 2, 1.0))
        # NOTIFY is only a hint (polling is the truth): a lost LISTEN is not a stall.
        s.start("listen", self._listen_loop)

    async def stop(self) -> None:
        """Stop claiming, let in-flight deliveries finish within the grace period,
        give back what did not finish (each with an ``interrupted`` attempt row), and
        write every outcome we have."""
        self.supervisor.draining = True
        self._stopping.set()
        self._wake.set()
        self._quiet_wake.set()
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.supervisor.task("claim")
        with contextlib.suppress(asyncio.CancelledError):
            await self.supervisor.task("quiet")
        pending = list(self._in_flight.values())
        if pending:
            log.info(
                "waiting up to %ss for %d in-flight deliveries",
                self.settings.shutdown_grace_seconds,
                len(pending),
            )
            _, late = await asyncio.wait(pending, timeout=self.settings.shutdown_grace_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if self._interrupted:
                await self._release_interrupted(self._interrupted)
        if self._giving_back is not None:
            await self._giving_back
        # Everything that finished is queued; drain the recorder before stopping it. The
        # lease loop keeps running meanwhile, so the rows stay ours until written.
        try:
            await asyncio.wait_for(
                self._outcomes.join(), timeout=max(self.settings.shutdown_grace_seconds, 5.0)
            )
        except TimeoutError:
            log.warning(
                "could not record %d outcomes before stopping; their leases will expire "
                "and they will be sent again",
                self._outcomes.qsize(),
            )
        await self.supervisor.stop("record", "lease", "listen")
        for conn in (self._claim_conn, self._quiet_conn, self._record_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=2)
        self._claim_conn = self._quiet_conn = self._record_conn = None
        await self.delivery.close()
        log.info("dispatcher stopped: %s", self.stats)

    @property
    def healthy(self) -> bool:
        """Every loop running and making progress (or we are stopping)."""
        return self._stopping.is_set() or self.supervisor.healthy

    def wake(self) -> None:
        self._wake.set()

    async def _connected(
        self, conn: asyncpg.Connection | None, **session: str
    ) -> asyncpg.Connection:
        if conn is not None and not conn.is_closed():
            return conn
        return await connect_raw(self.database_url, command_timeout=30, server_settings=session)

    # --- claim -> deliver --------------------------------------------------------------

    async def _claim_loop(self, loop: Loop) -> None:
        while not self._stopping.is_set():
            free = self.settings.concurrency - len(self._in_flight) - self._asked.total()
            self._wake.clear()
            if free <= 0:
                # Finished deliveries wake us once enough slots are free (see _spawn).
                with loop.idle():
                    await self._wait(self._wake.wait())
                continue
            self._freed = 0
            self._plan = []
            reading = None
            try:
                self._claim_conn = await self._connected(self._claim_conn, **outbox.CLAIM_SESSION)
                if self._claim_in_doubt:
                    # The last claim's connection broke: it may have committed, leaving
                    # rows with our token that we do not hold. Take them now, rather than
                    # let them sit out a whole lease.
                    async with self._quiet_lock:
                        await self._one_by_one(self._claim_conn, due=False)
                    self._claim_in_doubt = False
                self._reading = frozenset()
                await self._search(self._claim_conn)
                self._plan = self._claims.plan(
                    self._busy(),
                    min(self.settings.batch_size, free),
                    now=asyncio.get_running_loop().time(),
                    skip=self._quiet | self._quiet_reading,
                )
                self._reading = frozenset(t.destination for t in self._plan)
                reading = self._claims.begin()
                started = time.perf_counter()
                batch = await self._asking(self._plan, self._claim(self._claim_conn, self._plan))
                self._claims.took(self._plan, [(c.destination, c.position) for c in batch], reading)
            except asyncio.CancelledError:
                raise
            except asyncpg.SerializationError as exc:
                # A row it was locking had just moved partition (an operator's replay or
                # a deleted destination's strays ending, committed between the claim's
                # snapshot and its lock): nothing is wrong with any row; claim again.
                self._claims.forget_cursors()
                log.info("claim met a row that had just moved (%s); claiming again", exc)
                continue
            except Exception as exc:
                _discard(self._claim_conn)
                self._claim_conn = None
                if is_connection_failure(exc):  # database down: wait a poll interval
                    log.warning("claim failed (%s); retrying", _brief(exc))
                    self._claim_in_doubt = True
                else:
                    # A row that cannot be read fails the whole claim, on the server or
                    # in the driver once the claim committed: find it, set it aside.
                    log.exception("claim failed; looking at its rows one at a time")
                    await self._look_one_by_one()
                await self._wait(self._stopping.wait())
                continue
            finally:
                self._reading = None
                if reading is not None:
                    self._claims.end(reading)
            self._took(batch, self._plan, started)
            loop.beat()
            if not batch:
                # Nothing due (or only for destinations at their cap): sleep until woken
                # (NOTIFY, a retry timer, a finished delivery) or the next poll.
                with loop.idle():
                    await self._wait(self._wake.wait())

    def _took(self, batch: list[outbox.Claimed], plan: list[Take], started: float) -> None:
        """A claim's rows: held, and on their way (a quiet destination's first)."""
        if self.metrics is not None and plan:
            self.metrics.claimed(time.perf_counter() - started, len(batch))
        self.stats.claimed += len(batch)
        if len({c.destination for c in batch}) > 1:
            batch = sorted(batch, key=lambda c: self._per_destination.get(c.destination, 0))
        for claimed in batch:
            self._held[claimed.id] = claimed
            self._spawn(claimed)

    async def _asking(
        self, plan: list[Take], claim: Awaitable[list[outbox.Claimed]]
    ) -> list[outbox.Claimed]:
        """Run ``claim``, its rows counted as held (by the caps of both claims) meanwhile."""
        asked = Counter({t.destination: t.count for t in plan})
        self._asked.update(asked)
        try:
            return await claim
        finally:
            self._asked.subtract(asked)
            for d in asked:
                if self._asked[d] <= 0:
                    del self._asked[d]

    async def _quiet_loop(self, loop: Loop) -> None:
        """Claim for quiet destinations (holding nothing here) announced while the claim
        loop is in a statement, at once, on a connection of its own."""
        while not self._stopping.is_set():
            self._quiet_wake.clear()
            quiet = {d for d in self._quiet if d in self._claims.active}
            self._quiet.clear()
            if not quiet:
                with loop.idle():
                    await self._wait(self._quiet_wake.wait())
                continue
            free = self.settings.concurrency - len(self._in_flight) - self._asked.total()
            plan = self._claims.plan(
                self._busy(),
                min(self.settings.batch_size, free),
                now=asyncio.get_running_loop().time(),
                among=quiet,
                skip=self._reading or (),
            )
            if free <= 0 or self._claim_in_doubt or not plan:
                self._wake.set()  # the claim loop takes them with its next claim
                continue
            self._quiet_reading = frozenset(t.destination for t in plan)
            reading = self._claims.begin()
            try:
                async with self._quiet_lock:
                    self._quiet_conn = await self._connected(
                        self._quiet_conn, **outbox.CLAIM_SESSION
                    )
                    started = time.perf_counter()
                    batch = await self._asking(plan, self._claim(self._quiet_conn, plan))
                self._claims.took(plan, [(c.destination, c.position) for c in batch], reading)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever it was, the claim loop deals with it (it may have committed:
                # rows with our token that we do not hold, which the claim loop takes).
                _discard(self._quiet_conn)
                self._quiet_conn = None
                if isinstance(exc, asyncpg.SerializationError):
                    self._claims.forget_cursors()
                else:
                    log.warning("claim for quiet destinations failed (%s)", _brief(exc))
                    self._claim_in_doubt = True
                self._wake.set()
                continue
            finally:
                self._quiet_reading = frozenset()
                self._claims.end(reading)
            self._took(batch, plan, started)
            loop.beat()

    async def _claim(self, conn: asyncpg.Connection, plan: list[Take]) -> list[outbox.Claimed]:
        """One claim: destinations under delivery control through claim_limited (their
        locks, buckets and deployment-wide caps), the others through the plain claim.
        A controlled destination granted less than asked is asked again when its next
        token is due (or in a fraction of a poll interval, for a cap another process may
        free), since no wake-up says so."""
        free = [t for t in plan if t.destination not in self._controlled]
        held = [t for t in plan if t.destination in self._controlled]
        lease = self.settings.lease_seconds
        batch = await outbox.claim(conn, free, lease_seconds=lease, token=self.token)
        if held:
            limited, still_due = await outbox.claim_limited(
                conn,
                held,
                lease_seconds=lease,
                token=self.token,
                default_in_flight=self.settings.per_destination_concurrency,
            )
            got = Counter(c.destination for c in limited)
            poll = self.settings.poll_interval_seconds
            again = [
                (ask_again_in(*self._controlled[take.destination], poll), take.destination)
                for take in held
                if got[take.destination] < take.count and take.destination in still_due
            ]
            if again:
                self._wake_in(again, rows=False)
            batch += limited
        return batch

    async def _search(self, conn: asyncpg.Connection) -> None:
        """Every poll interval (and when a wake-up names no destination), look for
        destinations with due work; every SWEEP_SECONDS, from each one's head."""
        now = asyncio.get_running_loop().time()
        if now >= self._sweep_at:
            self._claims.forget_cursors()
            self._sweep_at = now + SWEEP_SECONDS
            self._search_at = now
        if now >= self._search_at:
            self._search_at = now + self.settings.poll_interval_seconds
            reading = self._claims.begin()
            try:
                found = await outbox.search_due(conn, dict(self._claims.cursors))
            finally:
                self._claims.end(reading)
            found = self._ours(found)
            self._claims.found(((d.destination, d.position) for d in found), reading)
            for d in found:
                if d.controlled:
                    self._controlled[d.destination] = (d.rate, d.burst)
                else:
                    self._controlled.pop(d.destination, None)

    def _ours(self, found: list[outbox.Due]) -> list[outbox.Due]:
        """What the search found that this process claims: its group's destinations,
        and (no group) another group's whose first due row has waited too long."""
        if not self.group.groups:
            return found
        now = datetime.now(UTC)
        ours = []
        for d in found:
            tenant = d.destination[0]
            if self.group.serves(tenant):
                ours.append(d)
            elif self.group.takes(tenant, (now - d.position[0]).total_seconds()):
                ours.append(d)
                if d.destination not in self._taken_over:
                    self._taken_over.add(d.destination)
                    log.warning(
                        "destination %s/%s of group %s: rows due for %gs and more, and no "
                        "dispatcher of that group took them (is `relay dispatch --group %s` "
                        "running?); delivering them here",
                        *d.destination,
                        self.group.group_of(tenant),
                        self.group.takeover_seconds,
                        self.group.group_of(tenant),
                    )
            else:
                self._taken_over.discard(d.destination)
        return ours

    def _notified(self, payload: str) -> None:
        """A NOTIFY: new rows for the destination it names, or (naming none) rows that
        may be behind any cursor."""
        found = outbox.announced(payload)
        if found is None:
            self._claims.forget_cursors()
            self._search_at = 0.0
            self._wake.set()
        else:
            self._announce(*found)

    def _announce(self, d: Destination, at: datetime | None = None, *, rows: bool = True) -> None:
        """Rows of ``d`` are due (or, without ``rows``, ``d`` is to be asked again): the
        claim loop's to take, or the quiet claim's if the claim loop is in a statement
        and ``d`` holds nothing here (see _quiet_loop). Another group's are not ours."""
        if not self.group.serves(d[0]) and d not in self._claims.active:
            return
        self._claims.announce(d, at, rows=rows)
        if (
            self._reading is not None
            and d not in self._reading
            and d not in self._per_destination
            and d not in self._unjudged
        ):
            self._quiet.add(d)
            self._quiet_wake.set()
        else:
            self._wake.set()

    async def _look_one_by_one(self) -> None:
        """After a claim failed for a reason other than the database going away: read
        the rows it may have been about, one at a time (relay/db/outbox.py, "rows relay
        cannot process"). A row that cannot be read is quarantined (failed, with an
        ``unprocessable`` attempt row) instead of failing every claim, or coming back
        with its neighbours after every lease, forever."""
        try:
            self._claim_conn = await self._connected(self._claim_conn, **outbox.CLAIM_SESSION)
            async with self._quiet_lock:
                await self._one_by_one(self._claim_conn, due=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next failed claim tries again
            _discard(self._claim_conn)
            self._claim_conn = None
            log.warning("could not look at the claim's rows one at a time (%s)", _brief(exc))

    async def _one_by_one(self, conn: asyncpg.Connection, *, due: bool) -> None:
        """Read alone each row we claimed and do not hold (and, with ``due``, each row
        a claim would take first): deliver the ones we claimed, quarantine any that
        cannot be read, leave due rows that read fine to the next claim. Raises when
        the database goes away."""
        ours = await outbox.claimed_ids(conn, self.token, exclude=list(self._held))
        others = await outbox.due_ids(conn, self._plan) if due else []
        for id in dict.fromkeys([*ours, *others]):
            try:
                claimed = await outbox.read_one(conn, id, self.token)
            except Exception as exc:
                if is_connection_failure(exc):
                    raise
                if await outbox.quarantine(
                    conn, id, self.token, code="unprocessable", detail=_brief(exc)
                ):
                    self.quarantined += 1
                    log.error("delivery %d cannot be read (%s); quarantined", id, _brief(exc))
                continue
            if claimed is not None and id in ours:
                self.stats.claimed += 1
                self.stats.taken_back += 1
                self._held[claimed.id] = claimed
                self._spawn(claimed)

    def _busy(self) -> dict[Destination, int]:
        """Held counts per destination (with rows a claim under way asked for); one
        awaiting judgement counts as full."""
        busy = Counter(self._per_destination)
        busy.update(self._asked)
        for key in self._unjudged:
            busy[key] = self._claims.per_destination
        return busy

    def _affects_health(
        self,
        failed: bool,
        http_status: int | None,
        error_code: str | None = None,
        disable_reason: str | None = None,
    ) -> bool:
        """A failure the destination's next claims must wait for the judgement of: one
        that disables it (a 410), any with auto-disable on, and one that slows it down."""
        return failed and (
            disable_reason is not None
            or self.settings.auto_disable_after_failures > 0
            or outbox.slows_down(http_status, error_code)
        )

    async def _wait(self, awaitable: Awaitable[object]) -> None:
        waiter = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                {waiter, stop},
                timeout=self.settings.poll_interval_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for fut in (waiter, stop):
                fut.cancel()

    def _spawn(self, claimed: outbox.Claimed) -> None:
        key = claimed.destination
        self._per_destination[key] += 1
        self._in_flight[claimed.id] = asyncio.create_task(self._deliver_one(claimed))

    def _done(self, claimed: outbox.Claimed) -> None:
        """A delivery task ends (delivered, failed, cancelled or given back): its place
        is free."""
        key = claimed.destination
        self._in_flight.pop(claimed.id, None)
        self._per_destination[key] -= 1
        if self._per_destination[key] <= 0:
            del self._per_destination[key]
            self._sending.pop(key, None)
            self._disabled.discard(key)
        # Slots (and maybe this destination's cap) have room again. Under load, claim
        # once a few have freed up rather than once per finished delivery: one claim
        # statement per delivery would cost more than the delivery.
        self._freed += 1
        if self._freed >= self._claim_threshold or not self._in_flight:
            self._wake.set()

    async def _turn(self, claimed: outbox.Claimed) -> asyncio.Semaphore | None:
        """Wait for one of the destination's slots and for the judgement of its failures
        in flight (a 410 disables it "at once": nothing more is sent after it). The slot,
        or None when the row must not be sent (its destination disabled, or stopping)."""
        key = claimed.destination
        cap = self.settings.per_destination_concurrency
        slot = self._sending.setdefault(key, asyncio.Semaphore(cap))
        await slot.acquire()
        try:
            while key in self._unjudged and not self._stopping.is_set():
                self._judged.clear()
                await self._wait(self._judged.wait())
        except BaseException:  # cancelled by the shutdown: not sent
            slot.release()
            raise
        try:
            await self._paused_out(key)
        except BaseException:
            slot.release()
            raise
        if key in self._disabled or self._stopping.is_set():
            slot.release()
            return None
        return slot

    def _pause(self, key: Destination, retry_after: float | None) -> None:
        """The receiver said "slow down": this process sends it nothing more until the
        pause the recorder is about to write for every process has run out."""
        seconds = min(
            outbox.PAUSE_SECONDS if retry_after is None else retry_after,
            self.policy.max_retry_after,
        )
        until = asyncio.get_running_loop().time() + seconds
        self._paused[key] = max(self._paused.get(key, 0.0), until)

    async def _paused_out(self, key: Destination) -> None:
        """Wait out the destination's pause (see _pause), if any, or until stopping."""
        loop = asyncio.get_running_loop()
        while (until := self._paused.get(key)) is not None and not self._stopping.is_set():
            left = until - loop.time()
            if left <= 0:
                if self._paused.get(key) == until:
                    del self._paused[key]
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), left)

    async def _deliver_one(self, claimed: outbox.Claimed) -> None:
        slot = None
        trace_id = None
        try:
            slot = await self._turn(claimed)
            if slot is None:
                self._give_back(claimed)
                return
            sending = self.delivery.deliver(claimed)
            if self.tracing is None:
                outcome = await sending
            else:
                outcome, trace_id = await self.tracing.attempt(claimed, sending)
        except asyncio.CancelledError:
            # Shutdown cut this attempt short. The request may have reached the receiver:
            # stop() turns the try into an attempt row and the delivery back to pending,
            # all the cut-short ones in one statement. One still next in line was not
            # tried: it goes back as it was.
            if slot is None:
                self._give_back(claimed)
            else:
                self._interrupted.append(claimed.id)
            raise
        except Exception as exc:  # a bug: record it as a failed try, not a stuck row
            log.exception("delivery %d failed unexpectedly", claimed.id)
            outcome = Outcome(
                False, datetime.now(UTC), 0, error_code=INTERNAL_ERROR, error_detail=_brief(exc)
            )
        finally:
            # Freed here rather than in a done callback: one callback and one closure fewer
            # per delivery. Nothing below awaits, so no claim runs before it is queued.
            if slot is not None:
                slot.release()
            self._done(claimed)
        if outcome.success:
            self.stats.delivered += 1
        else:
            self.stats.failed_attempts += 1
        if self._affects_health(
            not outcome.success, outcome.http_status, outcome.error_code, outcome.disable_reason
        ):
            self._unjudged[claimed.destination] += 1
        if outbox.pauses(outcome.http_status, outcome.error_code):  # a timeout does not
            self._pause(claimed.destination, outcome.retry_after)
        recorded = decide(claimed, outcome, self.policy)
        recorded.trace_id = trace_id
        self._outcomes.put_nowait(recorded)

    def _give_back(self, claimed: outbox.Claimed) -> None:
        """A row next in line that will not be sent: back to pending, with others."""
        self._unsent.append(claimed)
        if self._giving_back is None or self._giving_back.done():
            self._giving_back = asyncio.create_task(self._give_back_unsent())

    async def _give_back_unsent(self) -> None:
        delay = 0.1
        while self._unsent:
            # Let the others that are about to go back join this statement.
            await asyncio.sleep(0)
            batch, self._unsent = self._unsent, []
            try:
                async with self.engine.begin() as conn:
                    await outbox.give_back_unsent(conn, batch, self.token)
            except Exception as exc:
                if self._stopping.is_set():
                    # Their leases run out and any dispatcher gives them back (with a
                    # lease_expired attempt row each, though they were not tried).
                    log.warning(
                        "could not give back %d unsent deliveries: %s", len(batch), _brief(exc)
                    )
                    for claimed in batch:
                        self._held.pop(claimed.id, None)
                    return
                log.warning(
                    "giving back %d unsent deliveries failed (%s); retrying",
                    len(batch),
                    _brief(exc),
                )
                self._unsent[:0] = batch
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for claimed in batch:
                self._held.pop(claimed.id, None)
            self._wake.set()

    async def _release_interrupted(self, ids: list[int]) -> None:
        try:
            async with self.engine.begin() as conn:
                released = await outbox.release_interrupted(conn, ids, self.token)
            self.stats.released_on_stop += released
            if self.metrics is not None:
                self.metrics.attempts.labels("interrupted").inc(released)
        except Exception as exc:  # the lease will expire and return them anyway
            log.warning("could not release %d claimed deliveries: %s", len(ids), _brief(exc))
        for id in ids:
            self._held.pop(id, None)

    # --- record --------------------------------------------------------------------------

    async def _record_loop(self, loop: Loop) -> None:
        while True:
            if not self._recording:
                with loop.idle():
                    first = await self._outcomes.get()
                batch = [first]
                while len(batch) < RECORD_BATCH and not self._outcomes.empty():
                    batch.append(self._outcomes.get_nowait())
                self._recording = batch
            batch = self._recording
            disabled, dropped = await self._write(batch)
            self._recording = []
            try:
                self._recorded(batch, disabled)
            finally:
                for _ in batch:
                    self._outcomes.task_done()
            if not dropped:  # an outcome that could not be written is no progress
                loop.beat()

    def _recorded(self, batch: list[outbox.Recorded], disabled: list[outbox.Disabled]) -> None:
        """A batch is written: its rows are no longer ours, retries get a wake-up."""
        if self.metrics is not None:
            _count_attempts(self.metrics, batch)
        retries = []
        for recorded in batch:
            self._held.pop(recorded.claimed.id, None)
            if recorded.claimed.ordering_key is not None:
                # Its key's next row may be claimed now.
                self._announce(recorded.claimed.destination)
            if recorded.next_status == "pending":
                retries.append((recorded.delay_seconds, recorded.claimed.destination))
            if self._affects_health(
                recorded.attempt_status == "failed",
                recorded.http_status,
                recorded.error_code,
                recorded.disable_reason,
            ):
                key = recorded.claimed.destination
                self._unjudged[key] -= 1
                if self._unjudged[key] <= 0:
                    del self._unjudged[key]
                    self._wake.set()
                    self._judged.set()
        for d in disabled:
            log.warning("destination %s/%s disabled: %s", d.tenant_id, d.destination_id, d.reason)
            key = (d.tenant_id, d.destination_id)
            if self._per_destination.get(key):  # rows next in line must not go out
                self._disabled.add(key)
        if retries:
            self._wake_in(retries)

    async def _write(self, batch: list[outbox.Recorded]) -> tuple[list[outbox.Disabled], int]:
        """Write a batch, retrying; (destinations it disabled, outcomes dropped)."""
        delay = 0.1
        failures = 0
        while True:
            try:
                return await self._write_once(batch, after=self.after_record), 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if not is_connection_failure(exc) and failures >= SPLIT_AFTER_FAILURES:
                    if len(batch) == 1:
                        return await self._write_stripped(batch[0], exc)
                    # One unwritable row must not hold up the others: one at a time.
                    disabled, dropped = [], 0
                    for recorded in batch:
                        one_disabled, one_dropped = await self._write([recorded])
                        disabled += one_disabled
                        dropped += one_dropped
                    return disabled, dropped
                # Keep the outcomes and try again. If the commit happened and only its
                # answer was lost, writing the batch again adds nothing (record_outcomes
                # is idempotent); if this outlasts the lease, another dispatcher
                # redelivers (at-least-once) and these attempt rows still land.
                log.warning("recording %d outcomes failed (%s); retrying", len(batch), _brief(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write_stripped(
        self, recorded: outbox.Recorded, exc: Exception
    ) -> tuple[list[outbox.Disabled], int]:
        """One outcome PostgreSQL refuses: write it without what the receiver sent (its
        body and headers, the likely culprits), so the delivery still ends as it did."""
        stripped = replace(
            recorded,
            response_body=None,
            response_headers=None,
            error_detail=f"the receiver's answer could not be stored: {_brief(exc)}",
        )
        delay = 0.1
        # Last, the outcome without its operator events: an event that cannot be written
        # must not keep the delivery from ending as it did.
        after = self.after_record
        while True:
            try:
                return await self._write_once([stripped], after=after), 0
            except asyncio.CancelledError:
                raise
            except Exception as again:
                if is_connection_failure(again):  # not this outcome's fault: wait, retry
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if after is not None:
                    log.error(
                        "the operator events of delivery %d's outcome cannot be written "
                        "(%s); writing the outcome without them",
                        recorded.claimed.id,
                        _brief(again),
                    )
                    after = None
                    continue
                log.error(
                    "dropping the outcome of delivery %d, which cannot be written (%s); "
                    "its lease will expire and it will be sent again",
                    recorded.claimed.id,
                    _brief(again),
                )
                return [], 1

    async def _write_once(
        self, batch: list[outbox.Recorded], *, after: outbox.AfterRecord | None = None
    ) -> list[outbox.Disabled]:
        """One transaction writing ``batch`` (and, unless told otherwise, its operator
        events); on any failure the connection is dropped (its state is unknown) and the
        error raised."""
        try:
            conn = self._record_conn = await self._connected(self._record_conn)
            async with conn.transaction():
                return await outbox.record_outcomes(
                    conn,
                    batch,
                    auto_disable_after=self.settings.auto_disable_after_failures,
                    max_pause=self.policy.max_retry_after,
                    after=after,
                )
        except BaseException:
            _discard(self._record_conn)
            self._record_conn = None
            raise

    def _wake_in(self, retries: list[tuple[float, Destination]], *, rows: bool = True) -> None:
        """Wake the claim loop when retries fall due (a heap of times, one timer); with
        ``rows`` false, to ask a destination again (its tokens, its cap)."""
        now = asyncio.get_running_loop().time()
        for delay, destination in retries:
            if delay < self.settings.poll_interval_seconds * 50:  # far off: polling finds it
                heapq.heappush(self._wake_times, (now + delay, destination, rows))
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._stopping.is_set():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._wake_times and self._wake_times[0][0] <= now:
            _, destination, rows = heapq.heappop(self._wake_times)
            # Due already: no timer needed for it. Its row is ahead of any cursor there.
            self._announce(destination, rows=rows)
        if not self._wake_times:
            return
        due = self._wake_times[0][0]
        if self._timer is not None:
            if self._timer_due == due:
                return
            self._timer.cancel()
        self._timer = loop.call_at(due, self._timer_fired)
        self._timer_due = due

    def _timer_fired(self) -> None:
        self._timer = self._timer_due = None
        self._wake.set()
        self._arm_timer()

    # --- wake-ups and leases -------------------------------------------------------------

    async def _listen_loop(self, loop: Loop) -> None:
        """Hold a LISTEN connection; reconnect whenever it drops."""
        while True:
            conn = None
            try:
                conn = await connect_raw(self.database_url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(
                    outbox.NOTIFY_CHANNEL, lambda _c, _pid, _ch, payload: self._notified(payload)
                )
                self.listening = True
                self.listen_connections += 1
                loop.beat()
                log.debug("listening on %s", outbox.NOTIFY_CHANNEL)
                # Work may have arrived while we were not listening, behind any cursor.
                self._notified("")
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=15)
                    if not lost.is_set():
                        # Notices a dead socket that never said goodbye.
                        await conn.execute("SELECT 1", timeout=10)
                        loop.beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("LISTEN connection lost (%s); reconnecting", _brief(exc))
            finally:
                self.listening = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), timeout=2)
            await asyncio.sleep(1)

    async def _lease_loop(self, loop: Loop) -> None:
        """Keep our own leases alive; give back rows whose holder is gone."""
        interval = max(min(self.settings.lease_seconds / 4, 15.0), 0.1)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.engine.begin() as conn:
                    if self._held:
                        await outbox.extend_leases(
                            conn, list(self._held), self.token, self.settings.lease_seconds
                        )
                    released = await outbox.release_expired(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease upkeep failed (%s); retrying", _brief(exc))
                continue
            loop.beat()
            if released:
                self.stats.released_expired += released
                if self.metrics is not None:
                    # Each became a failed attempt row; the counter agrees with the table.
                    self.metrics.attempts.labels("lease_expired").inc(released)
                log.warning(
                    "released %d deliveries whose lease expired (a dispatcher stopped "
                    "without recording them); they will be sent again",
                    released,
                )
                self._wake.set()


def _count_attempts(metrics: Metrics, batch: list[outbox.Recorded]) -> None:
    outcomes: Counter[str] = Counter()
    finals: Counter[str] = Counter()
    latencies = []
    for r in batch:
        success = r.attempt_status == "success"
        outcomes[attempt_outcome(success, r.http_status, r.error_code)] += 1
        if r.next_status != "pending":
            finals[r.next_status] += 1
        if success:
            # Publish (commit) to the receiver's answer.
            finished = r.started_at + timedelta(milliseconds=r.duration_ms)
            latencies.append((finished - r.claimed.published_at).total_seconds())
    metrics.record_attempts(outcomes, finals, latencies)


def _discard(conn: asyncpg.Connection | None) -> None:
    """Drop a connection after a failure: its state (mid-statement, mid-transaction) is
    unknown, and the next use opens a fresh one."""
    if conn is not None:
        conn.terminate()


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
