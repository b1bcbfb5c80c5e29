"""Reading history: events and attempts, filtered, in seek-paginated pages.

Pages are ordered by (time, surrogate key) and continued from the last row seen, never
by OFFSET, so each page is an index range scan: ``ix_events_tenant_id_time`` /
``ix_events_time`` for events, ``ix_attempts_tenant_id_started`` / ``ix_attempts_started``
(and ``ix_attempts_destination_started``) for attempts. Only the conditions a request
uses are put in the statement, so the planner sees each query's real shape.

Cursors are opaque to clients: base64 of (list kind, direction, time, key, way). A cursor
is a position, not a query, so it stays correct whatever filters or time window it is
combined with.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Text

from relay.db.tables import TS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --- cursors -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where a row sits in a listing: its time, then its key (seq, attempt id, tenant id)."""

    time: datetime
    key: int | str


@dataclass(frozen=True, slots=True)
class Cursor:
    kind: str
    descending: bool
    at: Position
    # A ``prev`` cursor: the page before ``at`` rather than after it.
    backwards: bool = False


class BadCursor(ValueError):
    """The cursor cannot be read or belongs to another listing."""


def encode_cursor(cursor: Cursor) -> str:
    micros = (cursor.at.time - EPOCH) // timedelta(microseconds=1)
    raw = orjson.dumps(
        [cursor.kind, "d" if cursor.descending else "a", micros, cursor.at.key, cursor.backwards]
    )
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str, *, kind: str, descending: bool) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        got_kind, direction, micros, key, backwards = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise BadCursor(
            "cursor cannot be read; pass back pagination.next or .prev as given"
        ) from None
    if got_kind != kind:
        raise BadCursor("cursor belongs to another listing")
    if direction != ("d" if descending else "a"):
        raise BadCursor("cursor was issued for the other sort direction (dir)")
    valid_key = (isinstance(key, int) and not isinstance(key, bool)) or isinstance(key, str)
    if not (isinstance(micros, int) and valid_key and isinstance(backwards, bool)):
        raise BadCursor("cursor cannot be read; pass back pagination.next or .prev as given")
    try:
        time = EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise BadCursor("cursor cannot be read") from None
    return Cursor(kind, descending, Position(time, key), backwards)


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    rows: list[R]
    next: str | None
    prev: str | None


# fetch(after, descending, limit): up to ``limit`` rows strictly past ``after`` (or from
# the start) in that order.
Fetch = Callable[[Position | None, bool, int], Awaitable[list[R]]]


