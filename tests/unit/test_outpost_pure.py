"""Pure pieces of the Outpost API: destination filters, topic wildcards, the raw `data`
span, cursors, and how non-string map values and rotate_secret are read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.api.destinations import rotates
from relay.api.outpost import exact_data
from relay.api.rawjson import member_span
from relay.api.validation import outpost_string
from relay.db.history import BadCursor, Cursor, Position, decode_cursor, encode_cursor
from relay.routing import filter_matches, filter_problems, topic_matches

EVENT = {
    "id": "evt_1",
    "topic": "order.created",
    "metadata": {"source": "crm"},
    "data": {"amount": 150, "customer": {"tier": "premium"}, "tags": ["a", "b"], "name": "Bob"},
}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (None, True),
        ({}, True),
        ({"data": {"amount": {"$gte": 100}, "customer": {"tier": "premium"}}}, True),
        ({"data": {"amount": {"$gt": 150}}}, False),
        ({"data": {"amount": 150.0}}, True),
        ({"data": {"amount": True}}, False),
        ({"data": {"tags": "a"}}, True),
        ({"data": {"tags": ["b", "a"]}}, True),
        ({"data": {"tags": ["c"]}}, False),
        ({"data": {"name": {"$in": ["Bob", "Al"]}}}, True),
        ({"data": {"name": {"$nin": ["Bob"]}}}, False),
        ({"data": {"name": {"$startsWith": "B", "$endsWith": "ob"}}}, True),
        ({"data": {"missing": {"$exist": False}}}, True),
        ({"data": {"missing": {"$exist": True}}}, False),
        ({"data": {"missing": 1}}, False),
        ({"$or": [{"topic": "x"}, {"metadata": {"source": "crm"}}]}, True),
        ({"$and": [{"topic": "order.created"}, {"data": {"amount": {"$lt": 100}}}]}, False),
        ({"data": {"customer": {"$not": {"tier": "basic"}}}}, True),
        ({"topic": {"$neq": "order.created"}}, False),
        ({"data": {"amount": {"$gte": "100"}}}, False),
    ],
)
def test_filter_semantics(rule: Any, expected: bool) -> None:
    assert filter_matches(rule, EVENT) is expected


def test_filter_problems_name_the_place() -> None:
    assert filter_problems({"data": {"a": {"$near": 1}}, "$or": {}}) == [
        "filter.data.a.$near is not a filter operator",
        "filter.$or must be a list of filters",
    ]
    assert filter_problems({"data": {"a": {"$gte": 1}}}) == []


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("*", "anything", True),
        ("order.*", "order.created", True),
        ("order.*", "orders.created", False),
        ("*.created", "user.created", True),
        ("realestate/*", "realestate/contact#add", True),
        ("realestate/contact", "realestate/contact#add", True),
        ("a.b", "a.b.c", False),
    ],
)
def test_topic_patterns(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


# No NUL: data holding it is refused (tests/integration/test_poison_inputs.py).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=5), JSON, max_size=4),
    JSON,
    st.sampled_from([None, 0, 2]),
    st.booleans(),
)
def test_member_span_is_the_exact_value_sent(
    others: dict[str, Any], data: Any, indent: int | None, ascii_only: bool
) -> None:
    others = {k: v for k, v in others.items() if k != "data"}
    body = json.dumps(others | {"data": data}, indent=indent, ensure_ascii=ascii_only)
    span = member_span(body.encode(), "data")
    assert span is not None
    assert (
        span
        == json.dumps(data, indent=indent, ensure_ascii=ascii_only)
        .replace("\n", "\n" + " " * (indent or 0))
        .encode()
    )
    assert orjson.loads(span) == orjson.loads(body)["data"]


def test_member_span_takes_the_last_duplicate_and_reads_escaped_keys() -> None:
    assert member_span(b'{"data": 1, "\\u0064ata" : [ 2 ] }', "data") == b"[ 2 ]"
    assert member_span(b'{"x": "\\"data\\": 3"}', "data") is None
    assert member_span(b"[1]", "data") is None


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=5), JSON, max_size=4),
    st.dictionaries(TEXT, JSON, max_size=4),
    st.sampled_from([(",", ":"), (", ", ": ")]),
    st.booleans(),
)
def test_exact_data_is_the_bytes_sent_compact_or_not(
    others: dict[str, Any], data: dict[str, Any], separators: tuple[str, str], ascii_only: bool
) -> None:
    others = {k: v for k, v in others.items() if k != "data"}
    body = json.dumps(others | {"data": data}, separators=separators, ensure_ascii=ascii_only)
    sent = json.dumps(data, separators=separators, ensure_ascii=ascii_only).encode()
    assert exact_data(body.encode(), orjson.loads(body)["data"]) == sent


def test_exact_data_at_worst_is_data_in_compact_form() -> None:
    body = b'{"x\\"data":{"a":1},"data": {"a": 1}}'
    assert exact_data(body, orjson.loads(body)["data"]) == b'{"a":1}'
    body = b'{"x":{"data":{"a":1}},"data": {"a": 1}}'
    assert exact_data(body, orjson.loads(body)["data"]) == b'{"a":1}'
    body = b'{"data": {"a": 1}}'
    assert exact_data(body, orjson.loads(body)["data"]) == b'{"a": 1}'


def test_cursors_round_trip_and_refuse_strangers() -> None:
    at = Position(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), 42)
    cursor = Cursor("events", True, at, backwards=True)
    assert decode_cursor(encode_cursor(cursor), kind="events", descending=True) == cursor
    with pytest.raises(BadCursor):
        decode_cursor(encode_cursor(cursor), kind="attempts", descending=True)
    with pytest.raises(BadCursor):
        decode_cursor(encode_cursor(cursor), kind="events", descending=False)
    for junk in ("", "!!", "e30", "WzEsMiwzXQ"):
        with pytest.raises(BadCursor):
            decode_cursor(junk, kind="events", descending=True)


def test_filters_too_deep_or_too_large_are_refused_before_they_are_stored() -> None:
    from relay.routing import MAX_FILTER_DEPTH, MAX_FILTER_NODES, filter_problems

    deep: object = {"data": {"a": 1}}
    for _ in range(300):  # deep enough to exhaust the stack when matched recursively
        deep = {"$not": deep}
    assert filter_problems(deep) == [f"filter is nested more than {MAX_FILTER_DEPTH} levels deep"]
    wide = {"data": {"$or": [{"a": n} for n in range(MAX_FILTER_NODES)]}}
    assert filter_problems(wide) == [f"filter has more than {MAX_FILTER_NODES} parts"]
    assert filter_problems({"data": {"$or": [{"a": 1}, {"b": {"$gte": 2}}]}}) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x", "x"),
        ("", ""),
        (True, "true"),
        (False, "false"),
        (None, ""),
        (42, "42"),
        (-7, "-7"),
        (3.14, "3.14"),
        (1e-7, "1e-07"),  # Go's %v writes the same
        (1e21, "1e+21"),
        # Go's %v writes these 4.2e+07 and 1e+06; relay writes the number as sent.
        (42000000, "42000000"),
        (1e6, "1000000"),
        ({"b": 1, "a": [True, None]}, '{"a":[true,null],"b":1}'),
        ([1, "x"], '[1,"x"]'),
    ],
)
def test_map_values_become_strings_as_outpost_makes_them(value: Any, expected: str) -> None:
    assert outpost_string(value) == expected


@pytest.mark.parametrize(
    ("value", "rotates_it"),
    [
        (True, True),
        ("true", True),
        ("TRUE", True),
        ("1", True),
        (1, True),
        ("on", True),
        ("Yes", True),
        (False, False),
        ("false", False),
        ("0", False),
        ("no", False),
        ("", False),
        (None, False),
        ("y", False),
        (2, False),
        ({"x": 1}, False),
    ],
)
def test_rotate_secret_is_read_as_outpost_reads_it(value: Any, rotates_it: bool) -> None:
    assert rotates(value) is rotates_it
