"""Properties of the two publish APIs (issue 18), with whatever a producer may send.

Hypothesis draws valid and invalid events for ``POST /api/v1/publish`` and ``POST
/publish/``. For every request:

1. the answer is never a 5xx: it is 202/201, or a 4xx in the API's error shape that
   names what was wrong;
2. an accepted event reads back through the API (``GET /api/v1/events/{id}``, the
   listing, ``GET /api/v1/attempts``, the pod API's ``GET /publish/{id}``), with the
   ``data`` that was sent (as JSON values, key order included);
3. an accepted event is in the SQL views, and every column of its rows decodes;
4. a refused request wrote nothing.

A publish for a tenant that does not exist is refused with a 404 under
``api.strict_publish``; by default it is accepted as Outpost accepts it (202, routed
nowhere) and, like a refused one, writes nothing. The Outpost-API test runs both ways.

A third test runs the dispatcher too, so that an accepted event's attempt is in
``delivery_log`` and ``GET /api/v1/attempts``; a fourth checks the pod API's item limit.

One relay and one database serve all the examples of a test (the dispatcher is off but
in the third). Each Outpost-API example publishes into a tenant of its own, so ids never
collide. A failure prints the drawn example, the body sent and the answer (``note``);
runs are derandomized, so a failure comes back the same way on the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pytest
import yarl
from hypothesis import HealthCheck, Phase, assume, event, example, given, note, reject, settings
from hypothesis import strategies as st

from tests.support.jsonvalues import (
    DATA,
    DELIVERABLE_DATA,
    DEPTH_LIMIT,
    NOT_OBJECTS,
    OBJECTS,
    SPELLINGS,
    TEXT,
    VALUES,
    DataSpec,
    Spelling,
    deep_stack,
    depth,
    encode,
    encode_string,
    exact,
    holds_nul,
    member,
    short,
)
from tests.support.relay import admin_headers, make_settings

MAX_BODY = 1_048_576  # server.max_body_bytes, the default
POD_MAX_ITEMS = 1000  # server.max_publish_items, the default

PROPERTY_SETTINGS = settings(
    max_examples=80,
    deadline=None,
    database=None,
    derandomize=True,
    print_blob=True,
    # No explain phase: on a live relay it costs minutes and adds little to the example.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    # One relay and one database serve every example of a test, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Absent:
    """A member the body leaves out."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# tenant_id placeholders: the example's own tenant, and one that does not exist.
OUR_TENANT: Any = _Marker("OUR_TENANT")
NO_SUCH_TENANT: Any = _Marker("NO_SUCH_TENANT")

NO_NUL = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
WITH_NUL = st.tuples(st.text(NO_NUL, max_size=5), st.text(NO_NUL, max_size=5)).map(
    lambda parts: parts[0] + "\x00" + parts[1]
)
# Ids and topics travel in HTTP headers: no control characters (relay refuses them).
SENDABLE = st.characters(
    exclude_categories=("Cs",),
    exclude_characters="".join(map(chr, [*range(0x20), 0x7F])),
)
WITH_CONTROL = st.tuples(
    st.text(SENDABLE, max_size=5),
    st.sampled_from([*map(chr, range(1, 0x20)), "\x7f"]),
    st.text(SENDABLE, max_size=5),
).map("".join)
WRONG_SCALARS = (
    st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
)
CONTAINERS = st.lists(VALUES, max_size=2) | st.dictionaries(TEXT, VALUES, max_size=2)


# --- what an answer must look like --------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """An acceptable refusal: one of ``statuses``, naming one of ``names``; for a pod
    array item, its ``index``."""

    statuses: tuple[int, ...]
    names: tuple[str, ...]
    index: int | None = None

    def __repr__(self) -> str:
        statuses = "4xx" if self.statuses == FOUR_XX else "/".join(map(str, self.statuses))
        at = "" if self.index is None else f" at index {self.index}"
        return f"{statuses} naming {' or '.join(self.names)}{at}"


FOUR_XX = tuple(range(400, 500))


@dataclass
class Expect:
    """What relay must answer: accepted when there are no refusals, else one of them."""

    refusals: list[Refusal] = field(default_factory=list)
    # At a boundary where either answer is right (accepted, or one of the refusals).
    may_accept: bool = False
    # Accepted but not stored: an unknown tenant's event (api.strict_publish off).
    stored: bool = True

    @property
    def accepted(self) -> bool:
        return not self.refusals

    def __repr__(self) -> str:
        if self.accepted:
            return "accepted"
        shown = ", ".join(map(repr, self.refusals[:4]))
        if len(self.refusals) > 4:
            shown += f", ... ({len(self.refusals)} in all)"
        return f"refused: {shown}" + (" (or accepted)" if self.may_accept else "")


def names_it(message: str, extra: Any, refusal: Refusal) -> bool:
    said = (message + " " + repr(extra)).lower()
    return any(name.lower() in said for name in refusal.names)


# --- time -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """An RFC 3339 date-time; ``offset`` in minutes east of UTC, None for ``Z``."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    fraction: str = ""
    offset: int | None = None
    lower: bool = False

    def text(self) -> str:
        written = (
            f"{self.year:04d}-{self.month:02d}-{self.day:02d}T"
            f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}"
        )
        if self.fraction:
            written += "." + self.fraction
        if self.offset is None:
            written += "Z"
        else:
            sign = "-" if self.offset < 0 else "+"
            written += f"{sign}{abs(self.offset) // 60:02d}:{abs(self.offset) % 60:02d}"
        return written.lower() if self.lower else written

    def utc_micros(self) -> int:
        """The instant, in microseconds from 0001-01-01T00:00:00Z (fraction truncated)."""
        days = date(self.year, self.month, self.day).toordinal() - 1
        seconds = days * 86400 + self.hour * 3600 + self.minute * 60 + self.second
        seconds -= (self.offset or 0) * 60
        return seconds * 10**6 + int((self.fraction[:6] or "0").ljust(6, "0"))

    def in_range(self) -> bool:
        """Is the UTC instant within years 0001-9999?"""
        end = date(9999, 12, 31).toordinal() * 86400 * 10**6
        return 0 <= self.utc_micros() < end


