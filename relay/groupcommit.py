"""Group commit for the HTTP publish handlers.

Each request's events are a unit; handlers submit units and wait. A writer takes every
unit queued, routes them together (one read), writes every event and outbox row with
one statement on an autocommit connection (its implicit commit NOTIFYs the dispatchers
once), and only then answers the waiting handlers. So a 202 still means "committed",
while two round trips and one commit are shared by everything that arrived meanwhile.
A few writers run at once: while one commits, the next batch fills up.

Routing reads come from a cache of the tenants' routes (RouteCache), so a group is
usually one round trip: the write itself. It stays exact across processes: the write
names the route version the cache holds, and inserts nothing if another process (or
the config sync, or an operator in psql) has changed a tenant or destination since; the
writer then reads the routes again and writes once more.

A unit is all or nothing (the pod API's copies of one request). A unit that fails
validation gets its error and is left out; the rest of the group goes on. If the group's
statement fails anyway (a value PostgreSQL refuses, a trigger, a deadlock), each unit
is tried again alone, so one bad event does not fail its neighbours. A lost connection
fails the whole group: its handlers answer 503 and the producer retries (ids make that
safe: whether an interrupted commit happened or not, the retry is answered correctly).
Every event gets its id before anything is written, so retrying a unit alone after a
failure can never write an event twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import asyncpg

from relay.db import publishing
from relay.db.engine import asyncpg_url, is_connection_failure, session_settings
from relay.db.publishing import DestinationRoute, StaleRoutes, sqlstate
from relay.errors import BadRequest, RelayError
from relay.publish import Event, Planned, Published, new_event_id, plan_routed, write
from relay.supervise import Loop, Supervisor

log = logging.getLogger(__name__)

# Writes in a row that found the routes changed before the group gives up (503). Each
# retry reads the routes afresh; only a storm of tenant/destination changes gets here.
STALE_RETRIES = 5


@dataclass(slots=True)
class _Unit:
    events: Sequence[Event]
    answer: asyncio.Future[list[Published]]
    # relay.publish.plan_routed's: False answers as Outpost's HTTP API does.
    strict: bool = True


class GroupCommit:
    def __init__(self, database_url: str, *, writers: int = 3, max_events: int = 500) -> None:
        self._url = database_url
        self._writers = writers
        self._max_events = max_events
        self._queue: list[_Unit] = []
        self._ready = asyncio.Event()
        self.supervisor = Supervisor("publisher")
        self._pool: asyncpg.Pool | None = None
        self.routes = RouteCache()
        # Transactions committed and events they carried (tests, and how well it groups).
        self.transactions = 0
        self.events = 0
        # Groups whose transaction failed and whose units were then tried one by one.
        self.split_groups = 0

    async def start(self) -> None:
        # min_size=0: nothing to connect at start, and a dead connection is simply replaced.
        self._pool = asyncpg.create_pool(
            asyncpg_url(self._url),
            min_size=0,
            max_size=self._writers,
            timeout=5,
            command_timeout=30,
            # No server-side statement timeout, as on the dispatcher's connections
            # (relay/db/engine.py, connect_raw): a cancelled group would be taken for a
            # value PostgreSQL refuses and tried again unit by unit, multiplying the load
            # on a database that is already slow. The client's timeout counts as a lost
            # connection instead: a 503, and the producer retries.
            server_settings=session_settings(0),
            reset=_keep_session,
        )
        await self._pool
        for n in range(self._writers):
            # A group commits within the pool's command timeout (30 s), or fails.
            self.supervisor.start(f"writer-{n}", self._writer, stall_after=60)

    async def stop(self) -> None:
        await self.supervisor.stop()
        for unit in self._queue:
            if not unit.answer.done():
                unit.answer.set_exception(ConnectionError("relay is shutting down"))
        self._queue.clear()
        if self._pool is not None:
            await self._pool.close()

    async def publish(self, events: Sequence[Event], *, strict: bool = True) -> list[Published]:
        """Publish ``events`` (all or nothing); returns once they are committed.

        Validation that needs no database (topic catalogue, shapes) is the caller's.
        ``strict=False``: an unknown tenant or destination_id is no error (see
        relay.publish.plan_routed); an unknown tenant's event is answered, not written."""
        answer: asyncio.Future[list[Published]] = asyncio.get_running_loop().create_future()
        events = [e if e.id is not None else replace(e, id=new_event_id()) for e in events]
        self._queue.append(_Unit(events, answer, strict))
        self._ready.set()
        return await answer

    def _take(self) -> list[_Unit]:
        taken: list[_Unit] = []
        count = 0
        while self._queue and (not taken or count + len(self._queue[0].events) <= self._max_events):
            unit = self._queue.pop(0)
            taken.append(unit)
            count += len(unit.events)
        if not self._queue:
            self._ready.clear()
        return taken

    async def _writer(self, loop: Loop) -> None:
        while True:
            with loop.idle():
                await self._ready.wait()
            units = self._take()
            try:
                await self._commit(units)
            except BaseException:
                # Stopped (or crashed) mid-transaction: nobody may wait forever, nor get a
                # 202 for what may not have committed.
                for unit in units:
                    _fail(unit, ConnectionError("relay is shutting down"))
                raise
            loop.beat()

    async def _commit(self, units: list[_Unit]) -> None:
        if not units:
            return
        try:
            answers = await self._write(units)
        except Exception as exc:
            if len(units) == 1 or is_connection_failure(exc):
                for unit in units:
                    _fail(unit, exc)
                return
            # The group's write is one statement, so as a rule nothing of it was written.
            # (Should the look-up of repeats after it fail, the ids are already fixed: a
            # unit retried alone is then answered as a duplicate, never written twice.)
            log.info("group of %d publishes failed (%s); trying each alone", len(units), exc)
            self.split_groups += 1
            for unit in units:
                try:
                    (answer,) = await self._write([unit])
                except Exception as alone:
                    _fail(unit, alone)
                else:
                    _answer(unit, answer)
            return
        for unit, answer in zip(units, answers, strict=True):
            _answer(unit, answer)

    async def _write(self, units: list[_Unit]) -> list[list[Published] | RelayError]:
        """One write (one implicit transaction) for all the units; each unit's results or
        its error. No explicit transaction: routing reads committed state either way (READ
        COMMITTED), and one statement is already all or nothing."""
        assert self._pool is not None
        events = [event for unit in units for event in unit.events]
        tenant_ids = {e.tenant_id for e in events}
        async with self._pool.acquire() as conn:
            for _ in range(STALE_RETRIES):
                version, tenants, fresh = await self.routes.lookup(conn, tenant_ids)
                per_unit = [plan_routed(tenants, u.events, strict=u.strict) for u in units]
                errors = [next((p for p in u if isinstance(p, RelayError)), None) for u in per_unit]
                if not fresh and any(errors):
                    # An error read from the cache (no such tenant, say) is answered only
                    # from routes read now: nothing is written to check them against.
                    self.routes.clear()
                    continue
                valid = [p for u, e in zip(per_unit, errors, strict=True) if e is None for p in u]
                planned = [p for p in valid if isinstance(p, Planned)]
                try:
                    if planned or fresh:
                        # The write checks the version for every answer of the group.
                        written = iter(await write(conn, planned, route_version=version))
                    else:
                        # Only answers without a write (unknown tenants, from the cache):
                        # they stand if the routes are still those they were read under.
                        await publishing.check_route_version(conn, version)
                        written = iter([])
                except StaleRoutes:
                    self.routes.clear()
                    continue
                break
            else:
                raise ConnectionError("tenants and destinations keep changing; try again")
        self.transactions += 1
        self.events += len(planned)
        return [
            error if error is not None else _answers(plans, written)
            for plans, error in zip(per_unit, errors, strict=True)
        ]


