"""JSON for property tests: values hypothesis draws, spelled in the ways JSON allows, and
an exact comparison of JSON values.

Drawn values stay small to print: a ``DataSpec`` describes a ``data`` object (its
members, a long string, a deep chain) and builds it, so a falsifying example reads as
``Nesting(depth=255, ...)`` rather than as 255 levels of brackets. ``same_json`` compares
two JSON texts as values: numbers by their exact decimal value, objects with their key
order, and never ``true`` as ``1``.
"""

from __future__ import annotations

import contextlib
import json
import reprlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

# orjson writes at most 254 levels of arrays and objects (``data`` itself is the first):
# relay's documented limit for ``data``.
DEPTH_LIMIT = 254

INTS = st.integers(min_value=-(10**30), max_value=10**30) | st.sampled_from(
    [0, -1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -0.0, 0.1, 1e16]
)
# Keys a body scanner could trip on, besides arbitrary ones.
ODD_KEYS = ["data", '"data', 'x"data', "data\\", "\\", "", "🙂"]


class Values:
    """Strategies for JSON values whose strings are drawn from ``chars``."""

    def __init__(self, chars: st.SearchStrategy[str], odd_keys: list[str]) -> None:
        self.chars = chars
        self.text = st.text(chars, max_size=12)
        self.keys = self.text | st.sampled_from(odd_keys)
        self.scalars = st.none() | st.booleans() | INTS | FLOATS | self.text
        self.values = st.recursive(
            self.scalars,
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(self.keys, inner, max_size=4)
            ),
            max_leaves=16,
        )
        self.objects = st.dictionaries(self.keys, self.values, max_size=6)


# Every Unicode scalar value: NUL, controls, astral characters; no lone surrogates.
ANY = Values(st.characters(exclude_categories=("Cs",)), [*ODD_KEYS, "\x00"])
# The same without U+0000, which JSON may hold and PostgreSQL text may not.
NO_NUL = Values(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), ODD_KEYS)
TEXT, VALUES, OBJECTS = ANY.text, ANY.values, ANY.objects
# Not objects: what a wrong-typed ``data`` is.
NOT_OBJECTS = ANY.scalars | st.lists(VALUES, max_size=3)


