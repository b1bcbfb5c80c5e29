"""The exact bytes of one member of a JSON object, as the client sent them.

Used to store a published event's ``data`` verbatim (spacing, number spelling, escapes
and key order), instead of a re-serialization of the parsed value. Runs on a body that
has already parsed as JSON, so it only has to find boundaries, not validate.

The walk over the top-level members is Python, but each key and each value is skipped
by the standard library's JSON scanner, which is C: this runs on every publish.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_SPACE = frozenset(" \t\r\n")
# Both are C in CPython; typeshed does not declare them. scanstring reads the string
# whose opening quote is just before an index; scan_once one JSON value starting at an
# index. Each returns (value, index after it).
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_scan_value: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def member_span(raw: bytes, key: str) -> bytes | None:
    """The raw value of ``key`` in the top-level object ``raw`` (the last one, as parsers
    keep), or None when ``raw`` is not an object or lacks the key."""
    try:
        text = raw.decode()
        span, _ = _object_member(text, _skip_ws(text, 0), key)
    except _UNREADABLE:
        return None
    return None if span is None else text[span[0] : span[1]].encode()


def item_member_spans(raw: bytes, key: str) -> list[bytes | None] | None:
    """For a top-level array, the raw value of ``key`` in each item (None for an item that
    is not an object or lacks it); None when ``raw`` is not an array or cannot be read."""
    try:
        text = raw.decode()
        i = _skip_ws(text, 0)
        if text[i : i + 1] != "[":
            return None
        spans: list[bytes | None] = []
        i = _skip_ws(text, i + 1)
        if text[i : i + 1] == "]":
            return spans
        while True:
            if text[i : i + 1] == "{":
                span, i = _object_member(text, i, key)
            else:
                span, (_, i) = None, _scan_value(text, i)
            spans.append(None if span is None else text[span[0] : span[1]].encode())
            i = _skip_ws(text, i)
            if text[i : i + 1] != ",":
                return spans
            i = _skip_ws(text, i + 1)
    except _UNREADABLE:
        return None


# StopIteration: the scanner found no value where one should start. RecursionError: a
# member nested deeper than Python's recursion limit lets the C scanner go.
_UNREADABLE = (ValueError, IndexError, StopIteration, RecursionError)


def _object_member(text: str, start: int, key: str) -> tuple[tuple[int, int] | None, int]:
    """In the object starting at ``start``: the span of ``key``'s value (or None), and the
    index just past the object."""
    ws = _skip_ws
    if text[start : start + 1] != "{":
        raise ValueError("not an object")
    i = ws(text, start + 1)
    if text[i : i + 1] == "}":
        return None, i + 1
    found = None
    while True:
        if text[i : i + 1] != '"':
            raise ValueError("not a member name")
        name, i = scanstring(text, i + 1)
        i = ws(text, i)
        if text[i : i + 1] != ":":
            raise ValueError("no colon after a member name")
        value_start = ws(text, i + 1)
        _, end = _scan_value(text, value_start)
        if name == key:
            found = (value_start, end)
        i = ws(text, end)
        if text[i : i + 1] == "}":
            return found, i + 1
        if text[i : i + 1] != ",":
            raise ValueError("no comma between members")
        i = ws(text, i + 1)


def _skip_ws(text: str, i: int) -> int:
    # Most bodies are compact: usually not a single step.
    while text[i : i + 1] in _SPACE:
        i += 1
    return i