class RouteCache:
    """Tenants' routes as of one route version (relay.route_version), read on demand.

    Everything cached was read under ``version``; reading a tenant under a newer version
    drops the rest. Callers pass the version to the write, which checks it in the same
    snapshot as its inserts, so a cached route is never used once the change that made
    it stale has committed.
    """

    def __init__(self, max_tenants: int = 10_000) -> None:
        self.version: int | None = None
        # Tenant id -> its live destinations, or None: no such live tenant.
        self._tenants: dict[str, list[DestinationRoute] | None] = {}
        self._max_tenants = max_tenants
        self.reads = 0

    def clear(self) -> None:
        self.version = None
        self._tenants.clear()

    async def lookup(
        self, conn: asyncpg.Connection, tenant_ids: set[str]
    ) -> tuple[int, dict[str, list[DestinationRoute] | None], bool]:
        """(version, tenant id -> routes or None, whether all were read just now)."""
        fresh = False
        while missing := sorted(tenant_ids - self._tenants.keys()):
            routes = await publishing.tenant_routes(conn, missing)
            self.reads += 1
            fresh = len(missing) == len(tenant_ids)
            if routes.version != self.version:
                # What is cached was read under another version: it goes. If the group
                # needed some of it, the loop reads every tenant of the group again.
                self._tenants.clear()
                self.version = routes.version
            elif len(self._tenants) + len(missing) > self._max_tenants:
                self._tenants.clear()
            for tenant_id in missing:
                self._tenants[tenant_id] = routes.tenants.get(tenant_id)
        assert self.version is not None
        return self.version, {t: self._tenants[t] for t in tenant_ids}, fresh


def _answers(
    plans: Sequence[Planned | Published | RelayError], written: Iterator[Published]
) -> list[Published]:
    """A valid unit's answers: each written event's, in order, and those needing no write."""
    answers = []
    for p in plans:
        assert not isinstance(p, RelayError)
        answers.append(next(written) if isinstance(p, Planned) else p)
    return answers


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, skipped: these connections never change their session
    (no SET, LISTEN, advisory lock or open transaction), and the default reset costs a
    round trip per group."""


def _answer(unit: _Unit, answer: list[Published] | RelayError) -> None:
    if isinstance(answer, RelayError):
        _fail(unit, answer)
    elif not unit.answer.done():
        unit.answer.set_result(answer)


def _fail(unit: _Unit, exc: BaseException) -> None:
    if unit.answer.done():
        return
    code = sqlstate(exc)
    if code is not None and (code.startswith("22") or code == "54000"):
        # A value PostgreSQL cannot store (a NUL in a string, a value too large for an
        # index, ...): the client's to fix.
        exc = BadRequest(f"the request holds a value PostgreSQL cannot take: {exc}")
    unit.answer.set_exception(exc)
