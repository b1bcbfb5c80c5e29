"""Poison inputs for both publish APIs, each a raw HTTP request and what must happen.

``expect="4xx"``: the request is wrong and must be refused with a 4xx JSON answer.
``expect="no-5xx"``: a strange but possibly legitimate request (deep nesting, a NUL
inside a JSON string, an extra key); a 4xx JSON answer is fine, and so is accepting it,
but then the event must be stored, readable through the API and delivered like any
other. Neither may ever be answered 5xx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from tests.chaos.harness import (
    ADMIN_KEY,
    POD,
    POD_KEY,
    POD_TOPIC,
    SHORT_POD,
    TENANT,
    TOPIC,
    raw_request,
)

OUTPOST = "/api/v1/publish"
PODS = "/publish/"
MiB = 1024 * 1024
# A pod array this long blows up the API's memory unless the API limits items.
LONG_POD_ARRAY = 14_000
# The largest pod array relay accepts by default (server.max_publish_items), filling the
# default body limit (server.max_body_bytes, 1 MiB): what the API's peak memory is for.
LARGEST_POD_ARRAY = 1000


def nested(levels: int) -> bytes:
    """A JSON object nested ``levels`` deep (written by hand: no encoder goes that deep)."""
    return b'{"a":' * (levels - 1) + b'{"leaf":1}' + b"}" * (levels - 1)


@dataclass
class Poison:
    name: str
    api: str  # "outpost" | "pod"
    build: Callable[[str], tuple[list[tuple[bytes, bytes]], bytes]]  # id -> headers, body
    expect: str  # "4xx" | "no-5xx"


@dataclass
class PoisonResult:
    poison: Poison
    event_id: str
    status: int | None
    body: object
    seconds: float
    at: float
    error: str | None = None
    accepted_ids: list[str] = field(default_factory=list)


def _outpost(body: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    headers = [
        (b"Authorization", f"Bearer {ADMIN_KEY}".encode()),
        (b"Content-Type", b"application/json"),
    ]
    return headers, body


def _pod(body: bytes, key: bytes = POD_KEY.encode()) -> tuple[list[tuple[bytes, bytes]], bytes]:
    return [(b"x-api-key", key), (b"Content-Type", b"application/json")], body


def _event(event_id: str, **fields: object) -> bytes:
    body: dict[str, object] = {"id": event_id, "tenant_id": TENANT, "topic": TOPIC, "data": {}}
    body.update(fields)
    return orjson.dumps(body)


def _event_with_data(event_id: str, data: bytes) -> bytes:
    head = orjson.dumps({"id": event_id, "tenant_id": TENANT, "topic": TOPIC})
    return head[:-1] + b',"data":' + data + b"}"


def _item(**fields: object) -> dict[str, object]:
    return {"recipient": POD, "topic": POD_TOPIC, "data": {"p": 1}} | fields


def _pod_items(*items: dict[str, object]) -> bytes:
    return orjson.dumps(list(items))


def _pod_with_data(data: bytes) -> bytes:
    head = orjson.dumps({"recipient": POD, "topic": POD_TOPIC})
    return b"[" + head[:-1] + b',"data":' + data + b"}]"


def _huge(event_id: str) -> bytes:
    return _event(event_id, data={"blob": "x" * (2 * MiB)})


def _long_pod_array(_: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    # 63 bytes an item: 14,000 of them fit in the default 1 MiB body limit.
    item = {"recipient": SHORT_POD, "topic": "chaos/e#a", "data": {}}
    return _pod(orjson.dumps([item] * LONG_POD_ARRAY))


def _largest_pod_array(_: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    empty = orjson.dumps([_item(data={"pad": ""})] * LARGEST_POD_ARRAY)
    pad = (MiB - 256 - len(empty)) // LARGEST_POD_ARRAY
    return _pod(orjson.dumps([_item(data={"pad": "x" * pad})] * LARGEST_POD_ARRAY))


def catalogue() -> list[Poison]:
    """Every poison request, once (a scenario sends the list as many times as it likes)."""
    bad_utf8 = b'{"tenant_id": "acme", "topic": "chaos.event", "data": {"s": "\xff\xfe\xc3"}}'
    return [
        # --- Outpost API -------------------------------------------------------------
        Poison(
            "outpost time 0001-01-01T00:00:00+15:59",
            "outpost",
            lambda i: _outpost(_event(i, time="0001-01-01T00:00:00+15:59")),
            "4xx",
        ),
        Poison(
            "outpost time 9999-12-31T23:59:59-15:00",
            "outpost",
            lambda i: _outpost(_event(i, time="9999-12-31T23:59:59-15:00")),
            "4xx",
        ),
        Poison(
            "outpost data nested 300",
            "outpost",
            lambda i: _outpost(_event_with_data(i, nested(300))),
            "no-5xx",
        ),
        Poison(
            "outpost data nested 900",
            "outpost",
            lambda i: _outpost(_event_with_data(i, nested(900))),
            "no-5xx",
        ),
        Poison(
            "outpost NUL in data string",
            "outpost",
            lambda i: _outpost(_event(i, data={"s": "a\x00b"})),
            "no-5xx",
        ),
        Poison(
            "outpost NUL in id",
            "outpost",
            lambda i: _outpost(_event(i + "\x00x")),
            "4xx",
        ),
        Poison(
            "outpost NUL in metadata",
            "outpost",
            lambda i: _outpost(_event(i, metadata={"k": "v\x00"})),
            "4xx",
        ),
        Poison(
            "outpost raw NUL byte in body",
            "outpost",
            lambda i: _outpost(_event(i)[:-1] + b',\x00"x": 1}'),
            "4xx",
        ),
        Poison("outpost non-UTF-8 body", "outpost", lambda i: _outpost(bad_utf8), "4xx"),
        Poison(
            "outpost non-UTF-8 bearer key",
            "outpost",
            lambda i: (
                [
                    (b"Authorization", b"Bearer \xff\xfe\xc3\x28"),
                    (b"Content-Type", b"application/json"),
                ],
                _event(i),
            ),
            "4xx",
        ),
        Poison("outpost huge body (2 MiB)", "outpost", lambda i: _outpost(_huge(i)), "4xx"),
        Poison(
            "outpost wrong types: tenant_id 123",
            "outpost",
            lambda i: _outpost(_event(i, tenant_id=123)),
            "4xx",
        ),
        Poison(
            "outpost wrong types: data list",
            "outpost",
            lambda i: _outpost(_event(i, data=[1, 2])),
            "4xx",
        ),
        Poison(
            "outpost wrong types: topic object, time number",
            "outpost",
            lambda i: _outpost(_event(i, topic={"a": 1}, time=12345)),
            "4xx",
        ),
        Poison("outpost body a JSON string", "outpost", lambda i: _outpost(b'"acme"'), "4xx"),
        # --- pod API -----------------------------------------------------------------
        Poison(
            "pod time 0001-01-01T00:00:00+15:59",
            "pod",
            lambda i: _pod(_pod_items(_item(time="0001-01-01T00:00:00+15:59"))),
            "no-5xx",
        ),
        Poison(
            "pod time 9999-12-31T23:59:59-15:00",
            "pod",
            lambda i: _pod(_pod_items(_item(time="9999-12-31T23:59:59-15:00"))),
            "no-5xx",
        ),
        Poison("pod data nested 300", "pod", lambda i: _pod(_pod_with_data(nested(300))), "no-5xx"),
        Poison("pod data nested 900", "pod", lambda i: _pod(_pod_with_data(nested(900))), "no-5xx"),
        Poison(
            "pod NUL in data string",
            "pod",
            lambda i: _pod(_pod_items(_item(data={"s": "a\x00b"}))),
            "no-5xx",
        ),
        Poison(
            "pod NUL in topic",
            "pod",
            lambda i: _pod(_pod_items(_item(topic="chaos/ev\x00ent#add"))),
            "4xx",
        ),
        Poison(
            "pod non-UTF-8 body",
            "pod",
            lambda i: _pod(b'[{"recipient": "' + POD.encode() + b'", "data": {"s": "\xff"}}]'),
            "4xx",
        ),
        Poison(
            "pod non-UTF-8 x-api-key",
            "pod",
            lambda i: _pod(_pod_items(_item()), key=b"\xff\xfe\xc3\x28key"),
            "4xx",
        ),
        Poison(
            "pod huge body (2 MiB)",
            "pod",
            lambda i: _pod(_pod_items(_item(data={"blob": "x" * (2 * MiB)}))),
            "4xx",
        ),
        Poison(f"pod array of {LONG_POD_ARRAY:,} items", "pod", _long_pod_array, "4xx"),
        Poison(
            f"pod array of {LARGEST_POD_ARRAY:,} items filling 1 MiB (the largest accepted)",
            "pod",
            _largest_pod_array,
            "no-5xx",
        ),
        Poison(
            "pod wrong types: recipient 5, data string",
            "pod",
            lambda i: _pod(_pod_items(_item(recipient=5, data="x"))),
            "4xx",
        ),
        Poison(
            "pod wrong types: topic 7", "pod", lambda i: _pod(_pod_items(_item(topic=7))), "4xx"
        ),
        Poison("pod body a JSON number", "pod", lambda i: _pod(b"42"), "4xx"),
    ]


async def send(port: int, poison: Poison, event_id: str) -> PoisonResult:
    headers, body = poison.build(event_id)
    path = OUTPOST if poison.api == "outpost" else PODS
    started = time.monotonic()
    answer = await raw_request(port, "POST", path, headers, body, timeout=120)
    result = PoisonResult(
        poison,
        event_id,
        answer.status,
        answer.json(),
        time.monotonic() - started,
        time.time(),
        answer.error,
    )
    if answer.status is not None and 200 <= answer.status < 300:
        payload = answer.json()
        if poison.api == "outpost" and isinstance(payload, dict):
            result.accepted_ids = [str(payload.get("id"))]
        elif isinstance(payload, list):
            result.accepted_ids = [str(item["id"]).rsplit("/", 1)[-1] for item in payload]
        elif isinstance(payload, dict):
            result.accepted_ids = [str(payload["id"]).rsplit("/", 1)[-1]]
    return result


def problems(result: PoisonResult) -> list[str]:
    """What is wrong with a poison request's answer, if anything."""
    name, status = result.poison.name, result.status
    if status is None:
        return [f"poison {name!r}: no answer ({result.error})"]
    if status >= 500:
        return [f"poison {name!r}: answered {status} {str(result.body)[:200]}"]
    if 200 <= status < 300:
        if result.poison.expect == "4xx":
            return [f"poison {name!r}: accepted ({status}), must be refused with a 4xx"]
        return []
    if not 400 <= status < 500:
        return [f"poison {name!r}: answered {status}"]
    if not isinstance(result.body, dict):
        return [f"poison {name!r}: {status} answer is not a JSON object: {result.body!r:.200}"]
    return []
