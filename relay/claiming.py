"""What the dispatcher's next claim asks for: which destinations, how many rows of each,
and from where in each destination's queue. State and pure decisions, no I/O.

Why a cursor per destination. A claim reads relay.deliveries through ix_deliveries_due,
(tenant_id, destination_id, next_attempt_at, id) over pending rows. Every row claimed leaves
its entry behind, pointing at a dead row version, until vacuum removes it; and while any
session holds a snapshot (an analytics query, an idle REPEATABLE READ transaction, a
backup), vacuum can remove none of them. A claim that starts at the head of the queue
walks every one of those entries: after four minutes at 1,000 deliveries a second, a
quarter of a million per claim, and the dispatcher falls behind for good. So each
destination is read from just past where this dispatcher last took rows there: the
position, (next_attempt_at, id), of its last claimed row. Rows before it were taken
already, by us or by another dispatcher (whose locked rows SKIP LOCKED passes over), so
a claim reads what is new.

What can land behind a cursor. A row is written with ``next_attempt_at = now()``, its
transaction's start, and is seen only after that transaction commits; one that commits
late (a producer's transaction with relay's Python API, a group commit overtaken by
another) arrives behind the cursor. Every write of new deliveries announces its
destinations and its key on NOTIFY (relay/db/publishing.py), which moves the cursor back
to that key; so does every recorded retry (due in the future, ahead of any cursor, unless
its delay is shorter than the recorder's transaction). An announcement that arrives while
a claim or a search runs is applied again after its answer, whose snapshot may predate
those rows. Requeues by operators and released leases announce themselves without a
key, which forgets every cursor. NOTIFY is a hint: a listener that was down misses some,
so every ``SWEEP_SECONDS`` all cursors are forgotten anyway, and each destination is
read once from its head.

Which destinations. The claim reads only destinations known to have due work
(``active``): announced, found by the periodic search (``find_due``, every poll
interval: polling is the truth), or whose last claim took all it asked for. A
destination at its cap is left out until a delivery frees a slot.

Fairness. The batch is shared out first among tenants, an equal share each, then within
each tenant among its destinations with room, an equal share each; each level starts
from a different tenant (destination) at every claim. So neither a tenant's backlog nor
one spread over many destinations can fill every batch: a fresh row of another tenant
waits at most for the next claim, never behind the backlog (the due index is read per
destination, never in one global order). Nor can it fill every slot of the process:
while more than one tenant has had due work within ``TENANT_MEMORY``, a tenant takes
slots past its equal share only while an eighth of them stay free (``tenant_rooms``), so
the next claim has room for another tenant's fresh row even when the backlog's receivers
are slow to answer.

Two statements may read the queue at once (the dispatcher's claim loop, and its claim
for quiet destinations that does not wait for the loop: relay/dispatcher.py); each is a
``Reading`` of its own, which collects the announcements made while it runs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Destination = tuple[str, str]
# A row's place in its destination's queue: (next_attempt_at, id). A cursor is the
# position of the last row taken; the next claim starts just past it.
Position = tuple[datetime, int]

# How often every cursor is forgotten and each destination read from its head: the bound
# on how long a row can wait behind a cursor when its announcement was lost.
SWEEP_SECONDS = 30.0

# A tenant counts among those sharing the process's slots for this long after it last
# had due work: longer than the gaps of a steady producer.
TENANT_MEMORY = 60.0


@dataclass(frozen=True, slots=True)
class Take:
    """Claim up to ``count`` due rows of ``destination``, past ``since``."""

    destination: Destination
    count: int
    since: Position | None


def share_out(
    rooms: Sequence[tuple[Destination, int]], limit: int
) -> list[tuple[Destination, int]]:
    """Split ``limit`` rows among destinations, each given no more than its room: equal
    shares, and what a destination cannot use goes to the others. Destinations are served
    in the order given (the first ones get the odd rows). Pure."""
    counts = [0] * len(rooms)
    left = limit
    open_ = [i for i, (_, room) in enumerate(rooms) if room > 0]
    while left > 0 and open_:
        share = max(left // len(open_), 1)
        still = []
        for i in open_:
            if left == 0:
                break
            give = min(share, rooms[i][1] - counts[i], left)
            counts[i] += give
            left -= give
            if counts[i] < rooms[i][1]:
                still.append(i)
        open_ = still
    return [(rooms[i][0], n) for i, n in enumerate(counts) if n > 0]


def _rotated(items: list[Any], turn: int) -> list[Any]:
    if not items:
        return items
    turn %= len(items)
    return items[turn:] + items[:turn]


def share_by_tenant(
    rooms: Sequence[tuple[Destination, int]],
    limit: int,
    turn: int = 0,
    tenant_rooms: Mapping[str, int] | None = None,
) -> list[tuple[Destination, int]]:
    """Split ``limit`` rows equally among the tenants of ``rooms`` (what one cannot use
    goes to the others), then each tenant's share equally among its destinations. The
    ``turn`` rotates which tenant, and which of its destinations, get the odd rows; a
    tenant in ``tenant_rooms`` takes no more than its room there. Pure."""
    tenants: dict[str, list[tuple[Destination, int]]] = {}
    for d, room in sorted(rooms):
        tenants.setdefault(d[0], []).append((d, room))
    order = _rotated(sorted(tenants), turn)
    caps = tenant_rooms or {}
    shares = share_out(
        [((t, ""), min(sum(r for _, r in tenants[t]), caps.get(t, limit))) for t in order],
        limit,
    )
    out: list[tuple[Destination, int]] = []
    for (tenant, _), count in shares:
        out += share_out(_rotated(tenants[tenant], turn), count)
    return out


# A destination under a rate limit that was granted less than it asked is asked again
# once this much of its rate has refilled its bucket (unless its burst holds less), and
# never sooner than ASK_AGAIN_SOONEST: one claim (a lock, a statement, a commit) per
# token would cost more than the delivery. 20 ms is 10 rows a claim at 500/s, and no
# later than before for 50/s and slower.
ASK_AGAIN_AFTER = 0.02
ASK_AGAIN_SOONEST = 0.005


def ask_again_in(rate: float | None, burst: int | None, poll: float) -> float:
    """Seconds until a destination under delivery control that was granted less than it
    asked (its tokens or its in-flight cap) is asked again: a worthwhile claim's worth of
    tokens at ``rate``, or, with no rate (its cap held by every process), a fraction of
    the poll interval, since no wake-up says when another process frees a slot. Pure."""
    if rate is None or rate <= 0:
        return poll / 4
    tokens = max(1.0, min(rate * ASK_AGAIN_AFTER, burst or 1))
    return min(max(tokens / rate, ASK_AGAIN_SOONEST), poll)


def reserve(concurrency: int) -> int:
    """Slots a tenant holding its equal share leaves free for the others: an eighth."""
    return concurrency // 8


def tenant_rooms(
    held: Mapping[str, int], tenants: Collection[str], concurrency: int
) -> dict[str, int]:
    """How many more rows each tenant may hold, given what each holds and the process's
    slots: all the free ones, but when there are others, a tenant takes slots past its
    equal share only while ``reserve(concurrency)`` stay free (slots cannot be taken
    back, so a tenant that fills them all makes another's fresh row wait for its
    receivers' answers). Pure."""
    free = max(0, concurrency - sum(held.values()))
    if len(tenants) < 2:
        return {t: free for t in tenants}
    fair = concurrency // len(tenants)
    keep = reserve(concurrency)
    return {t: min(free, max(0, fair - held.get(t, 0), free - keep)) for t in tenants}


@dataclass(eq=False)
class Reading:
    """A statement reading the queue (a claim or a search), from ``Claims.begin`` to its
    answer: what was announced meanwhile, which its snapshot may predate, so its answer
    must not move a cursor past those rows."""

    # Destinations announced meanwhile, and the earliest position announced for each.
    announced: set[Destination] = field(default_factory=set)
    late: dict[Destination, datetime] = field(default_factory=dict)
    forgot: bool = False


@dataclass
class Claims:
    """The dispatcher's view of the queue between claims."""

    per_destination: int
    active: set[Destination] = field(default_factory=set)
    cursors: dict[Destination, Position] = field(default_factory=dict)
    # The process's slots, which tenants share (tenant_rooms); None: not shared out.
    concurrency: int | None = None
    # Tenants with due work, when last seen so (monotonic seconds).
    seen: dict[str, float] = field(default_factory=dict)
    # Where the next batch starts sharing out (a different destination each claim).
    turn: int = 0
    _readings: list[Reading] = field(default_factory=list)

    def begin(self) -> Reading:
        """A claim or a search is about to read the queue."""
        reading = Reading()
        self._readings.append(reading)
        return reading

    def end(self, reading: Reading) -> None:
        """A statement is over without an answer to apply (it failed)."""
        if reading in self._readings:
            self._readings.remove(reading)

    def _settle(self, reading: Reading | None) -> None:
        """After a statement's answer moved cursors: put back what was announced while it
        ran (rows it could not see), and forget all again if a wake-up said so."""
        if reading is None:
            return
        self.end(reading)
        if reading.forgot:
            self.cursors.clear()
        for d, at in reading.late.items():
            if d in self.cursors and (at, 0) < self.cursors[d]:
                self.cursors[d] = (at, 0)

    def plan(
        self,
        in_flight: Mapping[Destination, int],
        limit: int,
        *,
        now: float = 0.0,
        among: Collection[Destination] | None = None,
        skip: Collection[Destination] = (),
    ) -> list[Take]:
        """The next claim: active destinations below their cap (of ``among`` only, if
        given; none in ``skip``), sharing ``limit`` fairly between tenants, then between
        each tenant's destinations; each tenant within its room (``tenant_rooms``)."""
        for d in self.active:
            self.seen[d[0]] = now
        rooms = sorted(
            (d, self.per_destination - in_flight.get(d, 0))
            for d in self.active
            if in_flight.get(d, 0) < self.per_destination
            and (among is None or d in among)
            and d not in skip
        )
        if not rooms:
            return []
        self.turn += 1
        caps = None
        if self.concurrency is not None:
            for tenant, at in list(self.seen.items()):
                if now - at > TENANT_MEMORY:
                    del self.seen[tenant]
            held: dict[str, int] = {}
            for d, n in in_flight.items():
                held[d[0]] = held.get(d[0], 0) + n
            caps = tenant_rooms(held, self.seen.keys() | held.keys(), self.concurrency)
        return [
            Take(d, n, self.cursors.get(d))
            for d, n in share_by_tenant(rooms, limit, self.turn, caps)
        ]

    def took(
        self,
        plan: Sequence[Take],
        rows: Iterable[tuple[Destination, Position | None]],
        reading: Reading | None = None,
    ) -> None:
        """A claim returned rows (their destination and position): cursors move to the
        last row taken; a destination that gave fewer rows than asked has nothing more
        due now (or only rows another dispatcher is taking) and leaves ``active``, unless
        rows of it were announced while the claim ran (its snapshot may predate them)."""
        got: dict[Destination, int] = {}
        for d, position in rows:
            got[d] = got.get(d, 0) + 1
            if position is not None and (d not in self.cursors or position > self.cursors[d]):
                self.cursors[d] = position
        announced = reading.announced if reading is not None else set()
        for take in plan:
            if got.get(take.destination, 0) < take.count and take.destination not in announced:
                self.active.discard(take.destination)
        self._settle(reading)

    def announce(self, d: Destination, at: datetime | None = None, *, rows: bool = True) -> None:
        """Rows of ``d`` were written (or fell due); with ``at``, their
        ``next_attempt_at``: the cursor moves back before them if it is past. Without
        ``rows``, ``d`` is only to be asked again (a rate limit's next token): a claim of
        it under way answers that itself, and keeps it active or not by its answer."""
        self.active.add(d)
        if not rows:
            return
        for reading in self._readings:
            reading.announced.add(d)
            if at is not None and (d not in reading.late or at < reading.late[d]):
                reading.late[d] = at
        if at is not None and d in self.cursors and (at, 0) < self.cursors[d]:
            self.cursors[d] = (at, 0)

    def found(
        self, due: Iterable[tuple[Destination, Position]], reading: Reading | None = None
    ) -> None:
        """The periodic search's answer: destinations with due rows, each with a cursor
        just before the first (past the cursor it was given, which is kept)."""
        for d, position in due:
            self.active.add(d)
            self.cursors.setdefault(d, position)
        self._settle(reading)

    def forget_cursors(self) -> None:
        """Read every destination from its head again (the sweep, or a wake-up naming no
        destination)."""
        self.cursors.clear()
        for reading in self._readings:
            reading.forgot = True

    def drop(self, d: Destination) -> None:
        """A destination that cannot be claimed (disabled, deleted) leaves ``active``."""
        self.active.discard(d)
