"""Publishing: validate -> route -> write the event and its outbox rows.

Every way of publishing goes through here: the HTTP handlers (via group commit,
``relay/groupcommit.py``), producers calling ``publish`` inside their own transaction,
and the router that routes events written by the ``relay.publish()`` SQL function. So
validation, idempotency and routing (``relay/routing.py``) have one implementation.

Nothing here commits or rolls back. ``conn`` is the caller's: an SQLAlchemy
``AsyncConnection`` or an asyncpg ``Connection``. Validation and routing read only, and
relay's own errors (``relay/errors.py``) are raised before anything is written, so they
leave the caller's transaction usable. An error PostgreSQL raises (a value it cannot
store, a lost connection) aborts the caller's transaction as any failed statement does,
unless the caller wrapped the call in a savepoint.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from relay import routing
from relay.db import publishing
from relay.db.publishing import DestinationRoute
from relay.errors import NotFound, RelayError, ValidationFailed

# What the publish functions accept as the caller's connection.
Connection: TypeAlias = AsyncConnection | asyncpg.Connection


# The publish path's values are built for every event: not frozen (a frozen dataclass
# sets each field through object.__setattr__, about 3x slower). Never mutated.
@dataclass(slots=True)
class Event:
    tenant_id: str
    topic: str
    # The producer's `data` object, already serialized (key order kept).
    data: bytes
    id: str | None = None
    eligible_for_retry: bool = True
    destination_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    time: datetime | None = None
    # What receivers get instead of `data`, already serialized (pod events: an envelope).
    body: bytes | None = None
    # The W3C traceparent of the span that published it (relay/tracing.py sets it when
    # tracing is on; a producer may set its own): delivery attempts' spans are its
    # children, in whichever process sends them.
    trace_context: str | None = None


@dataclass(slots=True)
class Published:
    id: str
    duplicate: bool
    destination_ids: list[str]
    # False: answered without being written (an unknown tenant, not strict).
    stored: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "duplicate": self.duplicate, "destination_ids": self.destination_ids}


@dataclass(slots=True)
class Planned:
    """A valid event with its id and the destinations it goes to; nothing written yet."""

    event: Event
    id: str
    destination_ids: list[str]
    # Ordered destinations among them: destination id -> the event's ordering key there.
    ordering_keys: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.event.tenant_id, self.id)


def new_event_id() -> str:
    """``evt_`` and a version 7 UUID in hex (``time_ordered_hex``)."""
    return "evt_" + time_ordered_hex()


def time_ordered_hex() -> str:
    """A version 7 UUID (RFC 9562) in hex: 48 bits of Unix milliseconds, then 74 random
    bits. Unique in practice (74 random bits within each millisecond), and ordered by
    time.

    Time-ordered on purpose: an event's id is a key of two btree indexes (``(tenant_id,
    id)`` and ``id``). Random ids land on random leaf pages, so as history grows each
    publish dirties pages all over those indexes (and, the first time after a checkpoint,
    writes each of them whole to the WAL); ids that grow with time are appended near the
    right edge. Built from the bytes directly: this runs on every publish without an id,
    and the UUID class costs several times more."""
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    return raw.hex()


# How deep an event's `data` may nest: orjson's limit for writing JSON (a deeper value
# cannot be written back by the APIs that answer with it). Deeper data is refused at
# publish, naming the field, rather than accepted and unreadable later.
MAX_DATA_DEPTH = 254
TOO_DEEP = f"nests deeper than {MAX_DATA_DEPTH} levels, relay's limit"

# The instants PostgreSQL and Python can both hold: an event's time must be one of these,
# or it could be stored but never read back.
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
TIME_RANGE = "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z (in UTC)"


# PostgreSQL cannot hold NUL in text, nor take \u0000 from JSON it has to read.
NUL_IN_DATA = "must not contain NUL (\\u0000) in a string or key: PostgreSQL cannot store it"
# What an event id and topic may not hold: they travel as HTTP header values
# (webhook-id, x-outpost-event-id, x-outpost-topic), which cannot carry control characters;
# such an event could be stored but never delivered.
CONTROL = re.compile("[\x00-\x1f\x7f]")
NO_CONTROL = "must not contain control characters (it is sent in an HTTP header)"


def holds_nul(serialized: bytes, value: Any) -> bool:
    """Does a string or key of ``value`` (whose serialization is ``serialized``) hold NUL?

    The search is the cheap part, and finds nothing in almost every event; only then is
    the value itself walked (an escaped backslash before "u0000" looks the same)."""
    if b"\\u0000" not in serialized:
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            if any("\x00" in key for key in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def data_json(value: Any) -> bytes | None:
    """``value`` serialized compactly, or None when it nests deeper than MAX_DATA_DEPTH."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # The only way a parsed JSON value fails to serialize: too deep.
        return None


