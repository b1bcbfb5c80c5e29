"""Query parameters as Outpost's clients send them. A bad value of a filter is a 400 that
names it, never a 500 or a silently ignored filter; what Outpost leniently ignores or
corrects is ignored or corrected here too (an unknown ``include`` value or ``time[...]``
key, a history ``limit`` outside 1-1000).

Lists come repeated (``id=a&id=b``, the official SDKs' form) or in bracket notation
(``id[]=a``, ``id[0]=a``); time windows as ``time[gte]=...`` (deepObject).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time

import orjson
from aiohttp import web

from relay.db.history import BadCursor, Cursor, TimeRange, decode_cursor
from relay.errors import BadRequest

_BRACKETED = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)\[(\d*)\]$")


def multi(request: web.Request, name: str) -> list[str]:
    """Every value given for ``name``, in the order sent, without duplicates."""
    values: list[str] = []
    for key, value in request.query.items():
        match = _BRACKETED.match(key)
        if key == name or (match is not None and match.group(1) == name):
            if value and value not in values:
                values.append(value)
    return values


def single(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"query parameter {name} was given more than once", data=[name])
    return values[0] if values else None


def limit(request: web.Request, *, default: int, maximum: int) -> int:
    raw = single(request, "limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise BadRequest(
            f"limit must be an integer from 1 to {maximum} (got {raw!r})", data=["limit"]
        )
    return value


_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")


def capped_limit(request: web.Request, *, default: int, maximum: int) -> int:
    """A page size as Outpost reads the history listings': not a whole number above 0
    means ``default``, more than ``maximum`` means ``maximum`` (never a 400)."""
    raw = request.query.get("limit", "")
    value = int(raw) if _INTEGER.fullmatch(raw) else 0
    if value <= 0:
        return default
    return min(value, maximum)


def descending(request: web.Request) -> bool:
    raw = single(request, "dir")
    if raw is None or raw == "desc":
        return True
    if raw == "asc":
        return False
    raise BadRequest(f"dir must be asc or desc (got {raw!r})", data=["dir"])


def order_by(request: web.Request, *allowed: str) -> None:
    raw = single(request, "order_by")
    if raw is not None and raw not in allowed:
        raise BadRequest(
            f"order_by must be one of: {', '.join(allowed)} (got {raw!r})", data=["order_by"]
        )


def cursor(request: web.Request, *, kind: str, desc: bool) -> Cursor | None:
    next_value, prev_value = single(request, "next"), single(request, "prev")
    if next_value and prev_value:
        raise BadRequest("give next or prev, not both", data=["next", "prev"])
    name, value = ("next", next_value) if next_value else ("prev", prev_value)
    if not value:
        return None
    try:
        found = decode_cursor(value, kind=kind, descending=desc)
    except BadCursor as exc:
        raise BadRequest(f"{name}: {exc}", data=[name]) from None
    return found


def parse_time(raw: str) -> datetime:
    """RFC 3339, or a bare YYYY-MM-DD (midnight UTC); a time without a zone is UTC."""
    text = raw.strip()
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
    value = datetime.fromisoformat(text.replace("z", "Z"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def time_range(request: web.Request, name: str = "time") -> TimeRange:
    """``time[gte|lte|gt|lt]``. Other keys are ignored, as Outpost ignores them, but for
    ``[any]``, which Outpost refuses as an operator it knows and does not support."""
    if request.query.get(f"{name}[any]"):
        raise BadRequest(
            f"operator 'any' is not supported, use 'gte', 'lte', 'gt', or 'lt' ({name}[any])",
            data=[f"{name}[any]"],
        )
    bounds: dict[str, datetime] = {}
    for op in ("gte", "lte", "gt", "lt"):
        key = f"{name}[{op}]"
        raw = single(request, key)
        if not raw:
            continue
        try:
            bounds[op] = parse_time(raw)
        except ValueError:
            raise BadRequest(
                f"{key} must be an RFC 3339 date-time or YYYY-MM-DD (got {raw!r})", data=[key]
            ) from None
    return TimeRange(**bounds)


def include(request: web.Request, *allowed: str) -> set[str]:
    """The ``include`` values among ``allowed`` (also comma-separated); others are
    ignored, as Outpost ignores them."""
    values: set[str] = set()
    for value in multi(request, "include"):
        values.update(part.strip() for part in value.split(","))
    return values & set(allowed)


def one_of(request: web.Request, name: str, *allowed: str) -> str | None:
    raw = single(request, name)
    if raw is not None and raw not in allowed:
        raise BadRequest(f"{name} must be one of: {', '.join(allowed)} (got {raw!r})", data=[name])
    return raw


async def optional_json(request: web.Request) -> object:
    """The JSON body, or {} when there is none (bodies that are optional in the spec)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