def micros(value: datetime) -> int:
    value = value.astimezone(UTC)
    seconds = (value.toordinal() - 1) * 86400 + value.hour * 3600 + value.minute * 60
    return (seconds + value.second) * 10**6 + value.microsecond


DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@st.composite
def moments(draw: st.DrawFn) -> Moment:
    year = draw(st.sampled_from([1, 9999, 2026]) | st.integers(1, 9999))
    month = draw(st.integers(1, 12))
    last = DAYS_IN_MONTH[month - 1]
    if month == 2 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        last = 28
    limit = 23 * 60 + 59
    return Moment(
        year=year,
        month=month,
        day=draw(st.sampled_from([1, last]) | st.integers(1, last)),
        hour=draw(st.sampled_from([0, 23]) | st.integers(0, 23)),
        minute=draw(st.integers(0, 59)),
        second=draw(st.integers(0, 59)),
        fraction=draw(st.text("0123456789", max_size=12)),
        offset=draw(
            st.none()
            | st.sampled_from([0, 1, -1, 16 * 60, -16 * 60, limit, -limit])
            | st.integers(-limit, limit)
        ),
        lower=draw(st.booleans()),
    )


# Strings no RFC 3339 reading takes: out-of-range fields, broken syntax, words.
BAD_TIMES = st.sampled_from(
    [
        "",
        "now",
        "yesterday",
        "2026-00-10T00:00:00Z",
        "2026-13-10T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-01-32T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-01-10T25:00:00Z",
        "2026-01-10T00:60:00Z",
        "2026-01-10T00:00:61Z",
        "2026-01-10T00:00:00+24:00",
        "2026-01-10T00:00:00+00:60",
        "2026-01-10T00:00:00.Z",
        "2026/01/10T00:00:00Z",
        "2026-01-10X00:00:00Z",
        "2026-01-10T00:00:00Zjunk",
        "10000-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "T00:00:00Z",
        "2026-01-10T",
    ]
)


# --- POST /api/v1/publish -------------------------------------------------------------


@dataclass(frozen=True)
class OutpostCase:
    """A publish body: ``members`` in order (``data`` a DataSpec or a wrong value),
    written as ``spelling`` says, then ``damage`` done to the text, if any."""

    members: tuple[tuple[str, Any], ...]
    spelling: Spelling
    damage: str | None = None


DAMAGES = [
    "truncated",
    "trailing",
    "invalid_utf8",
    "raw_control",
    "lone_surrogate",
    "array",
    "string",
    "null",
    "empty",
]

VALID = {
    "id": st.just(ABSENT)
    | st.none()
    | st.text(SENDABLE, min_size=1, max_size=40)
    | st.text(SENDABLE, min_size=250, max_size=255),
    "tenant_id": st.just(OUR_TENANT),
    "topic": st.just(ABSENT)
    | st.none()
    | st.text(SENDABLE, max_size=40)
    | st.text(SENDABLE, min_size=250, max_size=255),
    "eligible_for_retry": st.just(ABSENT) | st.booleans(),
    "metadata": st.just(ABSENT)
    | st.none()
    | st.dictionaries(st.text(NO_NUL, max_size=8), st.text(NO_NUL, max_size=12), max_size=4),
    "time": st.just(ABSENT) | st.none() | moments(),
    "data": DATA,
}
INVALID = {
    "id": st.just("")
    | WITH_NUL
    | WITH_CONTROL
    | st.text(NO_NUL, min_size=256, max_size=300)
    | WRONG_SCALARS,
    "tenant_id": st.sampled_from([ABSENT, NO_SUCH_TENANT, "", None])
    | WITH_NUL
    | WRONG_SCALARS
    | CONTAINERS,
    "topic": WITH_NUL
    | WITH_CONTROL
    | st.text(NO_NUL, min_size=256, max_size=300)
    | WRONG_SCALARS
    | CONTAINERS,
    "eligible_for_retry": st.sampled_from([None, "true", "false", 0, 1, [], {}]),
    "metadata": WRONG_SCALARS
    | st.text(max_size=5)
    | st.lists(st.text(NO_NUL, max_size=3), max_size=2)
    | st.dictionaries(st.text(NO_NUL, max_size=5), WRONG_SCALARS | st.none(), min_size=1)
    | st.dictionaries(WITH_NUL, st.text(NO_NUL, max_size=3), min_size=1, max_size=1)
    | st.dictionaries(st.text(NO_NUL, max_size=3), WITH_NUL, min_size=1, max_size=1),
    "time": BAD_TIMES | st.booleans() | CONTAINERS,
    "data": st.just(ABSENT) | NOT_OBJECTS,
}
# Members relay does not know; it ignores them.
EXTRAS = st.dictionaries(st.sampled_from(["extra", "Data", "TIME", "idx"]), VALUES, max_size=2)


@st.composite
def outpost_cases(draw: st.DrawFn, *, deliverable: bool = False) -> OutpostCase:
    """Publish bodies, valid or with one thing wrong; with ``deliverable``, valid ones
    only, with data within relay's limits."""
    valid = VALID | {"data": DELIVERABLE_DATA} if deliverable else VALID
    # About half of the bodies are valid.
    problems = [None] * 7 + [*VALID, "body"]
    broken = None if deliverable else draw(st.sampled_from(problems))
    members = {
        name: draw(INVALID[name] if name == broken else strategy)
        for name, strategy in valid.items()
    }
    members |= draw(EXTRAS)
    order = draw(st.permutations(list(members)))
    present = tuple((name, members[name]) for name in order if members[name] is not ABSENT)
    damage = draw(st.sampled_from(DAMAGES)) if broken == "body" else None
    return OutpostCase(members=present, spelling=draw(SPELLINGS), damage=damage)


@dataclass
class Built:
    """A request body, with what went into it."""

    body: bytes
    members: dict[str, Any]
    data_text: str | None = None
    data: Any = None


