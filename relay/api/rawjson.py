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
        span = _member_span(text, key)
    except (ValueError, IndexError, StopIteration):
        # StopIteration: the scanner found no value where one should start.
        return None
    return None if span is None else text[span[0] : span[1]].encode()


def _member_span(text: str, key: str) -> tuple[int, int] | None:
    ws = _skip_ws
    i = ws(text, 0)
    if text[i : i + 1] != "{":
        return None
    i = ws(text, i + 1)
    if text[i : i + 1] == "}":
        return None
    found = None
    while True:
        if text[i : i + 1] != '"':
            return None
        name, i = scanstring(text, i + 1)
        i = ws(text, i)
        if text[i : i + 1] != ":":
            return None
        start = ws(text, i + 1)
        _, end = _scan_value(text, start)
        if name == key:
            found = (start, end)
        i = ws(text, end)
        if text[i : i + 1] != ",":
            return found
        i = ws(text, i + 1)


def _skip_ws(text: str, i: int) -> int:
    # Most bodies are compact: usually not a single step.
    while text[i : i + 1] in _SPACE:
        i += 1
    return i