def time_problem(value: datetime | None) -> str | None:
    """Why an event's time cannot be stored and read back, or None. A time without an
    offset is UTC, as relay stores it."""
    if value is None:
        return None
    try:
        in_utc = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        return TIME_RANGE
    if not EARLIEST <= in_utc <= LATEST:
        return TIME_RANGE
    return None


def check_topic(topic: str, catalogue: Sequence[str]) -> None:
    """With a topic catalogue configured, only its topics may be published, and ``*``
    (which goes to every destination), as Outpost allows it."""
    if catalogue and topic != "*" and topic not in catalogue:
        raise ValidationFailed(
            [f"topic {topic!r} is not one of the configured topics: {', '.join(catalogue)}"]
        )


async def publish(conn: Connection, event: Event, *, topics: Sequence[str] = ()) -> Published:
    """Publish one event in the caller's transaction, as ``POST /api/v1/publish`` does.

    ``topics`` is the topic catalogue to enforce (``Settings.topics``), none by default.
    Raises NotFound (tenant, destination_id) or ValidationFailed (topic, destination_id)
    before writing anything: always, as ``api.strict_publish = true`` has the HTTP API
    answer (by default it answers 202 with no destinations, as Outpost does; a caller
    here is code that can act on the error). The caller's commit makes the event durable
    and wakes the dispatchers; its rollback means the event never existed.
    """
    (result,) = await publish_many(conn, [event], topics=topics)
    if isinstance(result, RelayError):
        raise result
    return result


async def publish_many(
    conn: Connection, events: Sequence[Event], *, topics: Sequence[str] = ()
) -> list[Published | RelayError]:
    """Publish several events, each on its own: an invalid one gets its error in its
    place and is not written; the others are. Multi-row statements throughout."""
    driver = await driver_connection(conn)
    async with _atomic(driver):
        plans = await plan(driver, events, topics=topics)
        written = iter(await write(driver, [p for p in plans if isinstance(p, Planned)]))
    return [p if isinstance(p, RelayError) else next(written) for p in plans]


async def publish_copies(
    conn: Connection, events: Sequence[Event], *, topics: Sequence[str] = ()
) -> list[Published]:
    """Publish several events in the caller's transaction, all or nothing.

    The pod API's fan-out: one copy of an event per receiving tenant, under the same id,
    each routed to that tenant's destinations exactly as ``publish`` routes any event.
    """
    driver = await driver_connection(conn)
    async with _atomic(driver):
        return await write(driver, valid_plans(await plan(driver, events, topics=topics)))


def valid_plans(plans: Sequence[Planned | RelayError]) -> list[Planned]:
    """All the plans, or the first error among them."""
    for p in plans:
        if isinstance(p, RelayError):
            raise p
    return [p for p in plans if isinstance(p, Planned)]


async def plan(
    conn: asyncpg.Connection, events: Sequence[Event], *, topics: Sequence[str] = ()
) -> list[Planned | RelayError]:
    """Validate and route each event (reads only: one query for all the tenants).

    Unlike the HTTP handlers, which parsed what they pass on, a Python caller serialized
    ``data`` and ``body`` itself: each must be one JSON value, since the write embeds
    them in its statement as they are."""
    routes = await publishing.tenant_routes(conn, sorted({e.tenant_id for e in events}))
    # These checks first: routing parses data when a destination has a filter.
    return [
        _unwritable(event) or _plan_or_error(event, routes.tenants.get(event.tenant_id), topics)
        for event in events
    ]