def member_text(name: str, value: Any, tenant: str, spelling: Spelling) -> tuple[str, Any]:
    """The JSON text of one body member, and the value it stands for."""
    if value is OUR_TENANT:
        value = tenant
    elif value is NO_SUCH_TENANT:
        value = "missing-" + tenant
    elif isinstance(value, Moment):
        value = value.text()
    elif isinstance(value, DataSpec):
        value = value.value()
    return encode(value, spelling), value


def build_outpost(case: OutpostCase, tenant: str) -> Built:
    s = case.spelling.space
    parts, members = [], {}
    data_text = None
    with deep_stack():
        for name, value in case.members:
            text, members[name] = member_text(name, value, tenant, case.spelling)
            if name == "data":
                data_text = text
            parts.append(encode_string(name, case.spelling) + s + ":" + s + text)
    body = ("{" + s + ("," + s).join(parts) + s + "}").encode()
    body = damaged(body, case.damage)
    return Built(body, members, data_text, members.get("data"))


def damaged(body: bytes, damage: str | None) -> bytes:
    if damage == "truncated":
        return body[: len(body) // 2]
    if damage == "trailing":
        return body + b" x"
    if damage == "invalid_utf8":
        return b'{"\xff": 1, ' + body[1:]
    if damage == "raw_control":
        return b'{"\x01": 1, ' + body[1:]
    if damage == "lone_surrogate":
        return b'{"\\ud800": 1, ' + body[1:]
    if damage == "array":
        return b"[" + body + b"]"
    if damage == "string":
        return encode_string(body.decode(), Spelling()).encode()
    if damage == "null":
        return b"null"
    if damage == "empty":
        return b""
    return body


def is_text(value: Any, *, low: int = 0, high: int | None = None) -> bool:
    return (
        isinstance(value, str)
        and "\x00" not in value
        and low <= len(value)
        and (high is None or len(value) <= high)
    )


def sendable(value: Any) -> bool:
    """Text an HTTP header can carry: no control characters (an id's and a topic's)."""
    return is_text(value) and not any(ord(c) < 0x20 or c == "\x7f" for c in value)


def outpost_expectation(case: OutpostCase, built: Built, *, strict: bool) -> Expect:
    """What relay must answer: the contract, worked out from what was sent."""
    if len(built.body) > MAX_BODY:
        return Expect([Refusal((413,), ("body",))])
    body_level = {
        "truncated": Refusal((400,), ("JSON",)),
        "trailing": Refusal((400,), ("JSON",)),
        "invalid_utf8": Refusal((400,), ("JSON",)),
        "raw_control": Refusal((400,), ("JSON",)),
        "array": Refusal((422,), ("body",)),
        "string": Refusal((422,), ("body",)),
        "null": Refusal((422,), ("body",)),
        "empty": Refusal((400,), ("body",)),
    }
    if case.damage in body_level:
        return Expect([body_level[case.damage]])
    refusals = []
    m = built.members

    def refuse(name: str, statuses: tuple[int, ...] = (422,)) -> None:
        refusals.append(Refusal(statuses, (name,)))

    if (
        "id" in m
        and m["id"] is not None
        and not (is_text(m["id"], low=1, high=255) and sendable(m["id"]))
    ):
        refuse("id")
    tenant = m.get("tenant_id", ABSENT)
    unknown_tenant = False
    if not is_text(tenant, low=1, high=255):
        refuse("tenant_id")
    elif tenant.startswith("missing-"):
        if strict:
            refuse(tenant, (404,))
        unknown_tenant = True
    if m.get("topic") is not None and not (is_text(m["topic"], high=255) and sendable(m["topic"])):
        refuse("topic")
    if "eligible_for_retry" in m and not isinstance(m["eligible_for_retry"], bool):
        refuse("eligible_for_retry")
    metadata = m.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(is_text(k) and is_text(v) for k, v in metadata.items())
    ):
        refuse("metadata")
    time = dict(case.members).get("time")
    if time is not None and not (isinstance(time, Moment) and time.in_range()):
        refuse("time")
    nul_in_data = False
    if not isinstance(m.get("data", ABSENT), dict):
        refuse("data")
    elif depth(m["data"]) > DEPTH_LIMIT:
        refuse("data", FOUR_XX)
    elif holds_nul(m["data"]):
        nul_in_data = True
    if case.damage == "lone_surrogate" and not refusals:
        # Valid JSON grammar that is no Unicode text: refusing it is as right as
        # ignoring the unknown member.
        return Expect([Refusal((400,), ("JSON",))], may_accept=True)
    if nul_in_data and not refusals:
        # JSON may hold U+0000, PostgreSQL text may not: storing it or refusing it
        # (naming data) are both right.
        return Expect([Refusal(FOUR_XX, ("data",))], may_accept=True, stored=not unknown_tenant)
    return Expect(refusals, stored=not unknown_tenant)


class Api:
    """The test's relay over HTTP, with the admin key."""

    def __init__(self, http: Any, server: Any) -> None:
        self.http, self.server = http, server

    def url(self, path: str) -> yarl.URL:
        return yarl.URL(str(self.server.make_url("/")).rstrip("/") + path, encoded=True)

    async def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, bytes, Any]:
        sent = admin_headers() if headers is None else headers
        async with self.http.request(method, self.url(path), headers=sent, **kwargs) as resp:
            return resp.status, await resp.read(), resp.headers


def segment(value: str) -> str:
    """``value`` as one path segment: every reserved character percent-encoded."""
    quoted = urllib.parse.quote(value, safe="")
    return {".": "%2E", "..": "%2E%2E"}.get(quoted, quoted)


def query(**params: str) -> str:
    return "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def json_answer(status: int, raw: bytes) -> Any:
    """The answer as exact JSON; it must be JSON, whatever the status."""
    try:
        with deep_stack():
            return exact(raw)
    except ValueError:
        pytest.fail(f"answer {status} is not JSON: {raw[:300]!r}")


