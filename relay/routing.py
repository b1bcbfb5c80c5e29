"""Which destinations an event goes to. Pure functions, no I/O.

Topic patterns (destination subscriptions, publisher grants):
- ``*`` matches every topic;
- an exact topic matches itself;
- a trailing ``/*`` matches everything under that prefix (``realestate/*``), and more
  generally ``*`` anywhere matches any run of characters, as in Outpost (``order.*``);
- a pattern without ``#action`` matches every action of its topic
  (``realestate/contact`` matches ``realestate/contact#add``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol


def topic_matches(pattern: str, topic: str) -> bool:
    if pattern == "*" or pattern == topic:
        return True
    if pattern.endswith("/*"):
        return topic.startswith(pattern[:-1])
    if "#" not in pattern and "#" in topic and topic.split("#", 1)[0] == pattern:
        return True
    if "*" in pattern:
        # Outpost's wildcard: "*" anywhere matches any run of characters ("order.*").
        return _wildcard(pattern).fullmatch(topic) is not None
    return False


@functools.lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def any_topic_matches(patterns: Iterable[str], topic: str) -> bool:
    return any(topic_matches(pattern, topic) for pattern in patterns)


class Candidate(Protocol):
    """A destination as routing sees it (relay.db.publishing.DestinationRoute is one)."""

    @property
    def id(self) -> str: ...
    @property
    def topics(self) -> Sequence[str]: ...
    @property
    def enabled(self) -> bool: ...


def route(
    candidates: Iterable[Candidate], topic: str, destination_id: str | None = None
) -> list[str]:
    """Ids of the enabled destinations that receive an event on ``topic``.

    With ``destination_id`` only that destination is considered: one that does not
    exist, is disabled or is not subscribed gets nothing (whether that is an error
    instead is the caller's question: ``relay.publish`` answers it).
    An event with no topic, or topic ``*``, goes to every destination, as in Outpost.
    """
    everywhere = topic in ("", "*")
    chosen = []
    for candidate in candidates:
        if destination_id is not None and candidate.id != destination_id:
            continue
        if candidate.enabled and (everywhere or any_topic_matches(candidate.topics, topic)):
            chosen.append(candidate.id)
    return chosen


# --- destination filters -------------------------------------------------------------
#
# Outpost's filter language, with the semantics of its own matcher (Outpost's
# internal/simplejsonmatch, a port of hookdeck's simple-json-match): a relay destination
# routes exactly the events an Outpost one would (tests/unit/test_outpost_filter_cases.py
# runs the 230 cases taken from Outpost's tests and docs, answered by Outpost's code).
# The filter has the shape of the event ({"id", "topic", "time", "metadata", "data"})
# and every key in it must match:
#
# - a plain value matches an equal one (numbers by value, no other coercion: "1200" is
#   not 1200), or an array holding one;
# - a nested object matches recursively; against an array of objects, any element;
# - an array of values matches an array holding each of them (in any order, and more);
# - operators: $eq $neq (exact deep equality: an array equals only the same array),
#   $gt $gte $lt $lte (two numbers, or two strings by byte order: RFC 3339 times in UTC
#   compare as times), $in $nin (a value in a list, a substring of a string, an array
#   holding the value), $startsWith $endsWith (a string, or any of a list of them),
#   $exist; and $or $and $not;
# - a key the event lacks matches only {"$exist": false}.
#
# Where Outpost's documentation and its code differ, relay follows the code (see the
# README's compatibility section): an operator applied to the wrong type fails the
# match (so {"$nin": [...]} on an object is false, not true), and {"$not": ...} under a
# key whose value is a string, number or boolean never matches ({"status": {"$not":
# {"$in": [...]}}} is false whatever the status); negate at the object around it.
#
# _mismatch() is Outpost's recursivelyMatchValue: True when the value does NOT match.

_MISSING = object()

FILTER_OPERATORS = frozenset(
    "$eq $neq $gt $gte $lt $lte $in $nin $startsWith $endsWith $exist $or $and $not".split()
)
# The operators applied to a value; $or $and $not combine filters instead.
_VALUE_OPERATORS = FILTER_OPERATORS - {"$or", "$and", "$not"}


class _Unsupported(Exception):
    """An operator applied to a type it does not take: the match fails."""


def filter_matches(rule: object, document: object) -> bool:
    """Does ``document`` (an event as a JSON object) pass the destination filter ``rule``?

    An empty or absent filter passes everything."""
    if rule is None or rule == {}:
        return True
    return _matches(document, rule)


def _is_primitive(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _matches(value: object, rule: object) -> bool:
    """Outpost's matchJSONToSchema: a value against a filter (object level)."""
    if isinstance(rule, dict) and "$not" in rule:
        negated = _matches(value, rule["$not"])
        if len(rule) == 1:
            return not negated
        if negated:
            return False
    if not isinstance(rule, dict) or not isinstance(value, dict):
        return not _mismatch(value, rule)
    for key, sub in rule.items():
        if key == "$not":
            continue
        if key == "$or" and isinstance(sub, list):
            if not any(_matches(value, r) for r in sub):
                return False
            continue
        if key == "$and" and isinstance(sub, list):
            if not all(_matches(value, r) for r in sub):
                return False
            continue
        child = value.get(key, _MISSING)
        if child is _MISSING:
            if isinstance(sub, dict) and sub.get("$exist") is False:
                continue
            return False
        if _mismatch(child, sub):
            return False
    return True


def _mismatch(value: object, rule: object) -> bool:
    if _is_primitive(rule):
        if _is_primitive(value):
            return not _equal(value, rule)
        if isinstance(value, list):
            return all(_mismatch(v, rule) for v in value)
        return True
    if isinstance(value, list):
        if isinstance(rule, list):
            return not all(any(not _mismatch(v, r) for v in value) for r in rule)
        if isinstance(rule, dict) and any(k in _VALUE_OPERATORS for k in rule):
            return not _operators_pass(value, rule)
        return all(_mismatch(v, rule) for v in value)
    if isinstance(rule, dict):
        either = rule.get("$or")
        if isinstance(either, list):
            return not any(_matches(value, r) for r in either)
        if any(k in _VALUE_OPERATORS for k in rule):
            return not _operators_pass(value, rule)
        if _is_primitive(value):
            return True
        return not _matches(value, rule)
    return True


def _operators_pass(value: object, rule: dict[str, object]) -> bool:
    """Every value operator in ``rule`` holds for ``value`` (other keys are ignored)."""
    try:
        return all(
            _operator(op, value, operand) for op, operand in rule.items() if op in _VALUE_OPERATORS
        )
    except _Unsupported:
        return False


def _operator(op: str, value: object, operand: object) -> bool:
    if op == "$eq":
        return _deep_equal(value, operand)
    if op == "$neq":
        return not _deep_equal(value, operand)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return _compare(op, value, operand)
    if op == "$in":
        return _contains(value, operand)
    if op == "$nin":
        return not _contains(value, operand)
    if op in ("$startsWith", "$endsWith"):
        return _affix(op, value, operand)
    # $exist: the value is present (a missing key is judged in _matches).
    if not isinstance(operand, bool):
        raise _Unsupported
    return operand


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _equal(a: object, b: object) -> bool:
    """Two primitives: numbers by value (1 equals 1.0, true is not 1); strings, booleans
    and null as themselves."""
    na, nb = _number(a), _number(b)
    if na is not None or nb is not None:
        return na is not None and na == nb
    return type(a) is type(b) and a == b


def _deep_equal(a: object, b: object) -> bool:
    """$eq: the same JSON value (objects key for key, arrays in order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b, strict=True))
    if _is_primitive(a) and _is_primitive(b):
        return _equal(a, b)
    return False


def _compare(op: str, value: object, operand: object) -> bool:
    left: float | str
    right: float | str
    if isinstance(value, str) and isinstance(operand, str):
        # Byte order of UTF-8, as Go compares strings.
        left, right = value.encode(), operand.encode()  # type: ignore[assignment]
    else:
        na, nb = _number(value), _number(operand)
        if na is None or nb is None:
            raise _Unsupported
        left, right = na, nb
    if op == "$gt":
        return left > right  # type: ignore[operator]
    if op == "$gte":
        return left >= right  # type: ignore[operator]
    if op == "$lt":
        return left < right  # type: ignore[operator]
    return left <= right  # type: ignore[operator]


def _contains(value: object, operand: object) -> bool:
    if isinstance(operand, list):
        if not _is_primitive(value):
            raise _Unsupported
        return any(_equal(value, item) for item in operand)
    if isinstance(value, str):
        if not isinstance(operand, str):
            raise _Unsupported
        return operand in value
    if isinstance(value, list):
        return any(_is_primitive(item) and _equal(item, operand) for item in value)
    raise _Unsupported


def _affix(op: str, value: object, operand: object) -> bool:
    if not isinstance(value, str):
        raise _Unsupported
    test = value.startswith if op == "$startsWith" else value.endswith
    if isinstance(operand, str):
        return test(operand)
    if isinstance(operand, list):
        for item in operand:
            if not isinstance(item, str):
                raise _Unsupported
            if test(item):
                return True
        return False
    raise _Unsupported


# Filters are matched recursively for every publish: bound their shape so that no
# filter a client stores can exhaust the stack or make routing expensive.
MAX_FILTER_DEPTH = 16
MAX_FILTER_NODES = 500


def _shape(rule: object, depth: int = 1) -> tuple[int, int]:
    """(deepest nesting, number of nodes) of a filter, stopping early past the limits."""
    if depth > MAX_FILTER_DEPTH or not isinstance(rule, dict | list):
        return depth, 1
    deepest, nodes = depth, 1
    for child in rule.values() if isinstance(rule, dict) else rule:
        d, n = _shape(child, depth + 1)
        deepest, nodes = max(deepest, d), nodes + n
        if deepest > MAX_FILTER_DEPTH or nodes > MAX_FILTER_NODES:
            break
    return deepest, nodes


def filter_problems(rule: object, where: str = "filter") -> list[str]:
    """What is wrong with a filter (unknown operators, malformed operands); [] if usable."""
    if where == "filter":
        depth, nodes = _shape(rule)
        if depth > MAX_FILTER_DEPTH:
            return [f"filter is nested more than {MAX_FILTER_DEPTH} levels deep"]
        if nodes > MAX_FILTER_NODES:
            return [f"filter has more than {MAX_FILTER_NODES} parts"]
    problems: list[str] = []
    if isinstance(rule, dict):
        for key, sub in rule.items():
            path = f"{where}.{key}"
            if key.startswith("$"):
                if key not in FILTER_OPERATORS:
                    problems.append(f"{path} is not a filter operator")
                elif key in ("$or", "$and") and not isinstance(sub, list):
                    problems.append(f"{path} must be a list of filters")
                elif key == "$exist" and not isinstance(sub, bool):
                    problems.append(f"{path} must be true or false")
            problems.extend(filter_problems(sub, path))
    elif isinstance(rule, list):
        for index, item in enumerate(rule):
            problems.extend(filter_problems(item, f"{where}[{index}]"))
    return problems


def filter_subject(
    event_id: str | None, topic: str, metadata: Mapping[str, str], data: object, time: datetime
) -> dict[str, object]:
    """The event as destination filters see it, as Outpost builds it: the time in RFC
    3339 to the second, in UTC ("2026-05-01T12:00:00Z"), so that $gte and $lt on it compare
    as times."""
    return {
        "id": event_id,
        "topic": topic,
        "time": time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metadata": dict(metadata),
        "data": data,
    }