@dataclass(frozen=True)
class LongText:
    """A member whose value is ``piece`` repeated up to ``length`` characters."""

    key: str
    piece: str
    length: int

    def value(self) -> str:
        return (self.piece * (self.length // len(self.piece) + 1))[: self.length]


@dataclass(frozen=True)
class Nesting:
    """A member holding a chain of containers: ``data`` is ``depth`` levels deep.

    Level i below ``data`` is an array when ``arrays[i % len(arrays)]``, else an object
    with the single key ``key``; the innermost holds ``leaf``."""

    key: str
    depth: int
    arrays: tuple[bool, ...]
    leaf: Any

    def value(self) -> Any:
        chain = self.leaf
        for level in range(self.depth - 1):
            chain = [chain] if self.arrays[level % len(self.arrays)] else {self.key: chain}
        return chain


@dataclass(frozen=True)
class DataSpec:
    """A ``data`` object: ``members``, then a long string, then a deep chain."""

    members: dict[str, Any]
    long: LongText | None = None
    nesting: Nesting | None = None

    def value(self) -> dict[str, Any]:
        data = dict(self.members)
        if self.long is not None:
            data[self.long.key] = self.long.value()
        if self.nesting is not None:
            data[self.nesting.key] = self.nesting.value()
        return data


def depth(value: Any) -> int:
    """Levels of arrays and objects in ``value`` (``{}`` is 1, a scalar 0)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest


def holds_nul(value: Any) -> bool:
    """Does any string in ``value``, key or value, hold U+0000?"""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def nestings(values: Values, deepest: int) -> st.SearchStrategy[Nesting]:
    """Chains up to ``deepest`` levels, near the limit and the deepest most of the time."""
    edges = [d for d in (2, DEPTH_LIMIT - 1, DEPTH_LIMIT, DEPTH_LIMIT + 1, deepest) if d <= deepest]
    return st.builds(
        Nesting,
        key=values.keys,
        depth=st.sampled_from(edges) | st.integers(2, deepest),
        arrays=st.lists(st.booleans(), min_size=1, max_size=4).map(tuple),
        leaf=values.scalars,
    )


def data_specs(values: Values = ANY, deepest: int = 1000) -> st.SearchStrategy[DataSpec]:
    long_texts = st.builds(
        LongText,
        key=values.keys,
        piece=st.text(values.chars, min_size=1, max_size=3),
        length=st.integers(1_000, 60_000),
    )
    return st.builds(
        DataSpec,
        members=values.objects,
        long=st.none() | st.none() | long_texts,
        nesting=st.none() | nestings(values, deepest),
    )


# Any data object, up to 1,000 levels deep (orjson reads 1,024: the body's own levels).
DATA = data_specs()
# Data within relay's limits, without U+0000.
DELIVERABLE_DATA = data_specs(NO_NUL, DEPTH_LIMIT)


@dataclass(frozen=True)
class Spelling:
    """How a JSON text is written: spacing, which characters are escaped, hex case."""

    space: str = ""
    escape: str = "minimal"  # "minimal", "non_ascii" (\\uXXXX, pairs for astral) or "all"
    upper_hex: bool = False
    escape_slash: bool = False
    upper_exponent: bool = False


SPELLINGS = st.builds(
    Spelling,
    space=st.sampled_from(["", " ", "\n", "\t ", "\r\n  "]),
    escape=st.sampled_from(["minimal", "non_ascii", "all"]),
    upper_hex=st.booleans(),
    escape_slash=st.booleans(),
    upper_exponent=st.booleans(),
)

_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _u(code: int, spelling: Spelling) -> str:
    digits = f"{code:04x}"
    return "\\u" + (digits.upper() if spelling.upper_hex else digits)


def encode_string(text: str, spelling: Spelling) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES and spelling.escape != "all":
            out.append(_SHORT_ESCAPES[char])
        elif char == "/" and spelling.escape_slash:
            out.append("\\/")
        elif (
            code < 0x20
            or char in '"\\'
            or spelling.escape == "all"
            or (code > 0x7E and spelling.escape == "non_ascii")
        ):
            if code > 0xFFFF:
                code -= 0x10000
                out.append(
                    _u(0xD800 + (code >> 10), spelling) + _u(0xDC00 + (code & 0x3FF), spelling)
                )
            else:
                out.append(_u(code, spelling))
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def encode(value: Any, spelling: Spelling) -> str:
    """``value`` as JSON text, written as ``spelling`` says (call inside ``deep_stack``)."""
    s = spelling.space
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        written = repr(value)
        return written.upper() if spelling.upper_exponent else written
    if isinstance(value, str):
        return encode_string(value, spelling)
    if isinstance(value, list):
        return "[" + s + ("," + s).join(encode(v, spelling) for v in value) + s + "]"
    if isinstance(value, dict):
        members = (
            encode_string(k, spelling) + s + ":" + s + encode(v, spelling) for k, v in value.items()
        )
        return "{" + s + ("," + s).join(members) + s + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


@contextlib.contextmanager
def deep_stack() -> Iterator[None]:
    """Room for recursing through 1,000 levels, for synchronous code only: relay's
    handlers run in this process too, and must meet the interpreter's usual limit."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


class _Object(tuple):  # type: ignore[type-arg]
    """An object's members in order; a tuple, so never equal to an array (a list)."""


def _number(text: str) -> tuple[str, Decimal]:
    return ("number", Decimal(text))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def exact(text: str | bytes) -> Any:
    """A JSON text as a value that compares exactly: numbers by decimal value, objects as
    ordered members, booleans apart from numbers (call inside ``deep_stack``)."""
    return json.loads(
        text,
        parse_int=_number,
        parse_float=_number,
        parse_constant=_no_constant,
        object_pairs_hook=_Object,
    )


def member(value: Any, name: str) -> Any:
    """The member ``name`` of an object from ``exact`` (the last, as parsers keep)."""
    found = [v for k, v in value if k == name]
    if not found:
        raise KeyError(name)
    return found[-1]


_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 4, 80, 80


def short(value: Any) -> str:
    """A bounded repr, for values too deep or long to print whole."""
    return _short.repr(value)