def same_data(sent_text: str, answer: Any, where: str) -> None:
    with deep_stack():
        equal = exact(sent_text) == member(answer, "data")
        if not equal:
            got = short(member(answer, "data"))
    assert equal, f"{where}: data read back differs: sent {short(sent_text)}, got {got}"


def check_refusal(status: int, answer: Any, expect: Expect, shape: str) -> None:
    """A refusal is a 4xx in the API's error shape that names what was wrong."""
    assert isinstance(answer, tuple), f"{status}: the error is not a JSON object"
    fields = dict(answer)
    if shape == "outpost":
        assert fields.get("status") == ("number", status) and isinstance(
            fields.get("message"), str
        ), f"{status}: not an Outpost error body: {short(fields)}"
        message, extra, index = fields["message"], fields.get("data"), None
    else:
        assert set(fields) <= {"error", "index"} and isinstance(fields.get("error"), str), (
            f"{status}: not a pod error body: {short(fields)}"
        )
        message, extra = fields["error"], None
        index = int(fields["index"][1]) if "index" in fields else None
    fitting = [
        r
        for r in expect.refusals
        if status in r.statuses and names_it(message, extra, r) and r.index == index
    ]
    assert fitting, (
        f"answer {status} {message!r} (data {short(extra)}, index {index}) is none of "
        f"the expected answers: {expect}"
    )


async def nothing_for(db: Any, tenant_ids: list[str], event_id: Any) -> None:
    events = await db.fetchval(
        "SELECT count(*) FROM relay.events WHERE tenant_id = ANY($1::text[])", tenant_ids
    )
    deliveries = await db.fetchval(
        "SELECT count(*) FROM relay.deliveries WHERE tenant_id = ANY($1::text[])", tenant_ids
    )
    assert (events, deliveries) == (0, 0), "a refused request wrote rows"
    if is_text(event_id, low=1):
        same_id = await db.fetchval(
            "SELECT count(*) FROM relay.events WHERE tenant_id = ANY($1::text[]) AND id = $2",
            tenant_ids,
            event_id,
        )
        assert same_id == 0, "a refused request wrote its event"


async def in_views(
    db: Any, tenant_id: str, event_id: str, rows: int, moment: Any, attempts: int = 0
) -> None:
    """The event is in delivery_state (``rows``: one per destination) and delivery_log
    (at least ``attempts`` rows), and every column of those rows decodes."""
    state = await db.fetch(
        "SELECT * FROM relay.delivery_state WHERE tenant_id = $1 AND event_id = $2",
        tenant_id,
        event_id,
    )
    log = await db.fetch(
        "SELECT * FROM relay.delivery_log WHERE tenant_id = $1 AND event_id = $2",
        tenant_id,
        event_id,
    )
    assert len(state) == rows, f"delivery_state has {len(state)} rows, not {rows}"
    assert len(log) >= attempts, f"delivery_log has {len(log)} rows, not {attempts} or more"
    # asyncpg decoded every column as it fetched the rows; read each value all the same.
    for row in [*state, *log]:
        assert len(list(row.values())) == len(row)
    if isinstance(moment, Moment):
        for row in state:
            assert abs(micros(row["event_time"]) - moment.utc_micros()) <= 1, (
                f"delivery_state.event_time {row['event_time']} is not {moment.text()}"
            )


def depth_label(data: Any) -> str:
    levels = depth(data)
    return "data depth " + ("< 254" if levels < 254 else "254" if levels == 254 else "> 254")


def label_outpost(case: OutpostCase, built: Built, status: int) -> None:
    """What the examples covered, for --hypothesis-show-statistics."""
    event(f"answer {status}")
    if isinstance(built.data, dict):
        event(depth_label(built.data))
    moment = dict(case.members).get("time")
    if isinstance(moment, Moment):
        event("time in years 1-9999 UTC" if moment.in_range() else "time outside years 1-9999")
        if moment.offset is not None and abs(moment.offset) >= 16 * 60:
            event("time offset of 16 hours or more")


async def new_tenant(api: Api, receiver: Any) -> str:
    """A tenant of the example's own, with one destination for every topic."""
    tenant = "t-" + uuid.uuid4().hex
    status, raw, _ = await api.request("PUT", f"/api/v1/tenants/{tenant}")
    assert status == 201, raw
    url = receiver.url(f"/{tenant}")
    hook = {"id": "hook", "type": "webhook", "topics": "*", "config": {"url": url}}
    status, raw, _ = await api.request("POST", f"/api/v1/tenants/{tenant}/destinations", json=hook)
    assert status == 201, raw
    return tenant


def clipped(body: bytes, limit: int = 1200) -> str:
    """A request body to print: whole when short, else its two ends."""
    text = body.decode(errors="backslashreplace")
    if len(text) > limit:
        text = f"{text[: limit // 2]} ...({len(text) - limit} more)... {text[-limit // 2 :]}"
    return f"{text!r} ({len(body)} bytes)"


async def publish(api: Api, built: Built) -> tuple[int, bytes]:
    note(f"body: {clipped(built.body)}")
    headers = admin_headers() | {"Content-Type": "application/json"}
    status, raw, _ = await api.request("POST", "/api/v1/publish", data=built.body, headers=headers)
    note(f"answer: {status} {raw[:500]!r}")
    return status, raw


@pytest.fixture
async def outpost_api(start_relay: Any, database_url: str, http: Any) -> Api:
    """One relay for every example of the test."""
    server = await start_relay(make_settings(database_url), dispatcher=False)
    return Api(http, server)


@pytest.fixture
async def strict_outpost_api(start_relay: Any, database_url: str, http: Any) -> Api:
    """One relay with api.strict_publish for every example of the test."""
    settings = make_settings(database_url, api={"strict_publish": True})
    server = await start_relay(settings, dispatcher=False)
    return Api(http, server)


# A publish for a tenant that does not exist, tried first in both tests whatever the
# draws bring (about one example in 60 draws one).
UNKNOWN_TENANT = OutpostCase(
    members=(("tenant_id", NO_SUCH_TENANT), ("id", "evt-unknown"), ("data", DataSpec({}))),
    spelling=Spelling(),
)


