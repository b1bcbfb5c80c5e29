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

    With ``destination_id`` only that destination is considered; whether it exists and
    is enabled is the caller's question to answer (it is an error there, not a no-op).
    """
    chosen = []
    for candidate in candidates:
        if destination_id is not None and candidate.id != destination_id:
            continue
        if candidate.enabled and any_topic_matches(candidate.topics, topic):
            chosen.append(candidate.id)
    return chosen


# --- destination filters -------------------------------------------------------------
#
# Outpost's filter language (hookdeck simple-json-match): the filter has the shape of the
# event ({"data": ..., "metadata": ..., "topic": ...}) and every key in it must match.
# A plain value matches an equal value, or an array containing it; a nested object
# matches recursively; an array of values matches an array holding each of them.
# Operators: $eq $neq $gt $gte $lt $lte $in $nin $startsWith $endsWith $exist $or $and
# $not. A key the event lacks matches only {"$exist": false}.

_MISSING = object()

FILTER_OPERATORS = frozenset(
    "$eq $neq $gt $gte $lt $lte $in $nin $startsWith $endsWith $exist $or $and $not".split()
)


def filter_matches(rule: object, document: object) -> bool:
    """Does ``document`` (an event as a JSON object) pass the destination filter ``rule``?

    An empty or absent filter passes everything."""
    if rule is None or rule == {}:
        return True
    return _matches(rule, document)


def _matches(rule: object, value: object) -> bool:
    if isinstance(rule, dict):
        return all(_key_matches(key, sub, value) for key, sub in rule.items())
    if isinstance(rule, list):
        if not isinstance(value, list):
            return False
        return all(any(_matches(item, v) for v in value) for item in rule)
    if isinstance(value, list) and not isinstance(rule, list):
        return any(_equal(rule, v) for v in value)
    return _equal(rule, value)


def _key_matches(key: str, sub: object, value: object) -> bool:
    if key.startswith("$"):
        return _operator(key, sub, value)
    child = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
    if child is _MISSING:
        return isinstance(sub, dict) and sub.get("$exist") is False
    return _matches(sub, child)


def _operator(op: str, operand: object, value: object) -> bool:
    present = value is not _MISSING
    if op == "$exist":
        return present == bool(operand)
    if op == "$or":
        return isinstance(operand, list) and any(_matches(r, value) for r in operand)
    if op == "$and":
        return isinstance(operand, list) and all(_matches(r, value) for r in operand)
    if op == "$not":
        return not _matches(operand, value)
    if not present:
        return False
    if op == "$eq":
        return _matches(operand, value)
    if op == "$neq":
        return not _matches(operand, value)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return _compare(op, operand, value)
    if op in ("$in", "$nin"):
        found = _contains(operand, value)
        return found if op == "$in" else not found
    if op == "$startsWith":
        return isinstance(value, str) and isinstance(operand, str) and value.startswith(operand)
    if op == "$endsWith":
        return isinstance(value, str) and isinstance(operand, str) and value.endswith(operand)
    return False


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _equal(a: object, b: object) -> bool:
    # JSON has one number type: 1 equals 1.0, but true is not 1.
    na, nb = _number(a), _number(b)
    if na is not None or nb is not None:
        return na is not None and na == nb
    return a == b


def _compare(op: str, operand: object, value: object) -> bool:
    left: float | str
    right: float | str
    na, nb = _number(value), _number(operand)
    if na is not None and nb is not None:
        left, right = na, nb
    elif isinstance(value, str) and isinstance(operand, str):
        left, right = value, operand
    else:
        return False
    if op == "$gt":
        return left > right  # type: ignore[operator]
    if op == "$gte":
        return left >= right  # type: ignore[operator]
    if op == "$lt":
        return left < right  # type: ignore[operator]
    return left <= right  # type: ignore[operator]


def _contains(operand: object, value: object) -> bool:
    if isinstance(operand, list):
        if isinstance(value, list):
            return any(_equal(o, v) for o in operand for v in value)
        return any(_equal(o, value) for o in operand)
    if isinstance(operand, str) and isinstance(value, str):
        return operand in value
    return False


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
    event_id: str | None, topic: str, metadata: Mapping[str, str], data: object
) -> dict[str, object]:
    """The event as destination filters see it."""
    return {"id": event_id, "topic": topic, "metadata": dict(metadata), "data": data}
