"""A record's key from a destination's ``partition_key_template``, as Outpost computes it
(its ``destregistry/partitionkey``; kafka's record key, and Kinesis's partition key).

The template is a JMESPath expression over ``{"metadata": {...}, "data": {...}}``: the
message's metadata (``event-id``, ``topic``, ...) and the event's data. No template, a
result that is null or an empty string, or a template that fails: the event id. Other
results are written as Go's ``fmt`` writes the value decoded from JSON (every number a
float64, so ``%g``: ``42``, ``1.5``, ``1e+06``; lists ``[a 1]``; objects ``map[k:v]``), so
that the same event gets the same key from relay as from Outpost.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.parser

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)
def compiled(template: str) -> jmespath.parser.ParsedResult | None:
    """The template parsed once per distinct text (None: it does not parse)."""
    try:
        return jmespath.compile(template)
    except jmespath.exceptions.JMESPathError as exc:
        log.debug("partition key template %r does not parse: %s", template, exc)
        return None


def evaluate(
    template: str, metadata: Mapping[str, str], data: Mapping[str, Any], fallback: str
) -> str:
    """The key for one message: the template's result, or ``fallback`` (the event id)."""
    if not template:
        return fallback
    expression = compiled(template)
    if expression is None:
        return fallback
    try:
        result = expression.search({"metadata": dict(metadata), "data": data})
    except jmespath.exceptions.JMESPathError:
        # A function given the wrong type (Outpost: an evaluation error, the event id).
        return fallback
    if result is None or result == "":
        return fallback
    return go_value(result)


def go_value(value: Any) -> str:
    """``fmt.Sprintf("%v", value)`` of a value Go's encoding/json decoded."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return go_float(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, dict):
        # fmt prints a map's keys sorted.
        return "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def go_float(x: float) -> str:
    """Go's ``%g`` (and ``%v``) of a float64: the shortest digits that read back as ``x``,
    in exponent form when the exponent is below -4 or at least 6 (``1e+06``, ``1e-05``)."""
    if x == 0:
        return "-0" if str(x).startswith("-") else "0"
    sign, digits, exponent = Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exponent, int)  # finite: JSON has no NaN or infinity
    text = "".join(map(str, digits))
    point = len(text) + exponent  # where the decimal point falls in the digits
    power = point - 1
    minus = "-" if sign else ""
    if power < -4 or power >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return minus + text + "0" * (point - len(text))
    return f"{minus}{text[:point]}.{text[point:]}"