@PROPERTY_SETTINGS
@example(case=UNKNOWN_TENANT)
@given(case=outpost_cases())
async def test_outpost_publish_answers_and_reads_back(
    outpost_api: Api, db: Any, receiver: Any, case: OutpostCase
) -> None:
    await check_outpost_publish(outpost_api, db, receiver, case, strict=False)


@settings(PROPERTY_SETTINGS, max_examples=40)
@example(case=UNKNOWN_TENANT)
@given(case=outpost_cases())
async def test_outpost_publish_answers_and_reads_back_strict(
    strict_outpost_api: Api, db: Any, receiver: Any, case: OutpostCase
) -> None:
    await check_outpost_publish(strict_outpost_api, db, receiver, case, strict=True)


async def check_outpost_publish(
    api: Api, db: Any, receiver: Any, case: OutpostCase, *, strict: bool
) -> None:
    tenant = await new_tenant(api, receiver)
    built = build_outpost(case, tenant)
    expect = outpost_expectation(case, built, strict=strict)
    note(f"expected: {expect}")
    status, raw = await publish(api, built)
    label_outpost(case, built, status)
    assert status < 500, f"publish answered {status}: {raw[:300]!r}"
    answer = json_answer(status, raw)

    if status != 202:
        assert not expect.accepted, f"a valid event was refused: {status} {raw[:300]!r}"
        check_refusal(status, answer, expect, "outpost")
        ids = [tenant] + [t for t in [built.members.get("tenant_id")] if is_text(t)]
        await nothing_for(db, ids, built.members.get("id"))
        return
    assert expect.accepted or expect.may_accept, f"accepted, but expected {expect}"

    published = dict(answer)
    event_id = published["id"]
    sent_id = built.members.get("id")
    assert event_id == sent_id if isinstance(sent_id, str) else isinstance(event_id, str)
    if not expect.stored:
        # Outpost's answer for a tenant that does not exist; nothing of it is kept.
        assert published["duplicate"] is False and published["destination_ids"] == []
        unknown = built.members["tenant_id"]
        await nothing_for(db, [tenant, unknown], sent_id)
        status, raw, _ = await api.request(
            "GET", f"/api/v1/events/{segment(event_id)}" + query(tenant_id=unknown)
        )
        assert status == 404, f"GET /events/{{id}} of an unstored event answered {status}"
        return
    assert published["duplicate"] is False and published["destination_ids"] == ["hook"]
    assert built.data_text is not None

    status, raw, _ = await api.request(
        "GET", f"/api/v1/events/{segment(event_id)}" + query(tenant_id=tenant)
    )
    assert status == 200, f"GET /events/{{id}} answered {status}: {raw[:300]!r}"
    event = json_answer(status, raw)
    same_data(built.data_text, event, "GET /events/{id}")
    fields = dict(event)
    assert fields["id"] == event_id and fields["tenant_id"] == tenant
    assert fields["topic"] == (built.members.get("topic") or "")
    assert fields["eligible_for_retry"] is built.members.get("eligible_for_retry", True)
    # Empty or absent metadata reads back as {} (never null).
    assert dict(fields["metadata"]) == (built.members.get("metadata") or {})
    moment = dict(case.members).get("time")
    if isinstance(moment, Moment):
        read = datetime.fromisoformat(fields["time"].replace("Z", "+00:00"))
        assert abs(micros(read) - moment.utc_micros()) <= 1, (
            f"time {moment.text()} reads back as {fields['time']}"
        )

    status, raw, _ = await api.request("GET", "/api/v1/events" + query(tenant_id=tenant))
    assert status == 200, f"GET /events answered {status}: {raw[:300]!r}"
    models = member(json_answer(status, raw), "models")
    assert [dict(m)["id"] for m in models] == [event_id]
    same_data(built.data_text, models[0], "GET /events")

    status, raw, _ = await api.request(
        "GET",
        "/api/v1/attempts"
        + query(tenant_id=tenant, event_id=event_id, include="event.data,response_data"),
    )
    assert status == 200, f"GET /attempts answered {status}: {raw[:300]!r}"

    await in_views(db, tenant, event_id, 1, moment)


@pytest.fixture
async def delivering_api(start_relay: Any, database_url: str, http: Any) -> Api:
    """One relay, dispatcher included, for every example of the test."""
    server = await start_relay(make_settings(database_url))
    return Api(http, server)


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


@settings(PROPERTY_SETTINGS, max_examples=40)
@given(case=outpost_cases(deliverable=True))
async def test_outpost_delivered_event_reads_back_with_its_attempts(
    delivering_api: Api, db: Any, receiver: Any, case: OutpostCase
) -> None:
    """With the dispatcher on: the first attempt is in delivery_log and GET
    /api/v1/attempts, and the receiver got data's bytes as sent."""
    api = delivering_api
    tenant = await new_tenant(api, receiver)
    built = build_outpost(case, tenant)
    status, raw = await publish(api, built)
    if status != 202:
        # Whether it should have been taken is the test above's to say; here only
        # accepted events count.
        reject()
    event_id = dict(json_answer(status, raw))["id"]
    assert built.data_text is not None

    async def tried() -> bool:
        row = await db.fetchrow(
            "SELECT status, attempts FROM relay.delivery_state"
            " WHERE tenant_id = $1 AND event_id = $2",
            tenant,
            event_id,
        )
        return row is not None and row["attempts"] >= 1 and row["status"] != "delivering"

    await wait_until(tried)
    await in_views(db, tenant, event_id, 1, dict(case.members).get("time"), attempts=1)
    status, raw, _ = await api.request(
        "GET",
        "/api/v1/attempts"
        + query(tenant_id=tenant, event_id=event_id, include="event.data,response_data"),
    )
    assert status == 200, f"GET /attempts answered {status}: {raw[:300]!r}"
    attempts = member(json_answer(status, raw), "models")
    assert attempts, "GET /attempts does not list the attempt"
    same_data(built.data_text, member(attempts[0], "event"), "GET /attempts?include=event.data")

    first = await db.fetchrow(
        "SELECT status, error_code, error_detail FROM relay.delivery_log"
        " WHERE tenant_id = $1 AND event_id = $2 ORDER BY attempt_id LIMIT 1",
        tenant,
        event_id,
    )
    assert first["status"] == "success", f"the accepted event was not delivered: {dict(first)}"
    [request] = receiver.on_path(f"/{tenant}")
    assert request.body == built.data_text.encode(), (
        f"the receiver got {clipped(request.body)}, not data as sent"
    )