async def paginate(
    fetch: Fetch[R],
    position: Callable[[R], Position],
    *,
    kind: str,
    limit: int,
    descending: bool,
    cursor: Cursor | None,
) -> Page[R]:
    """One page in display order, with cursors to the pages around it (None at an end)."""
    backwards = cursor is not None and cursor.backwards
    rows = await fetch(cursor.at if cursor else None, descending != backwards, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    if not rows:
        return Page([], None, None)

    async def beyond(row: R, forward: bool) -> bool:
        return bool(await fetch(position(row), descending if forward else not descending, 1))

    if backwards:
        has_prev, has_next = more, await beyond(rows[-1], True)
    else:
        has_next = more
        has_prev = cursor is not None and await beyond(rows[0], False)
    next_cursor = prev_cursor = None
    if has_next:
        next_cursor = encode_cursor(Cursor(kind, descending, position(rows[-1])))
    if has_prev:
        prev_cursor = encode_cursor(Cursor(kind, descending, position(rows[0]), backwards=True))
    return Page(rows, next_cursor, prev_cursor)


# --- filters -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeRange:
    gte: datetime | None = None
    lte: datetime | None = None
    gt: datetime | None = None
    lt: datetime | None = None


class Where:
    """Collects the conditions (and their typed parameters) a query actually uses."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.params: dict[str, Any] = {}
        self.types: dict[str, Any] = {}

    def add(self, condition: str, **params: tuple[Any, Any]) -> None:
        self.conditions.append(condition)
        for name, (value, type_) in params.items():
            self.bind(name, value, type_)

    def bind(self, name: str, value: Any, type_: Any) -> None:
        """A parameter the statement uses outside the conditions (a LIMIT, say)."""
        self.params[name] = value
        self.types[name] = type_

    def any_of(self, column: str, name: str, values: Sequence[str]) -> None:
        if len(values) == 1:
            self.add(f"{column} = :{name}", **{name: (values[0], Text)})
        elif values:
            self.add(f"{column} = ANY(:{name})", **{name: (list(values), ARRAY(Text))})

    def time(self, column: str, window: TimeRange) -> None:
        for op, sql in (("gte", ">="), ("lte", "<="), ("gt", ">"), ("lt", "<")):
            value = getattr(window, op)
            if value is not None:
                self.add(f"{column} {sql} :time_{op}", **{f"time_{op}": (value, TS)})

    def seek(self, columns: str, after: Position | None, descending: bool, key_type: Any) -> None:
        if after is not None:
            op = "<" if descending else ">"
            self.add(
                f"({columns}) {op} (:after_time, :after_key)",
                after_time=(after.time, TS),
                after_key=(after.key, key_type),
            )

    def sql(self) -> str:
        return " AND ".join(self.conditions) if self.conditions else "true"

    def statement(self, sql: str) -> Any:
        return text(sql).bindparams(*(bindparam(n, type_=t) for n, t in self.types.items()))


# --- events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    tenant_ids: Sequence[str] = ()
    ids: Sequence[str] = ()
    topics: Sequence[str] = ()
    destination_ids: Sequence[str] = ()
    time: TimeRange = field(default_factory=TimeRange)


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    tenant_id: str
    id: str
    topic: str
    time: datetime
    eligible_for_retry: bool
    destination_id: str | None
    metadata: dict[str, str]
    # The stored JSON text as an orjson.Fragment: written into answers as it is.
    data: orjson.Fragment
    matched_destination_ids: list[str]

    @property
    def position(self) -> Position:
        return Position(self.time, self.seq)


EVENTS = """
    SELECT e.seq, e.tenant_id, e.id, e.topic, e.time, e.eligible_for_retry,
           e.destination_id, e.metadata, e.data::text AS data,
           ARRAY(SELECT d.destination_id FROM relay.deliveries d
                 WHERE d.event_seq = e.seq ORDER BY d.id) AS matched_destination_ids
    FROM relay.events e
    WHERE {where}
    ORDER BY {order_by}
    LIMIT :limit
"""


def _event(row: Row[Any]) -> EventRow:
    return EventRow(
        seq=row.seq,
        tenant_id=row.tenant_id,
        id=row.id,
        topic=row.topic,
        time=row.time,
        eligible_for_retry=row.eligible_for_retry,
        destination_id=row.destination_id,
        metadata=dict(row.metadata or {}),
        # As stored (the producer's bytes), not parsed: it goes out as it came in, at
        # any depth PostgreSQL accepted, with key order and number spelling kept.
        data=orjson.Fragment(row.data),
        matched_destination_ids=list(row.matched_destination_ids),
    )


def _event_where(f: EventFilter) -> Where:
    where = Where()
    where.any_of("e.tenant_id", "tenant_ids", f.tenant_ids)
    where.any_of("e.id", "ids", f.ids)
    where.any_of("e.topic", "topics", f.topics)
    if f.destination_ids:
        where.add(
            "EXISTS (SELECT 1 FROM relay.deliveries d WHERE d.event_seq = e.seq"
            " AND d.destination_id = ANY(:destination_ids))",
            destination_ids=(list(f.destination_ids), ARRAY(Text)),
        )
    where.time("e.time", f.time)
    return where


async def list_events(
    conn: AsyncConnection, f: EventFilter, *, limit: int, descending: bool, cursor: Cursor | None
) -> Page[EventRow]:
    async def fetch(after: Position | None, desc: bool, n: int) -> list[EventRow]:
        where = _event_where(f)
        where.seek("e.time, e.seq", after, desc, BigInteger)
        order = "DESC" if desc else "ASC"
        order_by = f"e.time {order}, e.seq {order}"
        statement = where.statement(EVENTS.format(where=where.sql(), order_by=order_by))
        result = await conn.execute(statement, where.params | {"limit": n})
        return [_event(r) for r in result]

    return await paginate(
        fetch,
        lambda r: r.position,
        kind="events",
        limit=limit,
        descending=descending,
        cursor=cursor,
    )


async def get_event(
    conn: AsyncConnection, event_id: str, tenant_ids: Sequence[str] = ()
) -> EventRow | None:
    """An event by id. Should two tenants have used the id (and no tenant be given), the
    one published last: seq follows publish order, where an event's time is the
    producer's to choose. (Outpost answers either, as its query happens to find it.)"""
    where = _event_where(EventFilter(tenant_ids=tenant_ids, ids=[event_id]))
    statement = where.statement(EVENTS.format(where=where.sql(), order_by="e.seq DESC"))
    row = (await conn.execute(statement, where.params | {"limit": 1})).first()
    return None if row is None else _event(row)


# --- attempts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptFilter:
    tenant_ids: Sequence[str] = ()
    event_ids: Sequence[str] = ()
    destination_ids: Sequence[str] = ()
    topics: Sequence[str] = ()
    status: str | None = None
    time: TimeRange = field(default_factory=TimeRange)
    # Attempts to destinations of these types (relay/delivery/registry.py).
    destination_types: Sequence[str] = ()


# Attempts whose duration_ms is no destination's response time: never sent (refused by
# the SSRF guard, a request that could not be built, relay's own failure, a type this
# relay cannot deliver, a quarantined row) or cut short with no outcome (its dispatcher
# died or stopped: the duration is the lease's). Their latency is null, as Outpost's
# latency_ms is for attempts "that never reached the provider"; averages and percentiles
# leave them out.
UNTIMED_CODES = (
    "blocked_address",
    "invalid_request",
    "invalid_url",
    "internal_error",
    "unavailable",
    "unprocessable",
    "lease_expired",
    "interrupted",
)
# The same as SQL, over relay.attempts as ``a`` (constants only: no user input).
LATENCY_SQL = (
    "CASE WHEN a.error_code IN ("
    + ", ".join(f"'{code}'" for code in UNTIMED_CODES)
    + ") THEN NULL ELSE a.duration_ms END"
)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    id: int
    tenant_id: str
    destination_id: str
    number: int
    status: str
    http_status: int | None
    error_code: str | None
    error_detail: str | None
    response_body: str | None
    response_headers: dict[str, Any] | None
    duration_ms: int
    manual: bool
    started_at: datetime
    event_id: str
    topic: str
    event_time: datetime
    eligible_for_retry: bool
    event_metadata: dict[str, str]
    # As EventRow.data, when asked for.
    event_data: orjson.Fragment | None

    @property
    def position(self) -> Position:
        return Position(self.started_at, self.id)

    @property
    def latency_ms(self) -> int | None:
        """How long the destination took to answer (or fail); None when not timed."""
        return None if self.error_code in UNTIMED_CODES else self.duration_ms


ATTEMPTS = """
    SELECT a.id, a.tenant_id, a.destination_id, a.number, a.status, a.http_status,
           a.error_code, a.error_detail, a.response_body, a.response_headers,
           a.duration_ms, a.manual, a.started_at,
           e.id AS event_id, e.topic, e.time AS event_time, e.eligible_for_retry,
           e.metadata AS event_metadata, {data} AS event_data
    FROM relay.attempts a
    JOIN relay.events e ON e.seq = a.event_seq
    WHERE {where}
    ORDER BY a.started_at {order}, a.id {order}
    LIMIT :limit
"""


def _attempt(row: Row[Any]) -> AttemptRow:
    return AttemptRow(
        id=row.id,
        tenant_id=row.tenant_id,
        destination_id=row.destination_id,
        number=row.number,
        status=row.status,
        http_status=row.http_status,
        error_code=row.error_code,
        error_detail=row.error_detail,
        response_body=row.response_body,
        response_headers=row.response_headers,
        duration_ms=row.duration_ms,
        manual=row.manual,
        started_at=row.started_at,
        event_id=row.event_id,
        topic=row.topic,
        event_time=row.event_time,
        eligible_for_retry=row.eligible_for_retry,
        event_metadata=dict(row.event_metadata or {}),
        event_data=None if row.event_data is None else orjson.Fragment(row.event_data),
    )


def _attempt_where(f: AttemptFilter) -> Where:
    where = Where()
    where.any_of("a.tenant_id", "tenant_ids", f.tenant_ids)
    where.any_of("a.destination_id", "destination_ids", f.destination_ids)
    where.any_of("e.id", "event_ids", f.event_ids)
    where.any_of("e.topic", "topics", f.topics)
    if f.destination_types:
        # The attempt's own type once its destination's row no longer says it (0018).
        where.add(
            "(a.destination_type = ANY(:destination_types) OR a.destination_type IS NULL"
            " AND EXISTS (SELECT 1 FROM relay.destinations t WHERE t.tenant_id = a.tenant_id"
            " AND t.id = a.destination_id AND t.type = ANY(:destination_types)))",
            destination_types=(list(f.destination_types), ARRAY(Text)),
        )
    if f.status is not None:
        where.add("a.status = :status", status=(f.status, Text))
    where.time("a.started_at", f.time)
    return where


def _attempts_sql(where: Where, order: str, with_data: bool) -> Any:
    data = "e.data::text" if with_data else "NULL::text"
    return where.statement(ATTEMPTS.format(data=data, where=where.sql(), order=order))


async def list_attempts(
    conn: AsyncConnection,
    f: AttemptFilter,
    *,
    limit: int,
    descending: bool,
    cursor: Cursor | None,
    with_data: bool = False,
) -> Page[AttemptRow]:
    async def fetch(after: Position | None, desc: bool, n: int) -> list[AttemptRow]:
        where = _attempt_where(f)
        where.seek("a.started_at, a.id", after, desc, BigInteger)
        statement = _attempts_sql(where, "DESC" if desc else "ASC", with_data and n > 1)
        result = await conn.execute(statement, where.params | {"limit": n})
        return [_attempt(r) for r in result]

    return await paginate(
        fetch,
        lambda r: r.position,
        kind="attempts",
        limit=limit,
        descending=descending,
        cursor=cursor,
    )


async def get_attempt(
    conn: AsyncConnection, attempt_id: int, f: AttemptFilter, *, with_data: bool = False
) -> AttemptRow | None:
    where = _attempt_where(f)
    where.add("a.id = :attempt_id", attempt_id=(attempt_id, BigInteger))
    row = (
        await conn.execute(_attempts_sql(where, "DESC", with_data), where.params | {"limit": 1})
    ).first()
    return None if row is None else _attempt(row)