def _unwritable(event: Event) -> ValidationFailed | None:
    """What the HTTP handlers check while parsing a request (relay/api/outpost.py and
    pod.py), checked here for a Python caller: every value must be one PostgreSQL can
    store and relay can read back and send. Not on the HTTP path: done there already."""
    problem = time_problem(event.time)
    if problem is not None:
        return ValidationFailed([f"time {problem}"])
    for name, text in (("id", event.id), ("topic", event.topic)):
        if text and CONTROL.search(text):
            return ValidationFailed([f"{name} {NO_CONTROL}"])
    for name, value in (("data", event.data), ("body", event.body)):
        if value is None:
            continue
        try:
            # orjson, as the HTTP handlers parse bodies: the same JSON is accepted.
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return ValidationFailed([f"{name} must be one serialized JSON value: {exc}"])
        serialized = data_json(parsed)
        if serialized is None:
            return ValidationFailed([f"{name} {TOO_DEEP}"])
        if holds_nul(serialized, parsed):
            return ValidationFailed([f"{name} {NUL_IN_DATA}"])
    return None


def plan_routed(
    tenants: Mapping[str, Sequence[DestinationRoute] | None],
    events: Sequence[Event],
    *,
    topics: Sequence[str] = (),
    strict: bool = True,
) -> list[Planned | Published | RelayError]:
    """``plan`` with the tenants' routes at hand (a missing or None tenant: not found).

    ``strict=False`` answers as Outpost's HTTP API does (``api.strict_publish`` off): an
    event for an unknown tenant is answered as published to nothing and is not written
    (a Published in its place, not a Planned), and a ``destination_id`` that is unknown,
    disabled or not subscribed routes the event nowhere instead of being an error."""
    plans: list[Planned | Published | RelayError] = []
    for event in events:
        destinations = tenants.get(event.tenant_id)
        found: Planned | Published | RelayError = _plan_or_error(
            event, destinations, topics, strict
        )
        if destinations is None and not strict and isinstance(found, NotFound):
            # Nothing to store it under: history belongs to a tenant. A repeat of the id
            # is answered the same way (not as a duplicate), as in Outpost.
            found = Published(event.id or new_event_id(), False, [], stored=False)
        plans.append(found)
    return plans


def _plan_or_error(
    event: Event,
    destinations: Sequence[DestinationRoute] | None,
    topics: Sequence[str],
    strict: bool = True,
) -> Planned | RelayError:
    try:
        return _plan(event, destinations, topics, strict)
    except RelayError as exc:
        return exc


def _plan(
    event: Event,
    destinations: Sequence[DestinationRoute] | None,
    topics: Sequence[str],
    strict: bool = True,
) -> Planned:
    check_topic(event.topic, topics)
    if destinations is None:
        raise NotFound(f"tenant {event.tenant_id!r} not found")
    if event.destination_id is not None and strict:
        _check_explicit_destination(destinations, event)
    event_id = event.id or new_event_id()
    destination_ids = route_event(
        destinations,
        event_id,
        event.topic,
        event.destination_id,
        event.metadata,
        event.data,
        event.time,
    )
    keys = {
        d.id: key
        for d in destinations
        if d.ordering_key is not None and (key := d.key_of(event.metadata)) is not None
    }
    return Planned(event, event_id, destination_ids, keys)


def route_event(
    destinations: Sequence[DestinationRoute],
    event_id: str,
    topic: str,
    destination_id: str | None,
    metadata: Mapping[str, str],
    data: bytes | str,
    time: datetime | None,
) -> list[str]:
    """The destinations an event goes to: topic subscriptions, then destination filters.

    The one routing rule for HTTP, Python and SQL publishes (the router calls it too).
    An event without a time is written with the time of its transaction: filters see now.
    """
    chosen = routing.route(destinations, topic, destination_id)
    filters = {d.id: orjson.loads(d.filter) for d in destinations if d.filter and d.id in chosen}
    if not filters:
        return chosen
    subject = routing.filter_subject(
        event_id, topic, metadata, orjson.loads(data), time or datetime.now(UTC)
    )
    return [d for d in chosen if routing.filter_matches(filters.get(d), subject)]