# --- POST /publish/ -------------------------------------------------------------------

USER = "https://user.example.com/profile/card#me"
USER_WORK = "https://user.example.com/profile/work#me"
PARTICIPANT = "https://participant.example.com/profile/card#me"
STRANGER = "https://stranger.example.com/profile/card#me"
TENANT_OF = {USER: "user", USER_WORK: "user", PARTICIPANT: "participant"}
KEY = "producer-key-0123456789"


def pod_settings(database_url: str, receiver: Any) -> Any:
    def tenant(id: str, pods: list[str]) -> dict[str, Any]:
        hook = {"id": f"{id}-hook", "url": receiver.url(f"/{id}"), "topics": "*"}
        return {"id": id, "pods": pods, "destinations": [hook]}

    return make_settings(
        database_url,
        tenants=[tenant("user", [USER, USER_WORK]), tenant("participant", [PARTICIPANT])],
        publishers=[
            {"name": "producer", "key": KEY, "grants": [{"recipients": "*", "topics": "*"}]}
        ],
    )


# A topic segment: anything but whitespace, "/", "#", "*" and NUL.
SEGMENT = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="/#*"),
    min_size=1,
    max_size=8,
)
TOPICS = st.builds(
    lambda parts, action: "/".join(parts) + "#" + action,
    st.lists(SEGMENT, min_size=2, max_size=3),
    SEGMENT,
) | st.integers(1, 251).map(lambda n: "d/" + "x" * n + "#a")
BAD_TOPICS = st.sampled_from(
    [
        ABSENT,
        None,
        "",
        "realestate/contact",
        "realestate#add",
        "realestate/*#add",
        "real estate/contact#add",
        "realestate/contact#add\x00",
        "realestate/contact#",
        ["realestate/contact#add"],
        7,
    ]
) | st.integers(252, 400).map(lambda n: "d/" + "x" * n + "#a")
PODS = st.sampled_from([USER, USER_WORK, PARTICIPANT])
# data without long strings or deep chains: for a thousand copies of one item.
SMALL_DATA = st.builds(DataSpec, members=OBJECTS)
NOT_PODS = st.sampled_from(
    ["user.example.com", "ftp://user.example.com/", "https://", "https:///card", 7, True, {}]
)
POD_VALID = {
    "recipient": PODS | st.lists(PODS, min_size=1, max_size=3),
    "source": st.just(ABSENT) | st.none() | PODS,
    "topic": TOPICS,
    "data": DATA,
}
POD_INVALID = {
    "recipient": st.sampled_from([ABSENT, None, "", []])
    | NOT_PODS
    | NOT_PODS.map(lambda bad: [USER, bad]),
    "source": NOT_PODS | st.just([PARTICIPANT]),
    "topic": BAD_TOPICS,
    "data": st.just(ABSENT) | NOT_OBJECTS,
}


@dataclass(frozen=True)
class PodItem:
    """One item: ``members`` in order, or ``not_object`` sent in its place."""

    members: tuple[tuple[str, Any], ...] = ()
    not_object: Any = ABSENT


@st.composite
def pod_items(draw: st.DrawFn, *, in_array: bool, small: bool = False) -> PodItem:
    problems = [*POD_VALID, "stranger"] + (["item"] if in_array else [])
    broken = draw(st.sampled_from([None, None, None, *problems]))
    if broken == "item":
        return PodItem(not_object=draw(NOT_OBJECTS))
    valid = POD_VALID | ({"data": SMALL_DATA} if small else {})
    members = {
        name: draw(POD_INVALID[name] if name == broken else strategy)
        for name, strategy in valid.items()
    }
    if broken == "stranger":
        where = draw(st.sampled_from(["recipient", "source", "list"]))
        members[where if where != "list" else "recipient"] = (
            [USER, STRANGER] if where == "list" else STRANGER
        )
    members |= draw(st.dictionaries(st.sampled_from(["note", "Data", "x"]), VALUES, max_size=1))
    order = draw(st.permutations(list(members)))
    return PodItem(tuple((name, members[name]) for name in order if members[name] is not ABSENT))


@dataclass(frozen=True)
class PodCase:
    """A pod publish request: one item, a list of them, or ``copies`` of the first; an
    ``x-api-key`` (raw bytes; None: left out) and a Content-Type."""

    items: tuple[PodItem, ...]
    as_array: bool
    spelling: Spelling
    copies: int = 1
    key: bytes | None = KEY.encode()
    content_type: str = "application/json"
    damage: str | None = None


# Header value bytes: visible ASCII and obs-text, so not always UTF-8.
KEY_BYTES = st.binary(max_size=24).map(
    lambda raw: bytes(b for b in raw if 0x21 <= b <= 0x7E or b >= 0x80)
)
ODD_KEYS = st.sampled_from(
    [b"", b"\xff", b"caf\xe9", "café".encode(), KEY.encode() + b"\xff", KEY.encode()[:-1]]
)


# Up to the limit; shrinks toward few copies when the count does not matter.
MANY = st.integers(2, POD_MAX_ITEMS) | st.just(POD_MAX_ITEMS)


@st.composite
def pod_cases(draw: st.DrawFn) -> PodCase:
    shape = draw(st.sampled_from(["single", "single", "array", "array", "array", "many"] * 2))
    shape = shape if shape != "many" or draw(st.booleans()) else "array"
    if shape == "single":
        items = (draw(pod_items(in_array=False)),)
    else:
        item = pod_items(in_array=True, small=shape == "many")
        items = tuple(draw(st.lists(item, min_size=1, max_size=1 if shape == "many" else 4)))
    broken = draw(st.sampled_from([None] * 6 + ["key", "key", "content_type", "body"]))
    return PodCase(
        items=items,
        as_array=shape != "single",
        spelling=draw(SPELLINGS),
        copies=draw(MANY) if shape == "many" else 1,
        key=draw(st.none() | ODD_KEYS | KEY_BYTES) if broken == "key" else KEY.encode(),
        content_type=draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded"]))
        if broken == "content_type"
        else draw(st.sampled_from(["application/json", "application/json; charset=utf-8"])),
        damage=draw(st.sampled_from(["truncated", "trailing", "empty", "empty_array", "scalar"]))
        if broken == "body"
        else None,
    )


@dataclass
class BuiltPod:
    body: bytes
    # Per item sent: its members (values as sent; None: not an object), its data's text.
    items: list[dict[str, Any] | None]
    data_texts: list[str | None]


def build_pod(case: PodCase) -> BuiltPod:
    s = case.spelling.space
    texts, items, data_texts = [], [], []
    with deep_stack():
        for item in case.items:
            if item.not_object is not ABSENT:
                texts.append(encode(item.not_object, case.spelling))
                items.append(None)
                data_texts.append(None)
                continue
            parts, data_text = [], None
            members: dict[str, Any] = {}
            for name, value in item.members:
                text, members[name] = member_text(name, value, "", case.spelling)
                if name == "data":
                    data_text = text
                parts.append(encode_string(name, case.spelling) + s + ":" + s + text)
            texts.append("{" + s + ("," + s).join(parts) + s + "}")
            items.append(members)
            data_texts.append(data_text)
    texts, items, data_texts = (
        texts * case.copies,
        items * case.copies,
        data_texts * case.copies,
    )
    body = ("[" + s + ("," + s).join(texts) + s + "]" if case.as_array else texts[0]).encode()
    if case.damage == "empty_array":
        body, items, data_texts = b"[]", [], []
    elif case.damage == "scalar":
        body = b'"text"'
    elif case.damage is not None:
        body = damaged(body, case.damage)
    return BuiltPod(body, items, data_texts)


def is_pod(value: Any) -> bool:
    return value in (*TENANT_OF, STRANGER)


def is_topic(topic: Any) -> bool:
    """{domain}/{topic}#{action}: no wildcard, whitespace or NUL, at most 255 characters."""
    if not isinstance(topic, str) or len(topic) > 255 or topic.count("#") != 1:
        return False
    if any(c.isspace() or c in "*\x00" for c in topic):
        return False
    head, action = topic.split("#")
    parts = head.split("/")
    return len(parts) >= 2 and all(parts) and bool(action) and "/" not in action


def item_refusals(members: dict[str, Any] | None, index: int | None) -> tuple[list[Refusal], bool]:
    """What is wrong with one item (400s, 403s), and whether accepting it is right too."""

    def bad(name: str) -> Refusal:
        return Refusal((400,), (name,), index)

    if members is None:
        return [bad("event")], False
    wrong = []
    recipient = members.get("recipient")
    recipients = recipient if isinstance(recipient, list) else [recipient]
    if not recipient or not all(is_pod(r) for r in recipients):
        wrong.append(bad("recipient"))
    source = members.get("source")
    if source is not None and not is_pod(source):
        wrong.append(bad("source"))
    if not is_topic(members.get("topic")):
        wrong.append(bad("topic"))
    data = members.get("data")
    if not isinstance(data, dict) or depth(data) > DEPTH_LIMIT:
        wrong.append(bad("data"))
    if not wrong:
        pods = [*recipients, *([source] if source else [])]
        wrong += [Refusal((403,), (p,), index) for p in pods if p == STRANGER]
    if isinstance(data, dict) and holds_nul(data):
        # U+0000 is JSON, not PostgreSQL text: stored or refused (naming data), both right;
        # and refused for it before the pods are authorized is as right as a 403.
        if not wrong:
            return [bad("data")], True
        wrong.append(bad("data"))
    return wrong, False


def pod_expectation(case: PodCase, built: BuiltPod) -> Expect:
    refusals: list[Refusal] = []
    key = (case.key or b"").strip()
    if key != KEY.encode():
        return Expect([Refusal((401,), ("key",))])
    if len(built.body) > MAX_BODY:
        return Expect([Refusal((413,), ("body",))])
    if not case.content_type.startswith("application/json"):
        return Expect([Refusal((415,), ("Content-Type",))])
    damage = {
        "truncated": Refusal((400,), ("JSON",)),
        "trailing": Refusal((400,), ("JSON",)),
        "empty": Refusal((400,), ("empty",)),
        "empty_array": Refusal((400,), ("empty",)),
        "scalar": Refusal((400,), ("body",)),
    }
    if case.damage in damage:
        return Expect([damage[case.damage]])
    either = True
    for index, members in enumerate(built.items):
        wrong, may_accept = item_refusals(members, index if case.as_array else None)
        refusals += wrong
        either = either and (may_accept or not wrong)
    return Expect(refusals, may_accept=bool(refusals) and either)


def label_pod(case: PodCase, built: BuiltPod, status: int) -> None:
    """What the examples covered, for --hypothesis-show-statistics."""
    event(f"answer {status}")
    event("an array" if case.as_array else "one event")
    if case.copies > 1:
        event("an array of many copies")
    if case.key != KEY.encode():
        try:
            (case.key or b"").decode()
            event("another x-api-key (UTF-8)")
        except UnicodeDecodeError:
            event("another x-api-key (not UTF-8)")
    for members in built.items[:1]:
        if members is not None and isinstance(members.get("data"), dict):
            event(depth_label(members["data"]))