async def write(
    conn: asyncpg.Connection, plans: Sequence[Planned], *, route_version: int | None = None
) -> list[Published]:
    """Write planned events and their outbox rows: one statement for all of them, so on
    an autocommit connection the whole group is one round trip and one commit.

    ``route_version``: the version of the routes the plans were made with (cached
    routes); if the routes have changed since, StaleRoutes is raised and nothing written.

    An id already published for its tenant (earlier, or earlier in ``plans``) is a
    duplicate: nothing is written and the first publish's destinations are answered.
    """
    first: dict[tuple[str, str], Planned] = {}
    for p in plans:
        first.setdefault(p.key, p)
    # Destination order, as the dispatcher's health update locks them: no deadlock.
    deliveries = sorted(
        (
            (p.event.tenant_id, p.id, d, p.ordering_keys.get(d) if p.ordering_keys else None)
            for p in first.values()
            for d in p.destination_ids
        ),
        key=lambda r: (r[0], r[2]),
    )
    # Events in key order too: two groups that share ids (a producer's retries racing)
    # then take their unique-index locks in the same order and cannot deadlock.
    rows = [_row(p) for p in sorted(first.values(), key=lambda p: p.key)]
    seqs = await publishing.write_events(conn, rows, deliveries, route_version)
    winners = {id(p) for p in first.values() if p.key in seqs}
    # Published before this call (or concurrently): ask the database. A repeat of an id
    # this call wrote gets the same answer as its first publish.
    earlier = [key for key, p in first.items() if id(p) not in winners]
    existing = await publishing.event_destinations(conn, earlier)
    answers: list[Published] = []
    for p in plans:
        if id(p) in winners:
            answers.append(Published(p.id, False, p.destination_ids))
        elif p.key in seqs:
            answers.append(Published(p.id, True, first[p.key].destination_ids))
        else:
            answers.append(Published(p.id, True, existing.get(p.key, [])))
    return answers


def _row(p: Planned) -> publishing.NewEvent:
    e = p.event
    return publishing.NewEvent(
        tenant_id=e.tenant_id,
        id=p.id,
        topic=e.topic,
        data=e.data,
        body=e.body,
        metadata=dict(e.metadata),
        eligible_for_retry=e.eligible_for_retry,
        destination_id=e.destination_id,
        # As the instant in UTC: PostgreSQL refuses offsets of 16 hours or more, which
        # RFC 3339 allows (the offset itself is not kept either way).
        time=e.time.astimezone(UTC) if e.time is not None and e.time.tzinfo else e.time,
        trace_context=e.trace_context,
    )


async def driver_connection(conn: Connection) -> asyncpg.Connection:
    """The asyncpg connection under ``conn``, inside the caller's transaction."""
    if isinstance(conn, asyncpg.Connection):
        return conn
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    if not driver.is_in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN with its first statement; make it
        # send it now, so what we write belongs to the caller's transaction.
        await conn.exec_driver_sql("SELECT 1")
    return driver


@contextlib.asynccontextmanager
async def _atomic(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """The caller's transaction when there is one; else one of our own (autocommit
    connections still get an event and its outbox rows together or not at all)."""
    if conn.is_in_transaction():
        yield
    else:
        async with conn.transaction():
            yield


def _check_explicit_destination(destinations: Sequence[DestinationRoute], event: Event) -> None:
    found = next((d for d in destinations if d.id == event.destination_id), None)
    if found is None:
        raise NotFound(
            f"destination {event.destination_id!r} not found for tenant {event.tenant_id!r}"
        )
    if not found.enabled:
        raise ValidationFailed([f"destination_id {event.destination_id!r} is disabled"])
    if not routing.any_topic_matches(found.topics, event.topic):
        raise ValidationFailed(
            [f"destination_id {event.destination_id!r} is not subscribed to topic {event.topic!r}"]
        )