async def raw_post(
    server: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[str, str], bytes]:
    """POST with header values as raw bytes (aiohttp's client sends UTF-8 only)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = [
        f"POST {path} HTTP/1.1".encode(),
        f"Host: {server.host}:{server.port}".encode(),
        b"Connection: close",
        b"Content-Length: " + str(len(body)).encode(),
        *(name + b": " + value for name, value in headers),
    ]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    raw = await reader.read()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower().decode()] = value.strip().decode("latin-1")
    assert "chunked" not in fields.get("transfer-encoding", ""), "chunked answer"
    if "content-length" in fields:
        rest = rest[: int(fields["content-length"])]
    return int(lines[0].split()[1]), fields, rest


async def totals(db: Any) -> tuple[int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM relay.events), (SELECT count(*) FROM relay.deliveries)"
    )
    return row[0], row[1]


def readback_indexes(count: int) -> list[int]:
    """Which items of an accepted request to read back over HTTP (all of a short one)."""
    return list(range(count)) if count <= 5 else [0, 1, count // 2, count - 2, count - 1]


@pytest.fixture
async def pod_api(start_relay: Any, database_url: str, http: Any, receiver: Any) -> Api:
    """One relay for every example of the test."""
    server = await start_relay(pod_settings(database_url, receiver), dispatcher=False)
    return Api(http, server)


@PROPERTY_SETTINGS
@given(case=pod_cases())
async def test_pod_publish_answers_and_reads_back(pod_api: Api, db: Any, case: PodCase) -> None:
    api = pod_api
    built = build_pod(case)
    expect = pod_expectation(case, built)
    note(f"body: {clipped(built.body)}")
    note(f"expected: {expect}")
    before = await totals(db)
    headers = [(b"Content-Type", case.content_type.encode())]
    if case.key is not None:
        headers.append((b"x-api-key", case.key))
    status, answer_headers, raw = await raw_post(api.server, "/publish/", built.body, headers)
    note(f"answer: {status} {raw[:500]!r}")
    label_pod(case, built, status)
    assert status < 500, f"publish answered {status}: {raw[:300]!r}"
    answer = json_answer(status, raw)

    if status != 201:
        assert not expect.accepted, f"a valid request was refused: {status} {raw[:300]!r}"
        check_refusal(status, answer, expect, "pod")
        assert await totals(db) == before, "a refused request wrote rows"
        return
    assert expect.accepted or expect.may_accept, f"accepted, but expected {expect}"

    fields = dict(answer)
    urls = fields["ids"] if case.as_array else [fields["id"]]
    assert set(fields) == ({"id", "ids"} if case.as_array else {"id"}), fields
    assert len(urls) == len(built.items) and answer_headers["location"] == urls[0]
    assert fields["id"] == urls[0]
    ids = [url.rsplit("/", 1)[1] for url in urls]
    key = {"x-api-key": KEY}
    for index in readback_indexes(len(ids)):
        members, data_text = built.items[index], built.data_texts[index]
        assert members is not None and data_text is not None
        status, raw, _ = await api.request("GET", f"/publish/{ids[index]}", headers=key)
        assert status == 200, f"GET /publish/{{id}} answered {status}: {raw[:300]!r}"
        event = json_answer(status, raw)
        same_data(data_text, event, f"GET /publish/{{id}} (item {index})")
        assert dict(event)["topic"] == members["topic"]
        recipient = members["recipient"]
        pods = [*(recipient if isinstance(recipient, list) else [recipient])]
        pods.append(members.get("source"))
        tenants = dict.fromkeys(TENANT_OF[pod] for pod in pods if pod is not None)
        for tenant in tenants:
            status, raw, _ = await api.request(
                "GET", f"/api/v1/events/{ids[index]}" + query(tenant_id=tenant)
            )
            assert status == 200, f"GET /api/v1/events/{{id}} answered {status}: {raw[:300]!r}"
            same_data(data_text, json_answer(status, raw), "GET /api/v1/events/{id}")
            status, raw, _ = await api.request(
                "GET", "/api/v1/events" + query(tenant_id=tenant, id=ids[index])
            )
            assert status == 200, f"GET /api/v1/events answered {status}: {raw[:300]!r}"
            models = member(json_answer(status, raw), "models")
            assert [dict(m)["id"] for m in models] == [ids[index]]
            status, raw, _ = await api.request(
                "GET",
                "/api/v1/attempts"
                + query(tenant_id=tenant, event_id=ids[index], include="event.data"),
            )
            assert status == 200, f"GET /api/v1/attempts answered {status}: {raw[:300]!r}"
            await in_views(db, tenant, ids[index], 1, None)
    # Every item, in one look: one event and one delivery per receiving tenant.
    rows = await db.fetch(
        "SELECT * FROM relay.delivery_state WHERE event_id = ANY($1::text[])", ids
    )
    events, _ = await totals(db)
    assert len(rows) == events - before[0], "delivery_state misses some of the events"


# --- the pod API's array limit --------------------------------------------------------

SMALL_ITEMS = st.builds(
    lambda recipient, topic, data: {"recipient": recipient, "topic": topic, "data": data},
    PODS,
    TOPICS,
    st.dictionaries(TEXT, st.integers() | TEXT, max_size=3),
)


@settings(PROPERTY_SETTINGS, max_examples=6)
@given(
    item=SMALL_ITEMS,
    count=st.sampled_from([POD_MAX_ITEMS + 1, 2000]) | st.integers(POD_MAX_ITEMS + 1, 5000),
)
async def test_pod_array_past_the_item_limit_is_refused(
    pod_api: Api, db: Any, item: dict[str, Any], count: int
) -> None:
    api = pod_api
    before = await totals(db)
    body = encode([item] * count, Spelling()).encode()
    # Past the byte limit it is that limit's 413 (another test's); this one is the count's.
    assume(len(body) <= MAX_BODY)
    headers = [(b"Content-Type", b"application/json"), (b"x-api-key", KEY.encode())]
    status, _, raw = await raw_post(api.server, "/publish/", body, headers)
    note(f"answer: {status} {raw[:300]!r}")
    assert status == 413, f"{count} items answered {status}, not a 413"
    fields = dict(json_answer(status, raw))
    assert set(fields) <= {"error", "index"} and isinstance(fields.get("error"), str), fields
    assert str(POD_MAX_ITEMS) in fields["error"], "the error does not give the limit"
    assert await totals(db) == before, "a refused request wrote rows"
